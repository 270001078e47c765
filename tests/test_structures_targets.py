"""
The M x M targets of derived masks equal the targets of their exact full-resolution results.

The reference of every test is built without multimask: the pixels of a mask by detectron2's
``polygons_to_bitmask`` / pycocotools' ``decode`` and numpy's set operations, a transform by
detectron2's ``apply_segmentation``, and the target of a bit mask by detectron2's ``ROIAlign``
(aligned, 2 x 2 samples per pixel, >= 0.5: the rule multimask states for every bit mask).
"""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.layers import ROIAlign
from detectron2.structures import PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

from multimask.data.datasets.mask_fields import MaskFields
from multimask.data.detection_utils import multimask_annotations_to_instances
from multimask.structures import derived_mask, segmentation_to_crop

H, W = 120, 160
M = 28


def _star(rng, cx, cy, r, n=12):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.6 * r, r, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel()


def _own_rle(polygons, h=H, w=W):
    """A polygon mask given as its RLE, as COCO's annToRLE makes it."""
    rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in polygons], h, w))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _bits(segm, h=H, w=W):
    """Pixels of polygons / RLE / derived masks, by detectron2, pycocotools and numpy only."""
    if isinstance(segm, dict) and "op" in segm:
        a, *rest = (_bits(x, h, w) for x in segm["operands"])
        for b in rest:  # "|" and "&" take any number of operands
            a = {"-": a & ~b, "&": a & b, "|": a | b}[segm["op"]]
        return a
    if isinstance(segm, dict):
        return mask_util.decode(segm).astype(bool)
    return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], h, w)


def _reference_targets(full, boxes):
    """detectron2's ROIAlign of one full-image bit mask on every ROI, (R, M, M) bool."""
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    align = ROIAlign((M, M), 1.0, 2, aligned=True)
    return align(torch.from_numpy(full)[None, None].float(), rois)[:, 0] >= 0.5


def _jittered(box, rng, count, size=(H, W)):
    """`count` ROIs around an XYXY box, each side moved by up to 10% of the box size."""
    box = np.asarray(box, dtype=np.float64)
    wh = np.tile(box[2:] - box[:2], 2)
    out = box + wh * rng.uniform(-0.1, 0.1, (count, 4))
    out[:, 0::2] = out[:, 0::2].clip(0, size[1])
    out[:, 1::2] = out[:, 1::2].clip(0, size[0])
    return torch.as_tensor(out, dtype=torch.float32)


def _anno(box, multimask):
    return {"bbox": list(box), "bbox_mode": 0, "category_id": 0, "multimask": multimask}


def _iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


TRANSFORMS = {
    "none": lambda: None,
    "flip": lambda: T.TransformList([T.HFlipTransform(W)]),
    "resize_flip": lambda: T.TransformList(
        [T.ResizeTransform(H, W, 193, 257), T.HFlipTransform(257)]
    ),
    "crop": lambda: T.TransformList([T.CropTransform(13, 7, 120, 100)]),
}


def _size_after(transforms):
    if transforms is None:
        return (H, W)
    return transforms.apply_image(np.zeros((H, W), np.uint8)).shape[:2]


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_polygon_minus_its_own_rle_gives_empty_targets(transform):
    """The issue's measure: rasterising each operand on the ROI left a ring in 382 of 400 ROIs."""
    rng = np.random.default_rng(0)
    annos = []
    for _ in range(8):
        cx, cy, r = rng.uniform(30, W - 30), rng.uniform(25, H - 25), rng.uniform(8, 24)
        polygons = [_star(rng, cx, cy, r).tolist()]
        rle = _own_rle(polygons)
        masks = {
            "amodal": polygons,
            "visible": rle,
            "occluded": derived_mask("-", polygons, rle),
            "reverse": derived_mask("-", rle, polygons),
            "both": derived_mask("&", polygons, rle),
        }
        annos.append(_anno([cx - r, cy - r, cx + r, cy + r], masks))
    transforms = TRANSFORMS[transform]()
    size = _size_after(transforms)
    names = ("amodal", "visible", "occluded", "reverse", "both")
    inst = multimask_annotations_to_instances(
        annos, size, names, transforms=transforms, original_size=(H, W)
    )
    mm = inst.gt_multimask
    idx = torch.as_tensor(rng.integers(0, len(mm), 400))
    boxes = torch.cat([_jittered(inst.gt_boxes.tensor[i].numpy(), rng, 1, size) for i in idx])
    targets = mm[idx].crop_and_resize(boxes, M)
    assert targets[:, 0].any(dim=(1, 2)).sum() > 300  # the ROIs do hold the objects
    assert not targets[:, 2:4].any(), targets[:, 2:4].flatten(1).any(1).sum()
    assert mm.annotated[:, 2:4].all()  # empty, not "not annotated"
    # a & a is a: its target is exactly the RLE mask's target
    assert torch.equal(targets[:, 4], targets[:, 1])
    assert not mm.tensor[:, 2:4].any()


