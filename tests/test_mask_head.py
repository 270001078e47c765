import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask import MultiMasks
from multimask.modeling import build_multi_mask_head

from .common import get_tiny_config

NAMES = ("amodal", "visible")


def _head(shared=-1, agnostic=False, weights=(), names=NAMES, primary=""):
    cfg = get_tiny_config(names)
    h = cfg.MODEL.ROI_MULTI_MASK_HEAD
    h.SHARED_CONVS, h.CLS_AGNOSTIC_MASK, h.LOSS_WEIGHTS, h.PRIMARY = shared, agnostic, list(weights), primary
    torch.manual_seed(0)
    return build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))


def _proposals(n=4, size=32, names=NAMES, annotated=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((size, size))
    inst.proposal_boxes = Boxes(torch.tensor([[2.0, 2, 20, 20], [5, 5, 30, 25], [0, 0, 31, 31], [8, 4, 16, 28]])[:n])
    inst.gt_classes = torch.tensor([0, 1, 2, 1])[:n]
    masks = torch.rand(n, len(names), size, size, generator=g) > 0.5
    inst.gt_multimask = MultiMasks(masks, names, annotated)
    return inst


def _features(n=4):
    return torch.randn(n, 8, 7, 7, generator=torch.Generator().manual_seed(1))


def test_train_loss_keys_and_metrics():
    head = _head()
    with EventStorage() as storage:
        losses = head(_features(), [_proposals()])
    assert set(losses) == {"loss_mask_amodal", "loss_mask_visible"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v) and v > 0
    assert "mask_rcnn/visible/accuracy" in storage.latest()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_missing_masks_are_ignored():
    annotated = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]], dtype=torch.bool)
    head = _head()
    p1 = _proposals(annotated=annotated)
    p2 = _proposals(annotated=annotated)
    data = p2.gt_multimask.tensor.clone()
    data[1, 1], data[2, 1] = ~data[1, 1], True  # change only the not-annotated masks
    p2.gt_multimask = MultiMasks(data, NAMES, annotated)
    with EventStorage():
        l1, l2 = head(_features(), [p1]), head(_features(), [p2])
        # an annotated mask does count
        data[0, 1] = ~data[0, 1]
        p2.gt_multimask = MultiMasks(data, NAMES, annotated)
        l3 = head(_features(), [p2])
    assert torch.equal(l1["loss_mask_visible"], l2["loss_mask_visible"])
    assert torch.equal(l1["loss_mask_amodal"], l2["loss_mask_amodal"])
    assert not torch.equal(l1["loss_mask_visible"], l3["loss_mask_visible"])


def test_mask_with_no_annotation_gives_zero_loss_and_empty_images_work():
    annotated = torch.tensor([[1, 0]] * 4, dtype=torch.bool)
    head = _head()
    empty = Instances((32, 32))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    with EventStorage():
        losses = head(_features(), [_proposals(annotated=annotated), empty])
        none = head(torch.zeros(0, 8, 7, 7), [empty])
    assert losses["loss_mask_visible"].item() == 0.0 and losses["loss_mask_amodal"] > 0
    assert losses["loss_mask_visible"].requires_grad
    assert set(none) == {"loss_mask_amodal", "loss_mask_visible"}
    assert all(v.item() == 0 for v in none.values())


def test_loss_weights():
    with EventStorage():
        base = _head()(_features(), [_proposals()])
        weighted = _head(weights=(2.0, 0.5))(_features(), [_proposals()])
    assert torch.allclose(weighted["loss_mask_amodal"], 2 * base["loss_mask_amodal"])
    assert torch.allclose(weighted["loss_mask_visible"], 0.5 * base["loss_mask_visible"])


@pytest.mark.parametrize("shared", [-1, 0, 1, 2])
@pytest.mark.parametrize("agnostic", [False, True])
def test_inference_shapes_and_layout(shared, agnostic):
    head = _head(shared=shared, agnostic=agnostic, primary="visible").eval()
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10]] * 3))
    inst.pred_classes = torch.tensor([0, 2, 1])
    inst2 = Instances((32, 32))
    inst2.pred_boxes = Boxes(torch.zeros(0, 4))
    inst2.pred_classes = torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        out = head(_features(3), [inst, inst2])
    assert out[0].pred_multimasks.shape == (3, 2, 14, 14)
    assert out[1].pred_multimasks.shape == (0, 2, 14, 14)
    assert torch.equal(out[0].pred_masks[:, 0], out[0].pred_multimasks[:, 1])
    assert ((out[0].pred_multimasks >= 0) & (out[0].pred_multimasks <= 1)).all()
    names = {n for n, _ in head.named_parameters()}
    num_shared = 2 if shared == -1 else shared
    assert all(f"trunk.mask_fcn{i + 1}.weight" in names for i in range(num_shared))
    assert ("trunk.deconv.weight" in names) == (shared in (-1, 2))
    for m in NAMES:
        assert f"towers.{m}.predictor.weight" in names
        assert (f"towers.{m}.deconv.weight" in names) == (shared in (0, 1))
        assert (f"towers.{m}.mask_fcn2.weight" in names) == (shared in (0, 1))
    out_ch = 1 if agnostic else 3
    assert head.towers["amodal"].predictor.weight.shape[0] == out_ch


def test_single_mask():
    head = _head(names=("only",))
    with EventStorage():
        losses = head(_features(), [_proposals(names=("only",))])
    assert set(losses) == {"loss_mask_only"}


def test_missing_gt_multimask_is_a_clear_error():
    inst = _proposals()
    inst.remove("gt_multimask")
    with EventStorage(), pytest.raises(ValueError, match="MultiMaskDatasetMapper"):
        _head()(_features(), [inst])
