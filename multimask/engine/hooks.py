"""
Validation loss: the training losses (per mask, relations, box and RPN losses) computed on a bounded
part of the validation split, so that over-fitting shows in metrics.json / tensorboard without a full
COCO evaluation.
"""
import logging
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..config import primary_mask_name
from ..data import MultiMaskDatasetMapper
from ..data.build import cfg_train_classes, remap_dataset_dicts
from .resume import preserve_rng_states

__all__ = [
    "ValidationLossHook",
    "build_validation_loss_hook",
    "build_validation_loss_loader",
    "compute_validation_loss",
]

logger = logging.getLogger(__name__)


def build_validation_loss_loader(
    dataset_dicts: List[Dict[str, Any]],
    mapper: MultiMaskDatasetMapper,
    max_images: int,
    batch_size: int = 1,
    num_workers: int = 0,
) -> Iterable[List[Dict[str, Any]]]:
    """
    A loader over the first `max_images` images, split over the processes like detectron2's test loader.

    Args:
        dataset_dicts: the validation dataset dicts (with annotations).
        mapper: a MultiMaskDatasetMapper with ``is_train=True`` (it emits `instances`) and the test-time
            augmentations, so that every evaluation sees the same inputs.
        max_images: how many images (the first ones) to use.
        batch_size: images per batch and process.
        num_workers: data loading workers.
    """
    if not mapper.is_train:
        raise ValueError(
            "the validation loss needs a mapper with is_train=True (ground-truth targets)"
        )
    return build_detection_test_loader(
        list(dataset_dicts)[:max_images],
        mapper=mapper,
        batch_size=batch_size,
        num_workers=num_workers,
    )


def compute_validation_loss(
    model: nn.Module, data_loader: Iterable[List[Dict[str, Any]]], seed: int = 0
) -> Dict[str, float]:
    """
    Mean training losses of `model` on `data_loader`, averaged over all images of all processes.

    The model runs in training mode (losses need it) without gradients, with its BatchNorm layers in
    eval mode so the running statistics are not updated; every module's mode is restored afterwards.
    Proposal sampling draws from a forked RNG seeded with `seed`, so the training RNG stream is left
    untouched and repeated evaluations sample alike. The model's own metrics (accuracies, ...) go to a
    throw-away EventStorage rather than the training one.

    Args:
        model: the model, possibly wrapped in DistributedDataParallel.
        data_loader: batches of mapped dicts with `instances` (this process' share).
        seed: seed of the forked RNG.

    Returns:
        dict "val/<loss name>" -> mean value, plus "val/total_loss"; the same on every process.
        Empty if no process saw an image.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module  # no gradient sync is needed, and DDP must not see this forward
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    sums: Dict[str, float] = defaultdict(float)
    num_images = 0
    try:
        # all RNG states (numpy too: the test-time resize draws from it) are put back afterwards
        with torch.no_grad(), preserve_rng_states(), EventStorage(0):
            torch.manual_seed(seed)
            for batch in data_loader:
                for name, value in model(batch).items():
                    sums[name] += float(value) * len(batch)
                num_images += len(batch)
    finally:
        for m, training in modes.items():
            m.training = training

    all_sums: Dict[str, float] = defaultdict(float)
    total_images = 0
    for part_sums, part_images in comm.all_gather((dict(sums), num_images)):
        for name, value in part_sums.items():
            all_sums[name] += value
        total_images += part_images
    if total_images == 0:
        return {}
    means = {f"val/{k}": v / total_images for k, v in sorted(all_sums.items())}
    means["val/total_loss"] = sum(means.values())
    return means


class ValidationLossHook(HookBase):
    """
    Every `eval_period` iterations (and after the last), compute ``compute_validation_loss`` and put
    its values into the trainer's EventStorage (main process), where the writers find them. Register it
    before the PeriodicWriter, so the values of an iteration are written with it.
    """

    def __init__(self, eval_period: int, model: nn.Module, data_loader: Iterable, seed: int = 0):
        """
        Args:
            eval_period: period in iterations; <= 0 disables the hook.
            model: the trained model (possibly DDP-wrapped).
            data_loader: from ``build_validation_loss_loader``; iterated fully at each evaluation.
            seed: seed of the forked RNG used for proposal sampling.
        """
        self._period = eval_period
        self._model = model
        self._data_loader = data_loader
        self._seed = seed

    @property
    def data_loader(self) -> Iterable:
        """The validation batches (this process' share), iterated fully at each evaluation."""
        return self._data_loader

    def run_if_due(self, iteration: int, max_iter: int, storage: EventStorage) -> Optional[Dict]:
        """
        What ``after_step`` does, for loops without hooks (``plain_train_loop.do_train``).

        Args:
            iteration: the iteration that just finished.
            max_iter: the number of iterations of the run.
            storage: the training EventStorage.

        Returns:
            The values written, or None when no evaluation was due.
        """
        next_iter = iteration + 1
        if self._period <= 0 or (next_iter % self._period != 0 and next_iter != max_iter):
            return None
        results = compute_validation_loss(self._model, self._data_loader, self._seed)
        if comm.is_main_process() and results:
            storage.put_scalars(**results, smoothing_hint=False)
            logger.info(
                f"Validation loss at iteration {iteration}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in results.items())
            )
        return results

    def after_step(self):
        self.run_if_due(self.trainer.iter, self.trainer.max_iter, self.trainer.storage)


def build_validation_loss_hook(cfg, model: nn.Module) -> Optional[ValidationLossHook]:
    """
    The hook of a YAML config: on ``MULTIMASK.VAL_LOSS_MAX_IMAGES`` images of ``DATASETS.TEST[0]``, every
    ``TEST.EVAL_PERIOD`` iterations, with the test-time resize. None when either is 0 or there is no
    test dataset.
    """
    max_images = cfg.MULTIMASK.VAL_LOSS_MAX_IMAGES
    if cfg.TEST.EVAL_PERIOD <= 0 or max_images <= 0 or len(cfg.DATASETS.TEST) == 0:
        return None
    mapper = MultiMaskDatasetMapper(
        is_train=True,
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
        mask_names=list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES),
        primary=primary_mask_name(cfg),
    )
    dicts = get_detection_dataset_dicts([cfg.DATASETS.TEST[0]], filter_empty=False)
    # in the model's classes (MULTIMASK.CLASS_AGNOSTIC_TRAIN / CLASS_UNION remap the test ids)
    dicts = remap_dataset_dicts(dicts, cfg_train_classes(cfg).id_maps.get(cfg.DATASETS.TEST[0]))
    loader = build_validation_loss_loader(
        dicts,
        mapper,
        max_images,
        batch_size=max(cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), 1),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return ValidationLossHook(cfg.TEST.EVAL_PERIOD, model, loader, seed=max(cfg.SEED, 0))
