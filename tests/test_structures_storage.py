"""MultiMasks' storage variants: devices, full-image views, ROI targets, padding, compactness."""

import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.layers import ROIAlign
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask, rasterize_polygons_within_box
from detectron2.utils.events import EventStorage

from multimask.data.detection_utils import multimask_annotations_to_instances
from multimask.structures import MultiMasks, NamedMasks, derived_mask, segmentation_to_bitmask

H, W = 48, 64
NAMES = ("amodal", "visible", "occluded")


def _polygon(rng, cx, cy, r, n=9):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.5 * r, r, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel().tolist()


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _annotations(variant, num=3, seed=0):
    """Annotations whose masks are stored as `variant` by the mapper."""
    rng = np.random.default_rng(seed)
    annos = []
    for i in range(num):
        cx, cy = rng.uniform(15, W - 15), rng.uniform(12, H - 12)
        amodal = [_polygon(rng, cx, cy, 11)]
        visible = [_polygon(rng, cx + 3, cy, 7)]
        if variant in ("rle", "mixed"):
            visible = _rle(segmentation_to_bitmask(visible, H, W))
        if variant == "rle":
            amodal = _rle(segmentation_to_bitmask(amodal, H, W))
        occluded = derived_mask("-", amodal, visible) if variant == "derived" else None
        if variant in ("mixed", "rle"):
            occluded = derived_mask("-", amodal, visible)
        multimask = {"amodal": amodal, "visible": visible, "occluded": occluded}
        box = [cx - 12, cy - 12, cx + 12, cy + 12]
        annos.append({"bbox": box, "bbox_mode": 0, "category_id": i % 2, "multimask": multimask})
    return annos


VARIANTS = ["polygons", "rle", "mixed", "derived", "empty"]


def _instances(variant, transforms=None, image_size=(H, W), mask_format="polygon"):
    annos = [] if variant == "empty" else _annotations(variant)
    return multimask_annotations_to_instances(
        annos,
        image_size,
        NAMES,
        transforms=transforms,
        original_size=(H, W),
        mask_format=mask_format,
    )


def _tensors(obj, seen=None):
    """Every tensor reachable from a structure's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    found = []
    for v in getattr(obj, "__dict__", {}).values():
        if isinstance(v, (list, tuple)):
            for x in v:
                found += _tensors(x, seen)
        else:
            found += _tensors(v, seen)
    return found


@pytest.mark.parametrize("variant", VARIANTS + ["dense"])
def test_every_tensor_follows_to(variant):
    if variant == "dense":
        mm = MultiMasks(torch.rand(3, 3, H, W) > 0.5, NAMES)
        mm.tensor  # noqa: B018 -- the full-image cache must move as well
    else:
        mm = _instances(variant).gt_multimask
    views = [mm, mm[torch.tensor([1, 1, 0])[: len(mm)]], mm.named("visible")]
    for structure in views:
        tensors = _tensors(structure)
        assert tensors, "a structure without tensors cannot be moved"
        moved = structure.to("meta")
        assert moved.device == torch.device("meta")
        for t in _tensors(moved):
            assert t.device == torch.device("meta"), (variant, t.shape)
        # cpu -> cpu is the identity
        same = structure.to("cpu")
        assert torch.equal(same.tensor, structure.tensor)
    # Instances.to moves gt_multimask and gt_masks too (the path of detectron2's trainer)
    if variant != "dense":
        inst = _instances(variant).to("meta")
        for name in ("gt_multimask", "gt_masks"):
            if not isinstance(inst.get(name), PolygonMasks):
                assert all(t.device.type == "meta" for t in _tensors(inst.get(name)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_image_masks_equal_the_annotations(variant):
    annos = [] if variant == "empty" else _annotations(variant)
    mm = _instances(variant).gt_multimask
    assert mm.tensor.shape == (len(annos), 3, H, W)
    for i, a in enumerate(annos):
        for j, name in enumerate(NAMES):
            segm = a["multimask"][name]
            expected = (
                np.zeros((H, W), bool) if segm is None else segmentation_to_bitmask(segm, H, W)
            )
            np.testing.assert_array_equal(mm.tensor[i, j].numpy(), expected)
            assert bool(mm.annotated[i, j]) == (segm is not None)


def _exact_bits(segm):
    """A mask's pixels by detectron2 / pycocotools and numpy's set operations (not multimask's)."""
    if isinstance(segm, list):
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], H, W)
    if "op" in segm:
        a, b = (_exact_bits(x) for x in segm["operands"])
        return {"-": a & ~b, "&": a & b, "|": a | b}[segm["op"]]
    return mask_util.decode(segm).astype(bool)


