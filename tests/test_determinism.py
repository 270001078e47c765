"""
Determinism on CPU: the same seed and config give bit-identical losses, step after step, and the
same weights; another seed gives other losses (so the comparison can see a difference). What is not
deterministic on GPU is listed in docs/reliability.md.
"""

import pytest
import torch

from detectron2.data import DatasetCatalog

import train_net
from multimask.engine import MultiMaskTrainer

from .reliability_common import (
    TRAIN,
    VAL,
    LossRecorder,
    one_thread,
    read_losses,
    register_tiny_splits,
    train_net_args,
)

# flips on: their draws must repeat too
OPTS = [
    "SOLVER.MAX_ITER", "3",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "INPUT.RANDOM_FLIP", "horizontal",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("det_data"))
    register_tiny_splits(root)
    DatasetCatalog.get(TRAIN), DatasetCatalog.get(VAL)
    return root


def _run(out, monkeypatch, *opts):
    build_hooks = MultiMaskTrainer.build_hooks
    log = str(out / "losses.jsonl")
    monkeypatch.setattr(
        MultiMaskTrainer, "build_hooks", lambda self: build_hooks(self) + [LossRecorder(log)]
    )
    with one_thread():
        train_net.main(train_net_args(out, *OPTS, "TEST.EVAL_PERIOD", "0", *opts))
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    return read_losses(log), weights


def test_same_seed_same_losses_and_weights(data_root, tmp_path, monkeypatch):
    losses_a, weights_a = _run(tmp_path / "a", monkeypatch)
    losses_b, weights_b = _run(tmp_path / "b", monkeypatch)
    assert sorted(losses_a) == [0, 1, 2]
    assert losses_a == losses_b  # exact float equality, every loss of every step
    assert len({r["total_loss"] for r in losses_a.values()}) == 3
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), k

    losses_c, _ = _run(tmp_path / "c", monkeypatch, "SEED", "8")
    assert all(losses_c[i]["total_loss"] != losses_a[i]["total_loss"] for i in range(3))


def test_evaluating_during_training_does_not_change_the_training_draws(
    data_root, tmp_path, monkeypatch
):
    # COCO evaluation and the validation loss after every step: they read images (the test-time
    # resize draws from numpy's RNG) and start loaders (torch's), and put both states back, so
    # the training curve is the same as without them (and --resume stays exact: the checkpoint's
    # RNG states are captured before they run)
    plain, _ = _run(tmp_path / "plain", monkeypatch)
    evaluated, _ = _run(tmp_path / "eval", monkeypatch, "TEST.EVAL_PERIOD", "1")
    assert "val/total_loss" in (tmp_path / "eval" / "metrics.json").read_text()
    assert evaluated == plain
