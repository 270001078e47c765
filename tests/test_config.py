import pytest
from torch import nn
from yacs.config import CfgNode

from detectron2.config import get_cfg
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from multimask import add_multimask_config
from multimask.config import (
    check_multimask_config,
    get_multimask_cfg,
    multi_mask_head_cfg,
    primary_mask_name,
)

from .common import REPO_ROOT, get_tiny_config


def test_defaults():
    cfg = get_cfg()
    add_multimask_config(cfg)
    h = cfg.MODEL.ROI_MULTI_MASK_HEAD
    assert h.NAME == "MultiMaskRCNNConvUpsampleHead"
    assert h.NUM_MASK == 2 and h.MASK_NAMES == ["primary", "secondary"]
    assert (h.NUM_CONV, h.CONV_DIM, h.NORM) == (4, 256, "")
    assert (h.POOLER_RESOLUTION, h.POOLER_SAMPLING_RATIO, h.POOLER_TYPE) == (14, 0, "ROIAlignV2")
    assert h.CLS_AGNOSTIC_MASK is False and h.SHARED_CONVS == -1
    assert h.LOSS_WEIGHTS == [] and h.PRIMARY == ""
    assert primary_mask_name(cfg) == "primary"
    check_multimask_config(cfg)


def test_does_not_touch_global_defaults():
    add_multimask_config(get_cfg())
    assert "ROI_MULTI_MASK_HEAD" not in get_cfg().MODEL


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("NUM_MASK", 3, "NUM_MASK is 3"),
        ("MASK_NAMES", ["a", "a"], "duplicate"),
        ("SHARED_CONVS", 5, "SHARED_CONVS"),
        ("LOSS_WEIGHTS", [1.0], "LOSS_WEIGHTS"),
        ("PRIMARY", "amodal", "PRIMARY"),
    ],
)
def test_invalid_values_are_config_errors(key, value, message):
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.MODEL.ROI_MULTI_MASK_HEAD[key] = value
    with pytest.raises(ValueError, match=message):
        check_multimask_config(cfg)


def test_build_model_checks_config():
    cfg = get_tiny_config()
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = 3
    with pytest.raises(ValueError, match="MASK_NAMES has 2 names"):
        build_model(cfg)


def test_unknown_key_in_yaml_fails(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("MODEL:\n  ROI_MULTI_MASK_HEAD:\n    NUM_MASKS: 3\n")
    cfg = get_cfg()
    add_multimask_config(cfg)
    with pytest.raises(KeyError, match="NUM_MASKS"):
        cfg.merge_from_file(str(f))


def test_primary_name():
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["amodal", "visible"]
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = "visible"
    check_multimask_config(cfg)
    assert primary_mask_name(cfg) == "visible"
    assert isinstance(cfg.MODEL.ROI_MULTI_MASK_HEAD, CfgNode)


def test_mask_head_keys_of_a_based_mask_rcnn_config_are_inherited(tmp_path):
    """A GN, class-agnostic Mask R-CNN setting in a _BASE_ file: the multi-mask head follows it."""
    (tmp_path / "gn_agnostic_mask_rcnn.yaml").write_text(
        f'_BASE_: "{REPO_ROOT}/configs/Base-MultiMask-RCNN-FPN.yaml"\n'
        "MODEL:\n  ROI_MASK_HEAD:\n    NORM: GN\n    CLS_AGNOSTIC_MASK: True\n"
        "    POOLER_RESOLUTION: 7\n    CONV_DIM: 32\n"
    )
    (tmp_path / "child.yaml").write_text(
        '_BASE_: "gn_agnostic_mask_rcnn.yaml"\n'
        "MODEL:\n  DEVICE: cpu\n  ROI_MULTI_MASK_HEAD:\n    NUM_CONV: 2\n    POOLER_TYPE: ROIAlign\n"
    )
    cfg = get_multimask_cfg(str(tmp_path / "child.yaml"))
    head = multi_mask_head_cfg(cfg)
    assert (head.NORM, head.CLS_AGNOSTIC_MASK, head.POOLER_RESOLUTION, head.CONV_DIM) == (
        "GN",
        True,
        7,
        32,
    )
    assert (head.NUM_CONV, head.POOLER_TYPE) == (2, "ROIAlign")  # set for the multi-mask head
    roi_heads = build_model(cfg).roi_heads
    convs = [m for m in roi_heads.mask_head.trunk if isinstance(m, Conv2d)]
    assert len(convs) == 2 and all(isinstance(c.norm, nn.GroupNorm) for c in convs)
    assert convs[0].out_channels == 32
    assert all(t.predictor.out_channels == 1 for t in roi_heads.mask_head.towers.values())
    pooler = roi_heads.mask_pooler
    assert pooler.output_size == (7, 7) and not pooler.level_poolers[0].aligned

    # the multi-mask key, when set, wins; ROI_MASK_HEAD at detectron2's defaults changes nothing
    cfg = get_multimask_cfg(
        str(tmp_path / "child.yaml"), ["MODEL.ROI_MULTI_MASK_HEAD.NORM", "BN"]
    )
    assert multi_mask_head_cfg(cfg).NORM == "BN"
    plain = get_tiny_config()
    assert multi_mask_head_cfg(plain) == plain.MODEL.ROI_MULTI_MASK_HEAD


def test_test_time_augmentation_is_refused_clearly():
    """detectron2's GeneralizedRCNNWithTTA would return instances without pred_multimasks."""
    cfg = get_tiny_config()
    cfg.TEST.AUG.ENABLED = True
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED: .* would drop pred_multimasks"):
        build_model(cfg)