@pytest.mark.parametrize("variant", VARIANTS)
def test_roi_targets_equal_detectron2_per_storage(variant):
    """Polygons: PolygonMasks' targets; RLE: ROIAlign's (2 x 2 samples), close to BitMasks';
    derived: the targets of the exact result (computed at image size) as a single bit mask."""
    annos = [] if variant == "empty" else _annotations(variant)
    mm = _instances(variant).gt_multimask
    rng = np.random.default_rng(1)
    rows = torch.as_tensor(rng.integers(0, max(len(mm), 1), 12 if len(mm) else 0))
    xy = rng.uniform(0, [W - 20, H - 20], (len(rows), 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + rng.uniform(6, 30, (len(rows), 2))], 1))
    boxes = boxes.float()
    got = mm[rows].crop_and_resize(boxes, 14)
    assert got.shape == (len(rows), 3, 14, 14) and got.dtype == torch.bool
    align = ROIAlign((14, 14), 1.0, 2, aligned=True)
    agree = []  # bits: BitMasks' adaptive ROIAlign sampling vs our 2 x 2 samples per pixel
    for r, s in enumerate(rows.tolist()):
        for j, name in enumerate(NAMES):
            segm = annos[s]["multimask"][name]
            if segm is None:
                assert not got[r, j].any()
            elif isinstance(segm, list):
                polys = [np.asarray(p, dtype=np.float64) for p in segm]
                expected = rasterize_polygons_within_box(polys, boxes[r].numpy(), 14)
                np.testing.assert_array_equal(got[r, j].numpy(), expected)
            else:
                full = torch.from_numpy(_exact_bits(segm))[None]
                roi = torch.cat([torch.zeros(1), boxes[r]])[None]
                expected = align(full[None].float(), roi)[0, 0] >= 0.5
                np.testing.assert_array_equal(got[r, j].numpy(), expected.numpy())
                bitmasks = BitMasks(full).crop_and_resize(boxes[r : r + 1], 14)[0]
                agree.append((got[r, j] == bitmasks).float().mean().item())
    assert not agree or np.mean(agree) >= 0.97, np.mean(agree)


def test_polygon_targets_agree_with_pycocotools_on_random_polygons():
    """The rule: pycocotools' rasteriser on the polygon moved and scaled into the ROI (the same as
    detectron2's PolygonMasks); compared with PolygonMasks on random polygons and ROIs."""
    rng = np.random.default_rng(3)
    polygons = [[_polygon(rng, rng.uniform(10, 50), rng.uniform(10, 40), 14, n=int(rng.integers(3, 40)))]
                for _ in range(40)]  # fmt: skip
    mm = MultiMasks(None, ["a"], polygons=[[p] for p in polygons], image_size=(H, W))
    xy = rng.uniform(-5, [W - 10, H - 10], (40, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + rng.uniform(0.5, 40, (40, 2))], 1)).float()
    got = mm.crop_and_resize(boxes, 28)[:, 0]
    reference = PolygonMasks(polygons).crop_and_resize(boxes, 28)
    agreement = (got == reference).float().mean().item()
    assert agreement >= 0.97 and torch.equal(got, reference), agreement


def test_named_masks_train_a_stock_mask_rcnn_head():
    """gt_masks as NamedMasks (primary mask not all polygons) goes through detectron2's loss."""
    inst = _instances("rle")
    assert isinstance(inst.gt_masks, NamedMasks)
    proposals = inst[torch.tensor([0, 2, 2, 1])]  # as proposal matching indexes gt fields
    proposals.proposal_boxes = Boxes(proposals.gt_boxes.tensor + 1.5)
    logits = torch.zeros((len(proposals), 2, 14, 14), requires_grad=True)
    with EventStorage(0):
        loss = mask_rcnn_loss(logits, [proposals])
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    expected = inst.gt_multimask[torch.tensor([0, 2, 2, 1])].crop_and_resize(
        proposals.proposal_boxes.tensor, 14
    )[:, 0]
    assert torch.equal(
        proposals.gt_masks.crop_and_resize(proposals.proposal_boxes.tensor, 14), expected
    )


