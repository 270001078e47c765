"""Output constraints (CONSTRAINTS) and the MaskIoU branch (MASKIOU_ON) of the multi-mask heads."""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask import MultiMasks
from multimask.modeling import apply_constraints, build_multi_mask_head, parse_constraints
from multimask.modeling.maskiou import maskiou_targets
from multimask.utils import ExportableMultiMaskRCNN, export_scripting

from .common import get_tiny_config, get_tiny_model

NAMES = ("amodal", "visible", "occluded")
CONSTRAINTS = [["contains", "amodal", "visible"], ["difference", "occluded", "amodal", "visible"]]


def _cfg(**keys):
    cfg = get_tiny_config(NAMES)
    for k, v in keys.items():
        setattr(cfg.MODEL.ROI_MULTI_MASK_HEAD, k, v)
    return cfg


def _head(**keys):
    torch.manual_seed(0)
    return build_multi_mask_head(_cfg(**keys), ShapeSpec(channels=8, height=7, width=7))


def _features(n=3):
    return torch.randn(n, 8, 7, 7, generator=torch.Generator().manual_seed(1))


def _detections(n=3):
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10]] * n))
    inst.pred_classes = torch.tensor([0, 2, 1])[:n]
    inst.scores = torch.tensor([0.9, 0.8, 0.7])[:n]
    return inst


def _proposals(annotated=None):
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(torch.tensor([[2.0, 2, 20, 20], [5, 5, 30, 25], [0, 0, 31, 31]]))
    inst.gt_classes = torch.tensor([0, 1, 2])
    masks = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5
    inst.gt_multimask = MultiMasks(masks, NAMES, annotated)
    return inst


def test_apply_constraints_values():
    probs = torch.tensor([0.2, 0.7, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    out = apply_constraints(probs, parse_constraints(CONSTRAINTS, NAMES))
    # amodal = max(0.2, 0.7); occluded = clamp(0.7 - 0.7, 0), replacing 0.9
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.7, 0.7, 0.0]))
    # in the other order, the difference reads the amodal mask before it grows
    out = apply_constraints(probs, parse_constraints(CONSTRAINTS[::-1], NAMES))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.7, 0.7, 0.0]))
    assert parse_constraints(CONSTRAINTS, NAMES) == [[0, 0, 1], [1, 2, 0, 1]]


@pytest.mark.parametrize(
    "entry, message",
    [
        (["inside", "amodal", "visible"], r"CONSTRAINTS\[0\].*unknown constraint type 'inside'"),
        (["contains", "amodal", "modal"], r"CONSTRAINTS\[0\].*mask names \['modal'\]"),
        (["difference", "occluded", "amodal"], r"'difference' takes 3 mask names, got 2"),
        (["contains", "amodal", "amodal"], "distinct masks"),
        ("contains", r"CONSTRAINTS\[0\] = 'contains': each constraint must be a list"),
    ],
)
def test_constraint_errors_name_the_entry(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_constraints([entry], NAMES)
    with pytest.raises(ValueError, match=message):
        _head(CONSTRAINTS=[entry])


def test_inference_enforces_the_constraints():
    plain, constrained = _head().eval(), _head(CONSTRAINTS=CONSTRAINTS).eval()
    with torch.no_grad():
        a = plain(_features(), [_detections()])[0].pred_multimasks
        b = constrained(_features(), [_detections()])[0]
    m = b.pred_multimasks
    assert (m[:, 0] >= m[:, 1]).all() and torch.equal(m[:, 0], torch.maximum(a[:, 0], a[:, 1]))
    torch.testing.assert_close(m[:, 2], (m[:, 0] - m[:, 1]).clamp(min=0))
    assert torch.equal(b.pred_masks[:, 0], m[:, 0])
    assert torch.equal(m[:, 1], a[:, 1])


def test_maskiou_loss_only_on_annotated_pairs():
    head = _head(MASKIOU_ON=True, MASKIOU_WEIGHT=2.0)
    assert head.maskiou_indices == [0]  # the primary mask
    annotated = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    with EventStorage():
        losses = head(_features(), [_proposals(annotated)])
        empty = Instances((32, 32))
        empty.proposal_boxes = Boxes(torch.zeros(0, 4))
        none = head(torch.zeros(0, 8, 7, 7), [empty])
    loss = losses["loss_maskiou"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert head.maskiou_head.predictor.weight.grad.abs().sum() > 0
    # the IoU target is detached: the loss does not train the mask branch
    assert all(p.grad is None for n, p in head.named_parameters() if not n.startswith("maskiou_head"))
    assert none["loss_maskiou"].item() == 0 and none["loss_maskiou"].requires_grad
    with pytest.raises(ValueError, match=r"MASKIOU_MASKS \['nope'\]"):
        _head(MASKIOU_ON=True, MASKIOU_MASKS=["nope"])
    assert _head(MASKIOU_ON=True, MASKIOU_MASKS=["visible", "amodal"]).maskiou_indices == [1, 0]


def test_maskiou_targets():
    logits = torch.tensor([[1.0, 1.0, -1.0, -1.0]]).view(1, 1, 2, 2)
    target = torch.tensor([[True, False, True, False]]).view(1, 1, 2, 2)
    torch.testing.assert_close(maskiou_targets(logits, target), torch.tensor([[1 / 3]]))
    empty = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    torch.testing.assert_close(maskiou_targets(-logits.abs(), empty), torch.tensor([[1.0]]))


def test_maskiou_multiplies_the_scores_at_inference():
    plain = _head().eval()
    head = _head(MASKIOU_ON=True).eval()
    # same seed, built in the same order: the masks agree, the MaskIoU branch is added last
    head.load_state_dict({**head.state_dict(), **plain.state_dict()})
    with torch.no_grad():
        a = plain(_features(), [_detections()])[0]
        b = head(_features(), [_detections()])[0]
        masks = b.pred_multimasks[:, :1]
        iou = head.maskiou_head(_features(), masks)[torch.arange(3), 0, b.pred_classes]
    assert torch.equal(a.pred_multimasks, b.pred_multimasks)
    assert not torch.equal(a.scores, b.scores)
    torch.testing.assert_close(b.scores, a.scores * iou.clamp(0, 1))


def test_scripting_with_flow_and_constraints_matches_eager():
    cfg = _cfg(SHARED_CONVS=1, FLOW=[["visible", "amodal"]], CONSTRAINTS=CONSTRAINTS)
    model = get_tiny_model(cfg).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        scripted = export_scripting(model)
        eager, out = ExportableMultiMaskRCNN(model)(image), scripted(image)
    assert len(eager["scores"]) > 0
    for key, ref in eager.items():
        torch.testing.assert_close(out[key], ref, rtol=1e-5, atol=1e-5)
