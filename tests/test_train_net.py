"""End to end: train_net.py trains, checkpoints, resumes and evaluates on a tiny synthetic split."""
import json
import os

import pytest
import torch

from detectron2.data import DatasetCatalog

import train_net
from multimask.data import register_synthetic_dataset

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