@pytest.mark.parametrize("variant", ["polygons", "rle", "mixed", "derived"])
def test_lsj_padding_leaves_masks_empty(variant):
    """detectron2's LSJ (ResizeScale + FixedSizeCrop, which pads segmentations with 255)."""
    aug = T.AugmentationList([T.ResizeScale(0.5, 0.5, 96, 96), T.FixedSizeCrop((96, 96), pad=True)])
    image = np.zeros((H, W, 3), dtype=np.uint8)
    aug_input = T.AugInput(image)
    transforms = aug(aug_input)
    assert any(isinstance(t, T.PadTransform) for t in transforms.transforms)
    size = aug_input.image.shape[:2]
    inst = _instances(variant, transforms, size)
    masks = inst.gt_multimask.tensor
    content_h, content_w = round(H * 96 / 64 * 0.5), round(W * 96 / 64 * 0.5)
    assert masks.shape[-2:] == (96, 96) and masks.any()
    assert not masks[:, :, content_h + 1 :].any() and not masks[:, :, :, content_w + 1 :].any()
    rois = torch.tensor([[0.0, 0.0, 96.0, 96.0]] * len(inst))
    crops = inst.gt_multimask.crop_and_resize(rois, 32)
    assert not crops[:, :, 17:].any() and not crops[:, :, :, 17:].any()


def test_pad_transform_pads_every_mask_with_zero():
    pad = T.TransformList([T.PadTransform(0, 0, 30, 20, W, H, 0, seg_pad_value=255)])
    inst = _instances("mixed", pad, (H + 20, W + 30))
    masks = inst.gt_multimask.tensor
    assert masks[:, :, :H, :W].any() and not masks[:, :, H:].any() and not masks[:, :, :, W:].any()


def test_kins_size_ground_truth_is_compact():
    """12 objects on a 2000 x 604 image, K=3 with a derived mask (held as the bits of its exact
    result on its box): nothing held at image size."""
    rng = np.random.default_rng(0)
    h, w = 604, 2000
    annos = []
    for _ in range(12):
        cx, cy = rng.uniform(100, w - 100), rng.uniform(100, h - 100)
        amodal, visible = [_polygon(rng, cx, cy, 90, 40)], [_polygon(rng, cx, cy + 10, 60, 30)]
        annos.append({"bbox": [cx - 90, cy - 90, cx + 90, cy + 90], "bbox_mode": 0, "category_id": 0,
                      "multimask": {"amodal": amodal, "visible": visible,
                                    "occluded": derived_mask("-", amodal, visible)}})  # fmt: skip
    for fmt in ("polygon", "bitmask"):
        inst = multimask_annotations_to_instances(annos, (h, w), NAMES, mask_format=fmt)
        held = len(pickle.dumps(inst))
        assert held <= 2 * 2**20, (fmt, held)
        if fmt == "polygon":  # the polygons stay polygons: the bits are the derived masks' only
            bits = inst.gt_multimask._storage.flat.numel()
            assert 0 < bits < 12 * 190 * 190 and held - bits <= 64 * 1024, (held, bits)
        assert all(t.numel() < h * w for t in _tensors(inst.gt_multimask))
        # proposal matching (one row per sampled proposal) copies no mask
        sampled = inst.gt_multimask[torch.randint(0, 12, (512,))]
        assert sampled._storage is inst.gt_multimask._storage


def test_cat_keeps_shared_operands_and_moves_bits():
    a, b = _instances("mixed").gt_multimask, _instances("rle").gt_multimask
    merged = MultiMasks.cat([a[torch.tensor([2, 0])], b])
    assert torch.equal(merged.tensor[:2], a.tensor[torch.tensor([2, 0])])
    assert torch.equal(merged.tensor[2:], b.tensor)
    inst = Instances.cat([_instances("rle"), _instances("rle")])
    assert len(inst.gt_multimask) == 6 and isinstance(inst.gt_masks, NamedMasks)


def test_segmentation_to_rle_memo_encodes_shared_operands_once(monkeypatch):
    from multimask.structures import segmentation, segmentation_to_rle

    (anno,) = _annotations("derived", num=1)
    masks = anno["multimask"]
    calls = []
    original = segmentation.mask_util.frPyObjects
    monkeypatch.setattr(
        segmentation.mask_util, "frPyObjects", lambda *a: calls.append(1) or original(*a)
    )
    memo = {}
    rles = {n: segmentation_to_rle(masks[n], H, W, memo) for n in NAMES}
    # amodal and visible once each, plus the complement of visible (occluded = amodal & ~visible);
    # without the memo the operands would be encoded again (5 calls)
    assert len(calls) == 3
    monkeypatch.undo()
    for n in NAMES:
        assert mask_util.decode(rles[n]).astype(bool).tolist() == segmentation_to_bitmask(
            masks[n], H, W
        ).tolist()