def _cocoa_like(rng, num=12):
    """Amodal polygons, visible RLE (amodal minus the occluding region, as COCOA computes it),
    objects hidden by 0.5-5% (thin occluded parts) to 30%."""
    annos = []
    for i in range(num):
        cx, cy, r = rng.uniform(40, W - 40), rng.uniform(35, H - 35), rng.uniform(14, 30)
        amodal = [_star(rng, cx, cy, r).tolist()]
        amodal_bits = _bits(amodal)
        hidden = rng.uniform(0.005, 0.05) if i % 3 else rng.uniform(0.1, 0.3)
        # an occluder edge cutting the object: a half plane at the quantile giving that share
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.nonzero(amodal_bits)
        proj = (xs + 0.5) * np.cos(angle) + (ys + 0.5) * np.sin(angle)
        cut = np.quantile(proj, 1 - hidden)
        gy, gx = np.mgrid[:H, :W]
        occluder = (gx + 0.5) * np.cos(angle) + (gy + 0.5) * np.sin(angle) > cut
        visible_bits = amodal_bits & ~occluder
        visible = mask_util.encode(np.asfortranarray(visible_bits.astype(np.uint8)))
        occluded = derived_mask("-", amodal, visible)
        masks = {"amodal": amodal, "visible": visible, "occluded": occluded}
        annos.append(_anno([cx - r, cy - r, cx + r, cy + r], masks))
    return annos


@pytest.mark.parametrize("transform", ["none", "resize_flip"])
def test_mixed_form_difference_agrees_with_the_exact_difference(transform):
    """COCOA / D2SA: polygon amodal - RLE visible. Its targets are the targets of the exact
    difference given as an RLE (IoU >= 0.99 over 480 jittered ROIs; here they are equal), where
    rasterising each operand at 28 x 28 and subtracting does not reach that."""
    rng = np.random.default_rng(1)
    annos = _cocoa_like(rng)
    transforms = TRANSFORMS[transform]()
    size = _size_after(transforms)
    # the exact difference as a mask of its own, given as an RLE, beside the derived mask
    for a in annos:
        exact = _bits(a["multimask"]["occluded"])
        a["multimask"]["exact"] = mask_util.encode(np.asfortranarray(exact.astype(np.uint8)))
    names = ("amodal", "visible", "occluded", "exact")
    inst = multimask_annotations_to_instances(
        annos, size, names, transforms=transforms, original_size=(H, W)
    )
    mm = inst.gt_multimask
    per = 40
    idx = torch.arange(len(annos)).repeat_interleave(per)
    boxes = torch.cat([_jittered(b.numpy(), rng, per, size) for b in inst.gt_boxes.tensor])
    got = mm[idx].crop_and_resize(boxes, M)

    reference, per_operand = [], []
    for i, a in enumerate(annos):
        exact = _bits(a["multimask"]["occluded"]).astype(np.uint8)
        visible = _bits(a["multimask"]["visible"]).astype(np.uint8)
        if transforms is not None:
            exact = transforms.apply_segmentation(exact)
            visible = transforms.apply_segmentation(visible)
        rois = boxes[i * per : (i + 1) * per]
        reference.append(_reference_targets(exact.astype(bool), rois))
        # what the previous design computed: each operand's own target, then the difference
        amodal = [transforms.apply_coords(np.asarray(p).reshape(-1, 2)).ravel() if transforms
                  else np.asarray(p) for p in a["multimask"]["amodal"]]  # fmt: skip
        amodal_t = PolygonMasks([amodal] * per).crop_and_resize(rois, M)
        per_operand.append(amodal_t & ~_reference_targets(visible.astype(bool), rois))
    reference, per_operand = torch.cat(reference), torch.cat(per_operand)
    assert reference.any(dim=(1, 2)).sum() > 0.8 * len(reference)
    occluded, exact_rle = got[:, 2], got[:, 3]
    assert torch.equal(occluded, exact_rle)  # the exact result's own target, by any path
    assert _iou(occluded, reference) >= 0.99, _iou(occluded, reference)
    assert torch.equal(occluded, reference)
    # the data hits the edge case: operands rasterised apart draw false rings along the edges
    assert _iou(per_operand, reference) < 0.97, _iou(per_operand, reference)


