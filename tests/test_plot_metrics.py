import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from .common import REPO_ROOT


def _tool():
    spec = importlib.util.spec_from_file_location(
        "plot_metrics", os.path.join(REPO_ROOT, "tools", "plot_metrics.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _training_line(it):
    # the keys detectron2's JSONWriter writes for a multimask run
    return {
        "data_time": 0.01,
        "eta_seconds": 100 - it,
        "fast_rcnn/cls_accuracy": 0.9,
        "iteration": it,
        "loss_box_reg": 0.5 / (1 + it / 20),
        "loss_cls": 0.7 / (1 + it / 20),
        "loss_mask_amodal": 0.69 / (1 + it / 10),
        "loss_mask_visible": 0.69 / (1 + it / 30),
        "loss_rpn_cls": 0.3,
        "lr": 0.02 * min(1.0, (it + 1) / 40),
        "mask_rcnn/amodal/accuracy": 0.8,
        "rank_data_time": 0.01,
        "time": 0.5,
        "total_loss": 2.5 / (1 + it / 20),
    }


def _eval_line(it, ap):
    return {
        "bbox/AP": ap + 5,
        "bbox/AP50": ap + 20,
        "iteration": it,
        "segm_amodal/AP": ap,
        "segm_amodal_occluded/AP": ap - 10,
        "segm_visible/AP": ap - 3,
        "segm_visible_occluded/AP": ap - 20,
    }


def _write(path, lines, tail=""):
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        f.write(tail)


def test_plots_losses_lr_and_ap_per_mask_name(tmp_path):
    tool = _tool()
    lines = [_training_line(it) for it in range(19, 200, 20)]
    lines.insert(5, _eval_line(99, 30.0))
    lines += [_eval_line(199, 50.0)]
    # a resumed run logs iterations 179 and 199 again: the later values win
    lines += [dict(_training_line(179), total_loss=9.0), dict(_eval_line(199, 55.0))]
    _write(tmp_path / "metrics.json", lines, tail='{"iteration": 219, "loss_m')  # cut short

    output = tool.main([str(tmp_path)])
    assert output == str(tmp_path / "metrics.png")
    png = cv2.imread(output)
    assert png.shape == (640, 960, 3)  # 12 x 8 inches at 80 dpi
    assert (png < 250).any(axis=2).mean() > 0.05  # lines, text and axes drawn

    series = tool.collect_series(tool.load_metrics(str(tmp_path / "metrics.json")))
    assert tool.mask_names_of(series) == ["amodal", "visible"]
    its, values = series["loss_mask_amodal"]
    assert its == list(range(19, 200, 20)) and values[0] == pytest.approx(0.69 / 2.9)
    assert series["total_loss"][1][-2] == 9.0  # iteration 179 as logged last
    assert series["segm_amodal/AP"] == ([99, 199], [30.0, 55.0])
    assert series["segm_visible_occluded/AP"] == ([99, 199], [10.0, 35.0])
    assert np.all(np.diff(series["lr"][1][:2]) > 0)  # warmup


def test_a_run_without_evaluation_is_still_plotted(tmp_path):
    tool = _tool()
    _write(tmp_path / "metrics.json", [_training_line(it) for it in (19, 39)])
    out = tmp_path / "plots" / "run.png"
    series = tool.plot_metrics(str(tmp_path / "metrics.json"), str(out))
    assert out.is_file() and "segm_amodal/AP" not in series


def test_bad_input_is_reported_with_file_and_line(tmp_path):
    tool = _tool()
    path = tmp_path / "metrics.json"
    _write(path, [_training_line(19)], tail="not json\n" + json.dumps(_training_line(39)) + "\n")
    with pytest.raises(ValueError, match=r"metrics.json:2: not a JSON object"):
        tool.load_metrics(str(path))
    _write(path, [{"loss": 1.0}])
    with pytest.raises(
        ValueError, match=r"metrics.json:1: expected a JSON object with 'iteration'"
    ):
        tool.load_metrics(str(path))
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        tool.main([str(tmp_path / "missing")])
