import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.data import DatasetCatalog
from detectron2.engine import hooks
from detectron2.utils.events import EventStorage

from multimask.data import register_synthetic_dataset
from multimask.engine import MultiMaskTrainer
from multimask.engine.hooks import (
    ValidationLossHook,
    build_validation_loss_hook,
    compute_validation_loss,
)

from .common import get_tiny_config, get_tiny_model

NAMES = ("amodal", "visible")
TRAIN, VAL = "mm_valloss_test_train", "mm_valloss_test_val"


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    for name, n, seed in [(TRAIN, 4, 11), (VAL, 4, 12)]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_synthetic_dataset(name, num_images=n, seed=seed, image_size=96, root=root)
    yield
    for name in (TRAIN, VAL):
        DatasetCatalog.remove(name)


def _cfg(tmp_path, eval_period=2, max_images=2):
    cfg = get_tiny_config(NAMES)
    cfg.DATASETS.TRAIN = (TRAIN,)
    cfg.DATASETS.TEST = (VAL,)
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.TEST.EVAL_PERIOD = eval_period
    cfg.MULTIMASK.VAL_LOSS_MAX_IMAGES = max_images
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.005
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_loss_is_deterministic_and_leaves_the_model_untouched(tiny_datasets, tmp_path):
    cfg = _cfg(tmp_path)
    model = get_tiny_model(cfg)
    hook = build_validation_loss_hook(cfg, model)
    assert sum(len(b) for b in hook.data_loader) == 2  # VAL_LOSS_MAX_IMAGES of the 4 images

    model.train()
    model.roi_heads.eval()  # a mixed state, to check that each module's mode comes back
    modes = {n: m.training for n, m in model.named_modules()}
    bn_stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert bn_stats and any(isinstance(m, _BatchNorm) for m in model.modules())
    rng = torch.get_rng_state()

    first = compute_validation_loss(model, hook.data_loader, seed=0)
    second = compute_validation_loss(model, hook.data_loader, seed=0)
    assert first == second
    assert {
        "val/loss_mask_amodal",
        "val/loss_mask_visible",
        "val/loss_cls",
        "val/total_loss",
    } <= set(first)
    parts = sum(v for k, v in first.items() if k != "val/total_loss")
    assert first["val/total_loss"] == pytest.approx(parts)
    assert all(v > 0 for v in first.values())

    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_stats.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_hook_writes_only_when_due(tiny_datasets, tmp_path):
    cfg = _cfg(tmp_path, eval_period=3)
    model = get_tiny_model(cfg)
    hook = build_validation_loss_hook(cfg, model)
    with EventStorage(0) as storage:
        assert hook.run_if_due(0, max_iter=5, storage=storage) is None
        storage.iter = 2
        written = hook.run_if_due(2, max_iter=5, storage=storage)
        assert written and storage.latest()["val/loss_mask_visible"] == (
            written["val/loss_mask_visible"],
            2,
        )
        storage.iter = 4
        assert hook.run_if_due(4, max_iter=5, storage=storage)  # the last iteration

    assert build_validation_loss_hook(_cfg(tmp_path, eval_period=0), model) is None
    assert build_validation_loss_hook(_cfg(tmp_path, max_images=0), model) is None


def test_trainer_writes_validation_loss_to_metrics(tiny_datasets, tmp_path):
    trainer = MultiMaskTrainer(_cfg(tmp_path))
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.index(ValidationLossHook) < kinds.index(hooks.PeriodicWriter)
    trainer.train()
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    val = [r for r in records if "val/loss_mask_amodal" in r]
    assert val and val[-1]["iteration"] == 1
    assert {"val/loss_mask_visible", "val/total_loss", "loss_mask_amodal"} <= set(val[-1])
