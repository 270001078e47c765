"""``MultiMaskTrainer``: detectron2's DefaultTrainer wired to multimask's mapper, evaluator and checks."""
import contextlib
import functools
import logging
import os
import weakref
from typing import Dict, Iterator
from unittest import mock

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, create_ddp_model, hooks
from detectron2.engine import defaults as d2_defaults

from ..data import MultiMaskDatasetMapper
from ..data.build import (
    RemappedClassesEvaluator,
    cfg_train_classes,
    check_train_mask_names,
    check_weights,
    dataset_weights_sampler,
    multi_dataset_dicts,
    remap_given_classes,
)
from ..evaluation import MultiMaskCOCOEvaluator, attach_given_boxes
from ..evaluation.given_boxes import GIVEN_INSTANCES
from .checkpoint import AtomicDetectionCheckpointer
from .hooks import build_validation_loss_hook
from .launch import ddp_device_ids
from .resume import (
    ResumeStateHook,
    build_resumable_train_loader,
    preserve_rng_states,
    resumable_train_loader,
)

__all__ = ["MultiMaskTrainer", "amp_enabled", "ddp_kwargs", "check_datasets", "check_num_classes"]

logger = logging.getLogger(__name__)


def ddp_kwargs(cfg) -> Dict:
    """
    Extra DistributedDataParallel arguments: detectron2 passes ``device_ids=[local_rank]``, which DDP
    rejects for a module on the CPU (gloo data parallel, ``--num-gpus N MODEL.DEVICE cpu``) and
    which names no device where processes share a GPU or each sees only its own: the device that
    ``multimask.engine.launch`` selected instead (``ddp_device_ids``).
    """
    return {"device_ids": ddp_device_ids(cfg.MODEL.DEVICE)}


def check_datasets(cfg) -> None:
    """
    Fail before training if no training dataset has one of the config's MASK_NAMES (with several,
    a dataset that lacks one has it not annotated) or a test dataset lacks one, if the datasets'
    classes differ without MULTIMASK.CLASS_AGNOSTIC_TRAIN / CLASS_UNION (see
    ``multimask.data.build.resolve_train_classes``), or if MULTIMASK.DATASET_WEIGHTS is malformed.
    """
    check_train_mask_names(
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES
    )
    cfg_train_classes(cfg)
    check_weights(cfg.MULTIMASK.DATASET_WEIGHTS, cfg.DATASETS.TRAIN)
    if cfg.MULTIMASK.DATASET_WEIGHTS and cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            "MULTIMASK.DATASET_WEIGHTS samples with RepeatFactorTrainingSampler: it cannot be "
            f"combined with DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r}."
        )


def check_num_classes(cfg) -> None:
    """
    Fail before the first step if ``MODEL.ROI_HEADS.NUM_CLASSES`` differs from the training classes
    (known once the train loader has loaded the datasets): the datasets' list, 1 with
    MULTIMASK.CLASS_AGNOSTIC_TRAIN, the union with CLASS_UNION. A mismatch trains silently wrong.
    """
    train = cfg_train_classes(cfg)
    names = list(cfg.DATASETS.TRAIN)
    known = [n for n in names if MetadataCatalog.get(n).get("thing_classes") is not None]
    if train.mode == "same" and not known:
        return
    what = {
        "same": f"Dataset '{known[0] if known else ''}' has",
        "agnostic": f"MULTIMASK.CLASS_AGNOSTIC_TRAIN trains {names} with",
        "union": f"MULTIMASK.CLASS_UNION of {names} has",
    }[train.mode]
    classes = train.classes
    if len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"{what} {len(classes)} classes {list(classes)[:10]}... but "
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}; set it to "
            f"{len(classes)}."
        )


def _multi_dataset(cfg) -> bool:
    """Whether the train loader needs ``multi_dataset_dicts`` rather than detectron2's concat."""
    mm = cfg.MULTIMASK
    return len(cfg.DATASETS.TRAIN) > 1 or bool(
        mm.CLASS_AGNOSTIC_TRAIN or mm.CLASS_UNION or mm.DATASET_WEIGHTS
    )


def amp_enabled(enabled: bool, device: str, key: str = "SOLVER.AMP.ENABLED") -> bool:
    """
    Whether to train with automatic mixed precision: `enabled` on a CUDA `device`, as detectron2's
    AMPTrainer runs it (float16 autocast and a GradScaler). detectron2's AMP is CUDA-only (its
    AMPTrainer fails at the first step without CUDA), so on another device the run trains in
    float32 with a warning naming `key`, as train_net.py falls back to the CPU without CUDA.
    """
    if enabled and not device.startswith("cuda"):
        logger.warning(
            f"{key} is ignored on the {device!r} device: detectron2's mixed precision training "
            "(AMPTrainer) is CUDA-only. Training in float32."
        )
    return bool(enabled) and device.startswith("cuda")


@contextlib.contextmanager
def _cpu_ddp(cfg) -> Iterator[None]:
    """
    DefaultTrainer.__init__ wraps the model with ``create_ddp_model(model, broadcast_buffers=False)``,
    which passes ``device_ids=[local_rank]``: DDP rejects that for a CPU module (gloo, ``--num-gpus N
    MODEL.DEVICE cpu``), it names no device where processes share a GPU, and DefaultTrainer has no
    method to override for it: ``ddp_kwargs`` replaces it.
    """
    if not ddp_kwargs(cfg):
        yield
        return
    with mock.patch.object(
        d2_defaults, "create_ddp_model", functools.partial(create_ddp_model, **ddp_kwargs(cfg))
    ):
        yield


