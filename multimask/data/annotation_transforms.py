"""
The geometry of ``multimask`` annotations under detectron2's transforms, batched per image: boxes
in one ``apply_box`` call, the polygon vertices of every mask in one ``apply_coords`` call, RLE and
derived masks decoded on their own boxes and transformed eight per ``apply_segmentation`` call
(one bit of a uint8 plane each), and the boxes detectron2's mapper recomputes after a crop.
``multimask.data.detection_utils`` builds ``Instances`` with these.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ..structures import BitCrop, MultiMasks, PolygonMask, segmentation_to_crop
from ..structures.leaves import Leaf
from ..structures.segmentation import check_polygon_coords

__all__ = ["transform_boxes"]


def transform_boxes(
    annos: Sequence[Dict[str, Any]],
    transforms: Optional[T.TransformList],
    image_size: Tuple[int, int],
) -> np.ndarray:
    """
    The boxes of all annotations in XYXY_ABS, transformed and clipped to the image.

    Args:
        annos: annotations with ``bbox`` and ``bbox_mode``.
        transforms: applied to the boxes; None = none.
        image_size: (H, W) after the transforms.

    Returns:
        ndarray of shape (N, 4), float64.
    """
    boxes = np.asarray([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4)
    modes = {a["bbox_mode"] for a in annos}
    if len(modes) == 1:
        boxes = BoxMode.convert(boxes, modes.pop(), BoxMode.XYXY_ABS)
    elif modes:
        boxes = np.stack(
            [BoxMode.convert(b, a["bbox_mode"], BoxMode.XYXY_ABS) for b, a in zip(boxes, annos)]
        )
    if transforms is not None and len(boxes):
        boxes = transforms.apply_box(boxes)
    h, w = image_size
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes


def _transform_polygons(
    polygons: List[np.ndarray],
    transforms: Optional[T.TransformList],
    original_size: Tuple[int, int],
) -> np.ndarray:
    """
    Check and transform the vertices of many polygons in one call.

    Args:
        polygons: (P_i, 2) vertex arrays.
        transforms: applied to the vertices; None = none.
        original_size: (H0, W0) of the image the vertices are in, for the coordinate limit.

    Returns:
        (sum P_i, 2) float64 vertices. Polygons are not clipped to a crop: the rasteriser clips at
        the image border exactly, so the result equals clipping first.
    """
    # The loaders reject these with the file and ids; dicts from other sources are checked here by
    # the same rule, since pycocotools would exhaust memory on them rather than raise.
    check_polygon_coords(polygons, *original_size)
    coords = np.concatenate(polygons)
    if transforms is not None:
        coords = transforms.apply_coords(coords)
    return np.asarray(coords, dtype=np.float64)


def _zero_padding(transforms: T.TransformList) -> T.TransformList:
    """
    The transforms as applied to instance masks: padding fills 0 (detectron2's ``FixedSizeCrop``
    pads segmentations with 255, the "ignore" label of semantic maps; for a packed instance mask
    that would turn every bit on in the padding).
    """
    out = []
    for t in transforms.transforms:
        if isinstance(t, T.PadTransform) and t.seg_pad_value != 0:
            t = T.PadTransform(t.x0, t.y0, t.x1, t.y1, t.orig_w, t.orig_h, t.pad_value, 0)
        out.append(t)
    return T.TransformList(out)


def _transform_bit_masks(
    jobs: List[Tuple[BitCrop, Any]],
    transforms: Optional[T.TransformList],
    original_size: Tuple[int, int],
    image_size: Tuple[int, int],
) -> List[Tuple[int, int, np.ndarray]]:
    """
    Transform RLE / array / derived masks and keep each on its box only.

    Each mask is decoded on its own box at the original size (``segmentation_to_crop``; a derived
    mask is its exact result, as evaluation computes it), and the masks go through
    ``apply_segmentation`` eight per call, one bit of a uint8 plane each: ``apply_segmentation``
    keeps label values (nearest-neighbour resize, flips, crops; 0 where it pads, see
    ``_zero_padding``), so every bit lands where its pixel lands. Each mask is then cut to its tight
    box plus a zero margin of one pixel (where the image allows), found inside its transformed box,
    so no mask is held at image size.

    Args:
        jobs: (leaf, mask) pairs; each BitCrop leaf gets its window here.
        transforms: applied to the masks; None = none.
        original_size: (H0, W0) of the masks.
        image_size: (H, W) after the transforms.

    Returns:
        (x0, y0, bits) per job, in order, to be packed into the leaves' storage.
    """
    h0, w0 = original_size
    h, w = image_size
    memo: Dict[int, Any] = {}  # operands shared by several derived masks are encoded once
    placed = [segmentation_to_crop(segm, h0, w0, memo) for _, segm in jobs]
    if transforms is None:
        if (h0, w0) != (h, w):
            raise ValueError(f"masks of size {(h0, w0)}, no transforms, but an image of {(h, w)}")
        return [_with_margin(x0, y0, bits, h, w) for x0, y0, bits in placed]
    seg_transforms = _zero_padding(transforms)
    crops: List[Tuple[int, int, np.ndarray]] = []
    for start in range(0, len(placed), 8):
        group = placed[start : start + 8]
        plane = np.zeros((h0, w0), dtype=np.uint8)
        boxes = np.zeros((len(group), 4), dtype=np.float64)
        for bit, (x0, y0, bits) in enumerate(group):
            bh, bw = bits.shape
            plane[y0 : y0 + bh, x0 : x0 + bw] |= bits.view(np.uint8) << bit
            boxes[bit] = (x0, y0, x0 + bw, y0 + bh)
        boxes = transforms.apply_box(boxes)
        plane = seg_transforms.apply_segmentation(plane)
        if plane.shape != (h, w):
            raise ValueError(
                f"the transforms turned a mask of size {(h0, w0)} into {plane.shape}, but the "
                f"image into {(h, w)}"
            )
        for bit, box in enumerate(boxes):
            # 2 px around the transformed box hold every pixel nearest-neighbour sampling can move
            x0, y0 = (int(max(np.floor(v) - 2, 0)) for v in box[:2])
            x1, y1 = int(min(np.ceil(box[2]) + 2, w)), int(min(np.ceil(box[3]) + 2, h))
            bits = (plane[y0:y1, x0:x1] >> bit) & 1 if x1 > x0 and y1 > y0 else np.zeros((0, 0))
            ys, xs = np.flatnonzero(bits.any(axis=1)), np.flatnonzero(bits.any(axis=0))
            if len(ys) == 0:
                crops.append((0, 0, np.zeros((0, 0), dtype=bool)))
                continue
            cy0, cx0 = max(y0 + ys[0] - 1, 0), max(x0 + xs[0] - 1, 0)
            cy1, cx1 = min(y0 + ys[-1] + 2, h), min(x0 + xs[-1] + 2, w)
            crops.append((cx0, cy0, bits[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(bool)))
    return crops


def _with_margin(x0: int, y0: int, bits: np.ndarray, h: int, w: int) -> Tuple[int, int, np.ndarray]:
    """A tight crop with a zero margin of one pixel where the (h, w) image allows."""
    if bits.size == 0:
        return 0, 0, np.zeros((0, 0), dtype=bool)
    bh, bw = bits.shape
    top, left = min(y0, 1), min(x0, 1)
    bottom, right = min(h - y0 - bh, 1), min(w - x0 - bw, 1)
    return x0 - left, y0 - top, np.pad(bits, ((top, bottom), (left, right)))


def _clip_window(transforms: Optional[T.TransformList], image_size: Tuple[int, int]) -> np.ndarray:
    """
    The (x0, y0, x1, y1) window, in output coordinates, that detectron2 clips polygons to: each
    ``CropTransform.apply_polygons`` intersects the polygons with its crop window. Clipping commutes
    with the axis-aligned transforms around it (resize, flip, pad), so every crop's window is
    carried to the output and the windows are intersected, with the image.
    """
    h, w = image_size
    window = np.array([0.0, 0.0, w, h])
    steps = [] if transforms is None else transforms.transforms
    for k, t in enumerate(steps):
        if isinstance(t, T.CropTransform):
            crop = np.array([[t.x0, t.y0, t.x0 + t.w, t.y0 + t.h]], dtype=np.float64)
            crop = T.TransformList(steps[k:]).apply_box(crop)[0]
            window = np.concatenate(
                [np.maximum(window[:2], crop[:2]), np.minimum(window[2:], crop[2:])]
            )
    return window


def _polygon_window_extent(v: np.ndarray, window: np.ndarray) -> Optional[np.ndarray]:
    """
    (x0, y0, x1, y1) of the part of a polygon inside a window (None when they do not meet), what shapely's intersection
    gives detectron2 for a simple polygon: the extent of that region's vertices, which are the
    polygon's vertices inside the window, the window's corners inside the polygon (even-odd) and
    the crossings of the polygon's edges with the window's sides.

    Args:
        v: (P, 2) vertices of one polygon.
        window: (x0, y0, x1, y1).
    """
    x0, y0, x1, y1 = window
    if x1 <= x0 or y1 <= y0:
        return None
    inside = (v[:, 0] >= x0) & (v[:, 0] <= x1) & (v[:, 1] >= y0) & (v[:, 1] <= y1)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    points = [v[inside], corners[_inside_polygon(corners, v)]]
    a, d = v, np.roll(v, -1, axis=0) - v
    for axis, lines, (lo, hi) in ((0, (x0, x1), (y0, y1)), (1, (y0, y1), (x0, x1))):
        other = 1 - axis
        for c in lines:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (c - a[:, axis]) / d[:, axis]
            hit = (d[:, axis] != 0) & (t >= 0) & (t <= 1)
            q = a[hit, other] + t[hit] * d[hit, other]
            q = q[(q >= lo) & (q <= hi)]
            crossing = np.empty((len(q), 2))
            crossing[:, axis], crossing[:, other] = c, q
            points.append(crossing)
    pts = np.concatenate(points)
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)]) if len(pts) else None


def _inside_polygon(points: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(Q,) bool: which points lie inside the polygon with vertices `v` (even-odd rule)."""
    x, y = points[:, :1], points[:, 1:]
    xa, ya = v[:, 0], v[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    straddles = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = xa + (y - ya) * (xb - xa) / (yb - ya)
    return (straddles & (x < cross_x)).sum(axis=1) % 2 == 1


def _recomputed_boxes(
    multimask: MultiMasks,
    leaves: List[List[Leaf]],
    annotated: np.ndarray,
    primary: int,
    window: np.ndarray,
) -> np.ndarray:
    """
    The boxes detectron2's mapper recomputes after a crop (``gt_masks.get_bounding_boxes()``):
    of each instance's primary mask as cropped, polygons clipped to the crop window (their extent,
    as ``PolygonMasks``), bits tight (as ``BitMasks``). An instance whose primary mask is not
    annotated gets the box of the union of its annotated masks, the loaders' rule for its box.

    Returns:
        ndarray of shape (N, 4), XYXY; empty boxes for instances left without pixels.
    """
    n, k = annotated.shape
    columns = [primary] if annotated[:, primary].all() else range(k)
    per_mask = np.zeros((n, k, 4))
    for j in columns:
        per_mask[:, j] = multimask.get_bounding_boxes([multimask.mask_names[j]]).tensor.numpy()
        for i in range(n):
            if isinstance(leaves[i][j], PolygonMask):
                polygons = [q.reshape(-1, 2) for q in leaves[i][j].polygons()]
                extents = [_polygon_window_extent(q, window) for q in polygons]
                per_mask[i, j] = _union_box([e for e in extents if e is not None])
    boxes = per_mask[:, primary].copy()
    for i in np.flatnonzero(~annotated[:, primary]):
        nonempty = [
            b for j, b in enumerate(per_mask[i]) if annotated[i, j] and (b[2:] > b[:2]).all()
        ]
        boxes[i] = _union_box(nonempty)
    return boxes


def _union_box(boxes: List[np.ndarray]) -> np.ndarray:
    """The (4,) XYXY box holding every box of `boxes`; all zeros (empty) when there is none."""
    if not boxes:
        return np.zeros(4)
    return np.concatenate([np.min(boxes, axis=0)[:2], np.max(boxes, axis=0)[2:]])