def _kins_like(rng, num=6):
    """Polygon amodal and polygon visible (KINS): visible is amodal cut by a polygon."""
    annos = []
    for i in range(num):
        cx, cy, r = rng.uniform(35, W - 35), rng.uniform(30, H - 30), rng.uniform(15, 28)
        amodal = [_star(rng, cx, cy, r, 16).tolist()]
        visible = [_star(rng, cx + 0.4 * r, cy, 0.8 * r, 10).tolist()]
        occluded = derived_mask("-", amodal, visible)
        masks = {"amodal": amodal, "visible": visible, "occluded": occluded}
        annos.append(_anno([cx - r, cy - r, cx + r, cy + r], masks))
        annos[-1]["order"] = i
    return annos


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_polygon_operands_and_occluders_agree_with_the_exact_masks(mask_format):
    """KINS: polygon - polygon, and occluders(visible) (the union of the visible masks in front,
    cropped to the box by a box polygon): two levels of set operations on polygons."""
    rng = np.random.default_rng(2)
    annos = _kins_like(rng)
    fields = MaskFields({"amodal": "a", "visible": "v", "occluded": "amodal - visible",
                         "occluder": "occluders(visible)"})  # fmt: skip
    objects = [{"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0],
                         a["bbox"][3] - a["bbox"][1]], "multimask": dict(a["multimask"]),
                "order": a["order"]} for a in annos]  # fmt: skip
    fields.resolve_occluders(objects, "order")
    for a, o in zip(annos, objects):
        a["multimask"] = o["multimask"]
    names = ("amodal", "visible", "occluded", "occluder")
    inst = multimask_annotations_to_instances(annos, (H, W), names, mask_format=mask_format)
    mm = inst.gt_multimask
    per = 30
    idx = torch.arange(len(annos)).repeat_interleave(per)
    boxes = torch.cat([_jittered(b.numpy(), rng, per) for b in inst.gt_boxes.tensor])
    got = mm[idx].crop_and_resize(boxes, M)
    assert any(_bits(a["multimask"]["occluder"]).any() for a in annos)
    for j in (2, 3):
        reference = torch.cat(
            [_reference_targets(_bits(a["multimask"][names[j]]), boxes[i * per : (i + 1) * per])
             for i, a in enumerate(annos)]  # fmt: skip
        )
        assert reference.any(dim=(1, 2)).sum() >= 0.4 * len(reference)
        assert torch.equal(got[:, j], reference), (names[j], _iou(got[:, j], reference))
    full = np.stack([[_bits(a["multimask"][n]) for n in names] for a in annos])
    np.testing.assert_array_equal(mm.tensor.numpy(), full)


def test_derived_masks_are_held_on_their_boxes():
    """12 KINS-size objects at 2000 x 604: a derived mask holds the bits of its exact result's box
    (plus a margin of one pixel), never an image-size buffer."""
    rng = np.random.default_rng(3)
    h, w = 604, 2000
    annos, area = [], 0
    for _ in range(12):
        cx, cy = rng.uniform(100, w - 100), rng.uniform(100, h - 100)
        amodal = [_star(rng, cx, cy, 90, 40).tolist()]
        visible = [_star(rng, cx, cy + 10, 60).tolist()]
        occluded = derived_mask("-", amodal, visible)
        x, y, bw, bh = mask_util.toBbox(
            mask_util.encode(np.asfortranarray(_bits(occluded, h, w).astype(np.uint8)))
        )
        area += (bh + 2) * (bw + 2)
        masks = {"amodal": amodal, "visible": visible, "occluded": occluded}
        annos.append(_anno([cx - 90, cy - 90, cx + 90, cy + 90], masks))
    inst = multimask_annotations_to_instances(annos, (h, w), ("amodal", "visible", "occluded"))
    flat = inst.gt_multimask._storage.flat
    assert 0 < flat.numel() <= area, (flat.numel(), area)


def test_segmentation_to_crop_equals_pycocotools_decode():
    """The box-only decoding of an RLE: masks touching every border, one pixel, full, empty."""
    rng = np.random.default_rng(4)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = np.zeros((h, w), dtype=bool)
        if t % 6:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
            mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6
        if t % 10 == 3:
            mask[:] = True
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        x0, y0, bits = segmentation_to_crop(rle, h, w)
        full = np.zeros((h, w), dtype=bool)
        full[y0 : y0 + bits.shape[0], x0 : x0 + bits.shape[1]] = bits
        np.testing.assert_array_equal(full, mask_util.decode(rle).astype(bool))
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert (x0, y0) == (xs.min(), ys.min())
            assert bits.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        else:
            assert bits.size == 0
    with pytest.raises(ValueError, match="differs from image size"):
        segmentation_to_crop(rle, h + 1, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_targets_on_cuda_equal_the_cpu_targets():
    rng = np.random.default_rng(5)
    names = ("amodal", "visible", "occluded")
    inst = multimask_annotations_to_instances(_cocoa_like(rng), (H, W), names)
    mm = inst.gt_multimask
    idx = torch.arange(len(mm)).repeat_interleave(8)
    boxes = torch.cat([_jittered(b.numpy(), rng, 8) for b in inst.gt_boxes.tensor])
    cpu = mm[idx].crop_and_resize(boxes, M)
    cuda = mm.to("cuda")[idx.cuda()].crop_and_resize(boxes.cuda(), M)
    assert cuda.device.type == "cuda"
    assert (cuda.cpu() != cpu).float().mean() < 1e-3  # float rounding at ties only
