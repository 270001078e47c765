import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask import MultiMasks
from multimask.modeling import base_head, build_multi_mask_head, mask_loss
from multimask.modeling.base_head import multi_mask_rcnn_loss

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


def _reference_loss(logits, instances, names, weights):
    """The loss and metrics as computed before the single-transfer rewrite: one mask at a time."""
    m = logits.shape[-1]
    classes = torch.cat([i.gt_classes for i in instances if len(i)])
    targets = torch.cat(
        [i.gt_multimask.crop_and_resize(i.proposal_boxes.tensor, m) for i in instances if len(i)]
    )
    annotated = torch.cat([i.gt_multimask.annotated for i in instances if len(i)])
    logits = logits[torch.arange(len(classes)), :, classes]
    losses, metrics = {}, {}
    for j, name in enumerate(names):
        sel = annotated[:, j]
        if not sel.any():
            losses[f"loss_mask_{name}"] = torch.tensor(0.0)
            continue
        lg, gt = logits[sel, j], targets[sel, j]
        pred, num_pos = lg > 0, gt.sum().item()
        metrics[f"mask_rcnn/{name}/accuracy"] = 1 - (pred != gt).sum().item() / gt.numel()
        metrics[f"mask_rcnn/{name}/false_positive"] = (pred & ~gt).sum().item() / max(
            gt.numel() - num_pos, 1.0
        )
        metrics[f"mask_rcnn/{name}/false_negative"] = (~pred & gt).sum().item() / max(num_pos, 1.0)
        losses[f"loss_mask_{name}"] = weights[j] * F.binary_cross_entropy_with_logits(
            lg, gt.float()
        )
    return losses, metrics


NAMES3 = ("amodal", "visible", "occluded")


def _partly_annotated_batch():
    """Two images and an empty one; `occluded` is annotated nowhere, `visible` on 3 of 7 ROIs."""
    ann1 = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    ann2 = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    empty = Instances((32, 32))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    batch = [
        _proposals(4, names=NAMES3, annotated=ann1, seed=0),
        empty,
        _proposals(3, names=NAMES3, annotated=ann2, seed=1),
    ]
    logits = torch.randn(7, 3, 3, 14, 14, generator=torch.Generator().manual_seed(3))
    return logits, batch


def test_loss_and_metrics_equal_the_per_mask_reference():
    logits, batch = _partly_annotated_batch()
    weights = (1.0, 0.5, 2.0)
    logits.requires_grad_(True)
    with EventStorage() as storage:
        losses = multi_mask_rcnn_loss(logits, batch, NAMES3, weights)
        metrics = {k: v[0] for k, v in storage.latest().items()}
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_losses, ref_metrics = _reference_loss(ref_logits, batch, NAMES3, weights)
    assert set(losses) == set(ref_losses)
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-6, atol=1e-7)
    assert metrics == ref_metrics  # identical floats; none for the mask annotated nowhere
    assert not any("occluded" in k for k in metrics)
    assert losses["loss_mask_occluded"].item() == 0.0 and losses["loss_mask_occluded"].requires_grad
    sum(losses.values()).backward()
    sum(v for v in ref_losses.values() if v.requires_grad).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-9)


def test_vis_period_puts_the_first_annotated_roi():
    logits, batch = _partly_annotated_batch()
    with EventStorage() as storage:
        multi_mask_rcnn_loss(logits, batch, NAMES3, (1.0,) * 3, vis_period=1)
        images = {name: img for name, img, _ in storage._vis_data}
    assert set(images) == {"amodal: left pred, right GT", "visible: left pred, right GT"}
    # visible: the first annotated ROI is ROI 0 of image 1 (class 0)
    vis = images["visible: left pred, right GT"]
    assert vis.shape == (1, 14, 28)
    torch.testing.assert_close(vis[0, :, :14], logits[0, 1, 0].sigmoid())
    target = batch[0].gt_multimask.crop_and_resize(batch[0].proposal_boxes.tensor, 14)[0, 1]
    torch.testing.assert_close(vis[0, :, 14:], target.float())


_SYNCING = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__bool__: "__bool__",
    torch.Tensor.__int__: "__int__",
    torch.Tensor.__float__: "__float__",
    torch.Tensor.nonzero: "nonzero",
}


