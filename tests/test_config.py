import pytest
from yacs.config import CfgNode

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from multimask import add_multimask_config
from multimask.config import check_multimask_config, primary_mask_name

from .common import get_tiny_config


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
