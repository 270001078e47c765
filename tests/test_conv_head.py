"""MultiMaskRCNNConvUpsampleHead's feature flow between mask branches (FLOW) and FC fusion (FC_FUSION)."""
import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask import MultiMasks
from multimask.modeling import build_multi_mask_head, parse_fc_fusion, parse_flow

from .common import REPO_ROOT, get_tiny_config

NAMES = ("amodal", "visible", "occluded")
FLOW = [["visible", "amodal"], ["occluded", "amodal"]]


def _head(flow=(), shared=1, names=NAMES, fc_fusion=()):
    cfg = get_tiny_config(names)
    h = cfg.MODEL.ROI_MULTI_MASK_HEAD
    h.SHARED_CONVS, h.FLOW, h.FC_FUSION = shared, [list(f) for f in flow], list(fc_fusion)
    torch.manual_seed(0)
    return build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))


def _proposals(names=NAMES):
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(torch.tensor([[2.0, 2, 20, 20], [5, 5, 30, 25], [0, 0, 31, 31]]))
    inst.gt_classes = torch.tensor([0, 1, 2])
    masks = torch.rand(3, len(names), 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5
    inst.gt_multimask = MultiMasks(masks, names)
    return inst


def _features():
    return torch.randn(3, 8, 7, 7, generator=torch.Generator().manual_seed(1))


def test_order_follows_the_graph():
    order, sources = parse_flow(FLOW, NAMES, True)
    assert order == ["visible", "occluded", "amodal"]
    assert sources == {"amodal": ["visible", "occluded"], "visible": [], "occluded": []}
    order, _ = parse_flow([["occluded", "visible"], ["visible", "amodal"]], NAMES, True)
    assert order == ["occluded", "visible", "amodal"]
    assert parse_flow([], NAMES, False)[0] == list(NAMES)


@pytest.mark.parametrize(
    "flow, has_towers, message",
    [
        ([["visible", "amodal"], ["amodal", "visible"]], True, r"cycle among \['amodal', 'visible'\]"),
        ([["visible", "modal"]], True, r"FLOW\[0\] = \['visible', 'modal'\]: mask names \['modal'\]"),
        ([["visible", "amodal"]], False, r"FLOW\[0\].*no mask has a branch of its own"),
        ([["visible"]], True, r"FLOW\[0\].*pair \[source, target\]"),
        (["visible"], True, r"FLOW\[0\].*pair"),
        ([["amodal", "amodal"]], True, "cannot feed itself"),
        ([["visible", "amodal"], ["visible", "amodal"]], True, r"FLOW\[1\].*declared twice"),
    ],
)
def test_config_errors_name_the_entry(flow, has_towers, message):
    with pytest.raises(ValueError, match=message):
        parse_flow(flow, NAMES, has_towers)


@pytest.mark.parametrize("shared", [-1, 2])
def test_everything_shared_is_a_config_error(shared):
    with pytest.raises(ValueError, match=r"MODEL.ROI_MULTI_MASK_HEAD.FLOW\[0\]"):
        _head(FLOW, shared=shared)


@pytest.mark.parametrize("shared", [0, 1])
def test_gradients_flow_from_the_target_loss_into_the_source_tower(shared):
    head = _head(FLOW, shared=shared)
    with EventStorage():
        losses = head(_features(), [_proposals()])
    losses["loss_mask_amodal"].backward()
    for src in ("visible", "occluded"):
        grad = head.towers[src].mask_fcn2.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        # the source's own predictor does not take part in the target's loss
        pgrad = head.towers[src].predictor.weight.grad
        assert pgrad is None or (pgrad == 0).all()
    # without the flow, the amodal loss reaches no other tower
    plain = _head(shared=shared)
    with EventStorage():
        plain(_features(), [_proposals()])["loss_mask_amodal"].backward()
    grad = plain.towers["visible"].mask_fcn2.weight.grad
    assert grad is None or (grad == 0).all()


def test_checkpoint_names_stable_and_class_selective_path_matches_layers():
    plain, flow = _head(), _head(FLOW)
    assert set(plain.state_dict()) == set(flow.state_dict())
    # the target's first tower conv takes the trunk's 32 channels and 32 per source
    assert flow.towers["amodal"].mask_fcn2.weight.shape[1] == 32 * 3
    assert flow.towers["visible"].mask_fcn2.weight.shape[1] == 32
    assert flow.class_selective
    inst = _proposals()
    flow.eval()
    inst.pred_classes = inst.gt_classes
    with torch.no_grad():
        full = flow.layers(_features())
        selected = flow._class_logits(_features(), [inst])
    ref = full[torch.arange(3), :, inst.gt_classes]
    torch.testing.assert_close(selected[:, :, 0], ref, rtol=1e-5, atol=1e-5)


def test_single_mask_checkpoint_initialises_a_flow_target():
    head = _head(FLOW)
    single = {}
    for name in ("mask_fcn1", "mask_fcn2"):
        single[f"{name}.weight"] = torch.randn(32, 8 if name == "mask_fcn1" else 32, 3, 3)
        single[f"{name}.bias"] = torch.randn(32)
    head.load_state_dict(single, strict=False)
    w = head.towers["amodal"].mask_fcn2.weight
    assert torch.equal(w[:, :32], single["mask_fcn2.weight"]) and (w[:, 32:] == 0).all()
    assert torch.equal(head.towers["visible"].mask_fcn2.weight, single["mask_fcn2.weight"])


def test_lazyconfig_flow():
    lazy = LazyConfig.load(f"{REPO_ROOT}/configs/common/models/multimask_rcnn_fpn.py")
    head_cfg = lazy.model.roi_heads.mask_head
    assert head_cfg.flow == [] and head_cfg.constraints == [] and head_cfg.maskiou_on is False
    head_cfg.input_shape.channels = 8
    head_cfg.num_classes = 2
    head_cfg.mask_names = ["amodal", "visible"]
    head_cfg.conv_dims = [16, 16, 16]
    head_cfg.shared_convs = 1
    head_cfg.flow = [["visible", "amodal"]]
    head = instantiate(head_cfg)
    assert list(head.towers) == ["visible", "amodal"]
    assert head.towers["amodal"].mask_fcn2.weight.shape[1] == 32


@pytest.mark.parametrize(
    "names, has_tower_convs, message",
    [
        (["modal"], True, r"FC_FUSION\[0\] = 'modal': not in MASK_NAMES"),
        (["amodal", "amodal"], True, r"FC_FUSION\[1\] = 'amodal': declared twice"),
        (["amodal"], False, r"FC_FUSION\[0\] = 'amodal'.*every conv is shared"),
        ("amodal", True, r"FC_FUSION must be a list"),
    ],
)
def test_fc_fusion_config_errors_name_the_entry(names, has_tower_convs, message):
    with pytest.raises(ValueError, match=message):
        parse_fc_fusion(names, NAMES, has_tower_convs)


@pytest.mark.parametrize("shared", [-1, 2])
def test_fc_fusion_without_tower_convs_is_a_config_error(shared):
    # 2 = NUM_CONV of the tiny config: the towers hold only a deconv and a predictor
    with pytest.raises(ValueError, match=r"MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION\[0\]"):
        _head(shared=shared, fc_fusion=["amodal"])


def test_fc_fusion_is_global_trained_and_matches_the_class_selective_path():
    head = _head(FLOW, fc_fusion=["amodal"])
    assert list(head.fc_fusion) == ["amodal"]
    # a new branch: a plain head's checkpoint names are a subset, so it still loads
    assert set(_head(FLOW).state_dict()) < set(head.state_dict())
    with EventStorage():
        losses = head(_features(), [_proposals()])
    losses["loss_mask_amodal"].backward()
    assert head.fc_fusion["amodal"].fc.weight.grad.abs().sum() > 0
    # every output pixel sees the whole ROI: changing one corner cell of the 7 x 7 input moves the
    # opposite corner of the amodal logits (two 3 x 3 convs reach 2 cells away), not of the visible
    head.eval()
    x = _features()
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    with torch.no_grad():
        a, b = head.layers(x), head.layers(x2)
    assert (a[:, 0, :, -1, -1] - b[:, 0, :, -1, -1]).abs().max() > 0
    torch.testing.assert_close(a[:, 1, :, -1, -1], b[:, 1, :, -1, -1])
    inst = _proposals()
    inst.pred_classes = inst.gt_classes
    with torch.no_grad():
        selected = head._class_logits(x, [inst])
    torch.testing.assert_close(
        selected[:, :, 0], a[torch.arange(3), :, inst.gt_classes], rtol=1e-5, atol=1e-5
    )


def test_lazyconfig_fc_fusion():
    lazy = LazyConfig.load(f"{REPO_ROOT}/configs/common/models/multimask_rcnn_fpn.py")
    head_cfg = lazy.model.roi_heads.mask_head
    assert head_cfg.fc_fusion == []
    head_cfg.input_shape.channels = 8
    head_cfg.num_classes = 2
    head_cfg.mask_names = ["amodal", "visible"]
    head_cfg.conv_dims = [16, 16, 16]
    head_cfg.shared_convs = 1
    head_cfg.fc_fusion = ["amodal"]
    head = instantiate(head_cfg)
    # half the tower's channels over the pooled map, to the (2S)^2 mask
    side = head_cfg.input_shape.height
    assert head.fc_fusion["amodal"].fc.weight.shape == (4 * side * side, 8 * side * side)
    head_cfg.fc_fusion_dim = 4
    head = instantiate(head_cfg)
    assert head.fc_fusion["amodal"].fc.weight.shape == (4 * side * side, 4 * side * side)