class _SyncCounter(TorchFunctionMode):
    """
    Records the Tensor calls that wait for the device (values to the host, boolean indexing) made
    from code in `filenames`, in ``self.calls``. A TorchFunctionMode, not patched Tensor methods:
    assigning dunders on torch.Tensor changes torch's own behaviour after they are restored (the
    ONNX exporter then fails in ``torch.tensor([...])``).
    """

    def __init__(self, *filenames: str):
        super().__init__()
        self.filenames, self.calls = filenames, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        caller = sys._getframe(1).f_code.co_filename
        if caller in self.filenames:
            if func in _SYNCING:
                self.calls.append(_SYNCING[func])
            elif func is torch.Tensor.__getitem__:
                idx = args[1]
                parts = idx if isinstance(idx, tuple) else (idx,)
                if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                    self.calls.append("bool index")
        return func(*args, **(kwargs or {}))


def test_loss_makes_one_host_transfer():
    logits, batch = _partly_annotated_batch()
    with EventStorage(), _SyncCounter(base_head.__file__, mask_loss.__file__) as counter:
        multi_mask_rcnn_loss(logits, batch, NAMES3, (1.0,) * 3)
        assert counter.calls == ["tolist"]
        counter.calls.clear()
        _head()(_features(), [_proposals()])  # every mask annotated, through the head
    assert counter.calls == ["tolist"]


def test_sync_counter_sees_the_per_mask_reference():
    """The counter would catch the former code: several syncs per annotated mask."""
    logits, batch = _partly_annotated_batch()
    with _SyncCounter(__file__) as counter:
        _reference_loss(logits, batch, NAMES3, (1.0,) * 3)
    # per mask: sel.any(); per annotated mask: 2 boolean indexings and 4 .item()
    assert sorted(set(counter.calls)) == ["__bool__", "bool index", "item"]
    assert len(counter.calls) == 3 + 2 * 6


def _hidden_loss_case(annotated=None):
    """One ROI covering the whole 28 x 28 image: the 14 x 14 targets are the masks halved."""
    inst = Instances((28, 28))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 28, 28]]))
    inst.gt_classes = torch.tensor([1])
    amodal = torch.zeros(28, 28, dtype=torch.bool)
    amodal[4:24, 4:24] = True
    visible = amodal.clone()
    visible[4:24, 14:24] = False  # the right half is hidden
    inst.gt_multimask = MultiMasks(torch.stack([amodal, visible])[None], NAMES, annotated)
    return inst


@pytest.mark.parametrize("visible_annotated", [True, False])
def test_hidden_weights_weigh_the_hidden_part_of_the_whole_mask(visible_annotated):
    annotated = torch.tensor([[True, visible_annotated]])
    logits = torch.randn(1, 2, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    with EventStorage():
        plain, _, targets, _ = mask_loss._mask_loss_and_targets(
            logits, [_hidden_loss_case(annotated)], NAMES, [1.0, 1.0]
        )
        weighted, *_ = mask_loss._mask_loss_and_targets(
            logits, [_hidden_loss_case(annotated)], NAMES, [1.0, 1.0], 0, [(0, 1, 3.0)]
        )
    amodal, visible = targets[0, 0], targets[0, 1]
    hidden = amodal & ~visible
    assert hidden[:, 8:].any() and not hidden[:, :6].any()
    bce = F.binary_cross_entropy_with_logits(logits[0, :, 1], targets[0].float(), reduction="none")
    if visible_annotated:
        expected = (bce[0] * torch.where(hidden, 3.0, 1.0)).mean()
    else:  # nothing is known to be hidden: the weights stay 1
        expected = bce[0].mean()
    torch.testing.assert_close(weighted["loss_mask_amodal"], expected)
    assert torch.equal(weighted["loss_mask_amodal"], plain["loss_mask_amodal"]) == (not visible_annotated)
    # the visible mask's loss is untouched
    torch.testing.assert_close(weighted["loss_mask_visible"], plain["loss_mask_visible"])


@pytest.mark.parametrize(
    "entries, message",
    [
        ([["amodal", "modal", 2.0]], r"HIDDEN_WEIGHTS\[0\] = \['amodal', 'modal', 2.0\]: mask names \['modal'\]"),
        ([["amodal", "visible"]], r"HIDDEN_WEIGHTS\[0\].*\[whole, visible, weight\]"),
        ([["amodal", "amodal", 2.0]], "must differ"),
        ([["amodal", "visible", 0]], "number > 0"),
        ([["amodal", "visible", "2"]], "number > 0"),
        ([["amodal", "visible", 2.0], ["amodal", "visible", 3.0]], r"HIDDEN_WEIGHTS\[1\].*already"),
    ],
)
def test_hidden_weights_config_errors_name_the_entry(entries, message):
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.HIDDEN_WEIGHTS = entries
    with pytest.raises(ValueError, match=message):
        build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))


