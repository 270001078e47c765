"""Every YAML under configs/ loads through train_net's setup (catches config rot)."""
import glob
import os

import pytest

from detectron2.modeling import build_model

import train_net
from multimask.config import check_multimask_config

from .common import REPO_ROOT

YAMLS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_loads(path, tmp_path):
    args = train_net.get_parser().parse_args(
        ["--config-file", path, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
    )
    cfg = train_net.setup(args)
    check_multimask_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "MultiMaskRCNN"
    assert cfg.MODEL.ROI_HEADS.NAME == "MultiMaskROIHeads"


def test_quick_configs_build_models(tmp_path):
    quick = [p for p in YAMLS if "quick_schedules" in p]
    assert quick
    for path in quick:
        args = train_net.get_parser().parse_args(
            ["--config-file", path, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
        )
        model = build_model(train_net.setup(args))
        names = model.roi_heads.mask_head.mask_names
        assert names[:2] == ["amodal", "visible"]