class MultiMaskTrainer(DefaultTrainer):
    """
    DefaultTrainer (hooks, writers, EvalHook, PeriodicCheckpointer, ``resume_or_load``) whose loaders use
    ``MultiMaskDatasetMapper``, whose evaluator is ``MultiMaskCOCOEvaluator`` and whose checkpoints are
    written atomically, built through DefaultTrainer's own methods. The datasets' mask names and
    class count are checked before the first step; ``SOLVER.AMP.ENABLED`` is CUDA-only (see
    ``amp_enabled``); DDP runs on the CPU too. Its train loader and a hook make ``--resume`` exact
    (see multimask.engine.resume).
    """

    def __init__(self, cfg):
        check_datasets(cfg)
        if cfg.SOLVER.AMP.ENABLED and not amp_enabled(True, cfg.MODEL.DEVICE):
            frozen, cfg = cfg.is_frozen(), cfg.clone()
            cfg.defrost()
            cfg.SOLVER.AMP.ENABLED = False  # self.cfg says what runs
            if frozen:
                cfg.freeze()
        with _cpu_ddp(cfg):
            super().__init__(cfg)

    def build_hooks(self):
        """
        DefaultTrainer's hooks plus the validation loss (``MULTIMASK.VAL_LOSS_MAX_IMAGES``) and the
        data position and RNG states saved with each checkpoint, for an exact ``--resume``.
        """
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before asking for the hooks;
        # the PeriodicCheckpointer built here saves with this one
        self.checkpointer = AtomicDetectionCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        # before the checkpointer (main process) or EvalHook (others): captured when a save is due
        savers = (hooks.PeriodicCheckpointer, hooks.EvalHook)
        at = [i for i, h in enumerate(ret) if isinstance(h, savers)]
        resume = ResumeStateHook(self.data_loader, self.cfg.SOLVER.CHECKPOINT_PERIOD)
        ret.insert(at[0] if at else len(ret), resume)
        val_loss = build_validation_loss_hook(self.cfg, self.model)
        if val_loss is not None:
            # before the PeriodicWriter (main process only), so each evaluation is written with its step
            writer = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)]
            ret.insert(writer[0] if writer else len(ret), val_loss)
        return ret

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            # the RPN's "Predicted boxes or scores contain Inf/NaN" does not say when
            if "iteration" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration {self.iter})") from e

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, leaving the RNG states as they were (see preserve_rng_states)."""
        with preserve_rng_states():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        """
        detectron2's train loader with MultiMaskDatasetMapper, able to resume mid-stream; fails if
        the loaded datasets' class count differs from the config's. Several datasets (or the
        MULTIMASK class / weight keys) go through ``multi_dataset_dicts``: classes remapped,
        missing mask names not annotated, sampled by MULTIMASK.DATASET_WEIGHTS.
        """
        mapper = MultiMaskDatasetMapper(cfg, is_train=True)
        if not _multi_dataset(cfg):
            loader = build_resumable_train_loader(cfg, mapper)
            check_num_classes(cfg)
            return loader
        mm = cfg.MULTIMASK
        dicts = multi_dataset_dicts(
            cfg.DATASETS.TRAIN,
            mask_names=cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES,
            test_names=cfg.DATASETS.TEST,
            class_agnostic=mm.CLASS_AGNOSTIC_TRAIN,
            class_union=mm.CLASS_UNION,
            weights=mm.DATASET_WEIGHTS,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        )
        check_num_classes(cfg)
        sampler = None
        if dicts.weights:
            seed = cfg.SEED if cfg.SEED >= 0 else None
            sampler = dataset_weights_sampler(dicts.sizes, dicts.weights, seed=seed)
        kwargs = build_detection_train_loader.from_config(
            cfg, mapper=mapper, dataset=dicts, sampler=sampler
        )
        return resumable_train_loader(**kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """
        detectron2's test loader with MultiMaskDatasetMapper; with ``MULTIMASK.EVAL_BOXES`` each
        input also carries the boxes to predict masks for (``attach_given_boxes``).
        """
        mapper = MultiMaskDatasetMapper(cfg, is_train=False)
        if not cfg.MULTIMASK.EVAL_BOXES:
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        # as build_detection_test_loader(cfg, ...) reads them
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        dicts = attach_given_boxes(dicts, cfg.MULTIMASK.EVAL_BOXES, dataset_name)
        # the given classes in the model's (CLASS_AGNOSTIC_TRAIN / CLASS_UNION)
        id_map = cfg_train_classes(cfg).id_maps.get(dataset_name)
        dicts = remap_given_classes(dicts, id_map, GIVEN_INSTANCES)
        return build_detection_test_loader(
            dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """
        MultiMaskCOCOEvaluator; class-agnostic with MULTIMASK.CLASS_AGNOSTIC_TRAIN, and with
        CLASS_UNION the predicted classes mapped from the union to the test set's list.
        """
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        train = cfg_train_classes(cfg)
        agnostic = True if train.mode == "agnostic" else None  # None: CLASS_AGNOSTIC_EVAL
        evaluator = MultiMaskCOCOEvaluator(
            dataset_name, cfg=cfg, output_dir=output_folder, class_agnostic=agnostic
        )
        test_classes = list(MetadataCatalog.get(dataset_name).thing_classes)
        if train.mode == "union" and test_classes != train.classes:
            return RemappedClassesEvaluator(evaluator, train.classes, dataset_name)
        return evaluator
