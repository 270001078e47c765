"""``MultiMaskTrainer``: detectron2's DefaultTrainer wired to multimask's mapper, evaluator and checks."""
import logging
import os
import weakref
from typing import Dict

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm

from ..data import MultiMaskDatasetMapper, check_mask_names
from ..evaluation import MultiMaskCOCOEvaluator
from .checkpoint import AtomicDetectionCheckpointer

__all__ = ["MultiMaskTrainer", "ddp_kwargs", "check_datasets"]

logger = logging.getLogger(__name__)


def ddp_kwargs(cfg) -> Dict:
    """
    Extra DistributedDataParallel arguments: detectron2 passes ``device_ids=[local_rank]``, which DDP
    rejects for a module on the CPU (gloo data parallel, ``--num-gpus N MODEL.DEVICE cpu``).
    """
    return {"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}


def check_datasets(cfg) -> None:
    """Fail before training if a train/test dataset lacks one of the config's MASK_NAMES."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_mask_names(names, cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)


class MultiMaskTrainer(DefaultTrainer):
    """
    DefaultTrainer (hooks, writers, EvalHook, PeriodicCheckpointer, ``resume_or_load``) whose loaders use
    ``MultiMaskDatasetMapper``, whose evaluator is ``MultiMaskCOCOEvaluator`` and whose checkpoints are
    written atomically. ``__init__`` builds the same parts as DefaultTrainer's, with two changes:
    the datasets' mask names are checked first, and DDP gets ``device_ids=None`` on the CPU.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_datasets(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs(cfg))
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=MultiMaskDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=MultiMaskDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return MultiMaskCOCOEvaluator(dataset_name, cfg=cfg, output_dir=output_folder)
