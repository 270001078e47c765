"""End to end: train_net.py trains, checkpoints, resumes and evaluates on a tiny synthetic split."""
import json
import logging
import os

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import train_net
from multimask.data import register_synthetic_dataset
from multimask.engine import MultiMaskTrainer, do_train

from .common import REPO_ROOT

CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic.yaml")
TRAIN, VAL = "multimask_test_e2e_train", "multimask_test_e2e_val"


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    for name, n, seed in ((TRAIN, 6, 10), (VAL, 3, 11)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_synthetic_dataset(name, n, seed, image_size=96, root=root)
    return root


def _args(out_dir, *opts, resume=False, trainer="default", eval_only=False):
    argv = ["--config-file", CONFIG, "--trainer", trainer]
    argv += ["--resume"] if resume else []
    argv += ["--eval-only"] if eval_only else []
    argv += ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out_dir), "DATASETS.TRAIN", f"('{TRAIN}',)"]
    argv += ["DATASETS.TEST", f"('{VAL}',)", *opts]
    return train_net.get_parser().parse_args(argv)


def _iteration(path):
    return torch.load(path, map_location="cpu", weights_only=False)["iteration"]


def _check_results(results):
    expected = {"bbox"} | {f"segm_{n}{s}" for n in ("amodal", "visible") for s in ("", "_occluded")}
    assert expected <= set(results)
    for key in expected:
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results[key])


def test_train_resume_and_evaluate(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    results = train_net.main(_args(out, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1"))
    _check_results(results)
    for f in ("metrics.json", "last_checkpoint", "model_final.pth", "model_0000000.pth"):
        assert (out / f).exists(), f
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert _iteration(out / "model_final.pth") == 1
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_mask_amodal" in x and "loss_mask_visible" in x for x in lines)

    # --resume with a longer schedule continues from iteration 2 with the saved optimizer/scheduler
    results = train_net.main(
        _args(out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", resume=True)
    )
    _check_results(results)
    assert _iteration(out / "model_final.pth") == 3
    iterations = [json.loads(x).get("iteration") for x in (out / "metrics.json").read_text().splitlines()]
    assert 3 in iterations

    # --eval-only with the trained weights
    results = train_net.main(
        _args(out, "MODEL.WEIGHTS", str(out / "model_final.pth"), eval_only=True)
    )
    _check_results(results)


def test_simple_trainer_loop(tiny_synthetic, tmp_path):
    out = tmp_path / "simple"
    results = train_net.main(
        _args(out, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", trainer="simple")
    )
    _check_results(results)
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert _iteration(out / "model_0000000.pth") == 0


def test_wrong_class_count_fails_before_training(tiny_synthetic, tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES is 5; set it to 3"):
        train_net.main(_args(tmp_path / "bad", "MODEL.ROI_HEADS.NUM_CLASSES", "5"))
    assert not (tmp_path / "bad" / "model_final.pth").exists()


def _one_step(tiny_synthetic, out, trainer, *opts):
    """Parameters before and after one SGD step (lr 1, no momentum or decay) of either trainer."""
    opts = ["SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "1.0", "SOLVER.MOMENTUM", "0.0", *opts]
    opts += ["SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100"]
    cfg = train_net.setup(_args(out, *opts))
    torch.manual_seed(0)
    if trainer == "simple":
        model = build_model(cfg)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        do_train(cfg, model)
    else:
        runner = MultiMaskTrainer(cfg)
        model = runner.model
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        runner.train()
    return before, dict(model.named_parameters())


@pytest.mark.parametrize("trainer", ["simple", "default"])
def test_trainers_clip_gradients_alike(tiny_synthetic, tmp_path, trainer):
    clip = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.001"]
    before, after = _one_step(tiny_synthetic, tmp_path / "clip", trainer, *clip)
    steps = torch.stack([(after[k] - v).abs().max() for k, v in before.items()])
    assert steps.max() <= 0.001 + 1e-6 and (steps > 0).any()  # lr 1 x each value clipped
    before, after = _one_step(tiny_synthetic, tmp_path / "free", trainer)
    assert max((after[k] - v).abs().max() for k, v in before.items()) > 0.01  # unclipped


@pytest.mark.parametrize("trainer", ["simple", "default"])
def test_amp_on_cpu_trains_in_float32_with_a_warning(tiny_synthetic, tmp_path, trainer, caplog):
    """detectron2's AMP is CUDA-only: both trainers say so and take the float32 step."""
    with caplog.at_level(logging.WARNING, logger="multimask.engine.trainer"):
        _, amp = _one_step(tiny_synthetic, tmp_path / "amp", trainer, "SOLVER.AMP.ENABLED", "True")
    assert "SOLVER.AMP.ENABLED is ignored on the 'cpu' device" in caplog.text
    assert "CUDA-only" in caplog.text
    _, fp32 = _one_step(tiny_synthetic, tmp_path / "fp32", trainer)
    for k, v in fp32.items():
        assert torch.equal(amp[k], v), k