def test_hidden_weights_from_config_reach_the_loss():
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.HIDDEN_WEIGHTS = [["amodal", "visible", 2.5]]
    torch.manual_seed(0)
    head = build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))
    assert head.hidden_weights == [(0, 1, 2.5)]
    with EventStorage():
        weighted = head(_features(1), [_hidden_loss_case()])
        head.hidden_weights = []
        plain = head(_features(1), [_hidden_loss_case()])
    assert weighted["loss_mask_amodal"] > plain["loss_mask_amodal"]
    torch.testing.assert_close(weighted["loss_mask_visible"], plain["loss_mask_visible"])


def _no_layers(head):
    """Make any call of the head's layers() (or its class-selective twin) fail the test."""

    def fail(*args):
        raise AssertionError("layers() called without ROIs")

    head.layers = fail
    head._class_logits = fail
    return head


def _maskiou_head():
    cfg = get_tiny_config(NAMES)
    h = cfg.MODEL.ROI_MULTI_MASK_HEAD
    h.MASKIOU_ON, h.RELATIONS = True, [["containment", "visible", "amodal", 0.5]]
    torch.manual_seed(0)
    return build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))


@pytest.mark.parametrize("build", [_head, _maskiou_head])
def test_zero_rois_in_training_give_every_parameter_a_gradient(build):
    head = build()
    with EventStorage():
        keys = set(head(_features(), [_proposals()]))
        empty = Instances((32, 32))
        empty.proposal_boxes = Boxes(torch.zeros(0, 4))
        empty.gt_classes = torch.zeros(0, dtype=torch.long)
        losses = _no_layers(head)(torch.zeros(0, 8, 7, 7), [empty, empty])
    assert set(losses) == keys  # DDP and the metrics see the same keys every step
    assert all(v.dim() == 0 and v.item() == 0 for v in losses.values())
    head.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    # DDP waits for a gradient of every parameter in every step, zero-ROI steps included
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert missing == [] and all(p.grad.abs().sum() == 0 for p in head.parameters())


@pytest.mark.parametrize("resolution", [7, 5])
def test_zero_rois_at_inference_have_the_shape_of_real_ones(resolution):
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.POOLER_RESOLUTION = resolution
    cfg.MODEL.ROI_MULTI_MASK_HEAD.SHARED_CONVS = 1  # the class-selective path of the conv head
    head = build_multi_mask_head(cfg, ShapeSpec(channels=8, height=resolution, width=resolution))
    head.eval()
    det = Instances((32, 32))
    det.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10]] * 2))
    det.pred_classes = torch.tensor([0, 2])
    none = Instances((32, 32))
    none.pred_boxes = Boxes(torch.zeros(0, 4))
    none.pred_classes = torch.zeros(0, dtype=torch.long)
    x = torch.randn(2, 8, resolution, resolution)
    with torch.no_grad():
        real = head(x, [det])[0].pred_multimasks
        out = _no_layers(head)(x[:0], [none])[0]
    m = real.shape[-1]
    assert m == 2 * resolution  # the config's rule: masks twice POOLER_RESOLUTION
    assert out.pred_multimasks.shape == (0, 2, m, m) and out.pred_masks.shape == (0, 1, m, m)
    # (scripted: tests/test_export.py, test_readme_head.py)


def test_layers_of_another_mask_size_is_a_clear_error():
    head = _head()
    head.class_selective = False  # as for a head that defines its own layers()
    head.layers = lambda x: torch.zeros(len(x), 2, 3, 28, 28)  # 4x upsampling, mask_size not given
    message = r"layers\(\) returned .* \(4, 2, 3, 28, 28\)"
    with EventStorage(), pytest.raises(ValueError, match=message):
        head(_features(), [_proposals()])
