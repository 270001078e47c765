"""
Per-mask annotation transforms and the conversion of ``multimask`` annotations into ``Instances``.

This is the hot path of data loading, so the work is batched per image rather than per mask: the
boxes of all instances are transformed in one call, the polygon vertices of every mask of every
instance in one ``apply_coords`` call, RLE masks eight per ``apply_segmentation`` call. Nothing is
held at image size: polygons stay polygons (MASK_FORMAT "polygon", rasterised per ROI by the loss)
or are rasterised on their own boxes (MASK_FORMAT "bitmask"), RLE masks are kept on their boxes, and
a derived mask (``amodal - visible``) is computed exactly on the original image, as evaluation
computes it (``segmentation_to_rle``), then transformed and kept on its box like an RLE mask.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks

from ..structures import (
    BitCrop,
    MaskStorage,
    MultiMasks,
    PolygonMask,
    is_derived,
    segmentation_to_crop,
)
from ..structures.leaves import Leaf, rasterize_polygons_in_boxes
from ..structures.segmentation import check_polygon_coords, is_valid_polygon

__all__ = [
    "check_mask_names",
    "check_same_classes",
    "multimask_annotations_to_instances",
    "transform_boxes",
]

def check_mask_names(dataset_names: Sequence[str], mask_names: Sequence[str]) -> None:
    """
    Check that every dataset provides every mask name the config asks for.

    Names a dataset provides beyond those are ignored. Call it at start-up, before training.

    Args:
        dataset_names: registered dataset names (e.g. cfg.DATASETS.TRAIN).
        mask_names: cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES.

    Raises:
        KeyError: a dataset is not registered.
        ValueError: naming the dataset, the missing names and the names the dataset provides.
    """
    for name in dataset_names:
        if name not in DatasetCatalog:
            known = [n for n in DatasetCatalog.list() if MetadataCatalog.get(n).get("mask_names")]
            raise KeyError(
                f"Dataset '{name}' is not registered. Registered multi-mask datasets: "
                f"{sorted(known)}"
            )
        provided = MetadataCatalog.get(name).get("mask_names")
        if provided is None:
            raise ValueError(
                f"Dataset '{name}' has no 'mask_names' metadata: it is not a multi-mask dataset. "
                "Register it with multimask.data.register_multimask_coco_instances (or another "
                "multimask loader)."
            )
        missing = [m for m in mask_names if m not in provided]
        if missing:
            raise ValueError(
                f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES asks for {missing}, which dataset '{name}' "
                f"does not provide; it provides {list(provided)}."
            )


def check_same_classes(dataset_names: Sequence[str]) -> None:
    """
    Check that the datasets of one run (train and test) have the same classes in the same order:
    class ids that mean other classes in another split train or score silently wrong.

    A LabelMe folder registered without ``thing_classes`` takes its classes from the labels it
    finds (a test split lacking a class shifts every id after it); such a folder is loaded here to
    know them. Datasets whose classes are known only once loaded otherwise (COCO-style JSON, which
    declares its categories) are compared when known. Call it at start-up, before training.

    Args:
        dataset_names: registered dataset names (e.g. cfg.DATASETS.TRAIN + cfg.DATASETS.TEST).

    Raises:
        ValueError: naming the two datasets and how their classes differ.
    """
    first: Optional[Tuple[str, List[str]]] = None
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes") is None and meta.get("json_dir") is not None:
            DatasetCatalog.get(name)  # a LabelMe folder: loading sets the classes of its labels
        classes = meta.get("thing_classes")
        if classes is None:
            continue
        if first is None:
            first = (name, list(classes))
            continue
        if list(classes) != first[1]:
            ref, theirs = first[1], list(classes)
            missing = [c for c in ref if c not in theirs]
            extra = [c for c in theirs if c not in ref]
            how = f"missing {missing}, " if missing else ""
            how += f"extra {extra}, " if extra else ""
            raise ValueError(
                f"Datasets '{first[0]}' and '{name}' have different classes ({how}'{first[0]}': "
                f"{ref}, '{name}': {theirs}): a class id would mean another class in one of them. "
                "A LabelMe folder takes its classes from its labels; give every split the same "
                "list, register_multimask_labelme_instances(..., metadata={'thing_classes': "
                f"{ref}}})."
            )


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


def _to_bits(leaf: Leaf, bits_of: Dict[int, BitCrop]) -> Leaf:
    """`leaf` as its BitCrop if it is a polygon mask (``INPUT.MASK_FORMAT "bitmask"``)."""
    return bits_of[id(leaf)] if isinstance(leaf, PolygonMask) else leaf


def _operand_polygons(segm: Any) -> List[np.ndarray]:
    """The (P, 2) vertices of every polygon among a derived mask's operands, at any depth."""
    if is_derived(segm):
        return [v for x in segm["operands"] for v in _operand_polygons(x)]
    if isinstance(segm, list):
        valid = [p for p in segm if is_valid_polygon(p)]
        return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in valid]
    return []


def multimask_annotations_to_instances(
    annos: Sequence[Dict[str, Any]],
    image_size: Tuple[int, int],
    mask_names: Sequence[str],
    primary: Optional[str] = None,
    transforms: Optional[T.TransformList] = None,
    original_size: Optional[Tuple[int, int]] = None,
    recompute_boxes: bool = False,
    mask_format: str = "polygon",
) -> Instances:
    """
    Transform the annotations of one image and build its training targets.

    Instances whose box is empty after the transforms are dropped, with all their masks. Nothing is
    rasterised at image size: polygons stay polygons (or, with mask_format "bitmask", are rasterised
    on their boxes), RLE masks are kept on their boxes, and a derived mask (``amodal - visible``,
    see ``multimask.structures.derived_mask``) is kept on its box as the bits of its exact result
    on the original image (``segmentation_to_rle``, the mask evaluation scores), transformed as an
    RLE mask: its training target is that single mask's, whatever the forms of its operands.

    Args:
        annos: annotations with ``bbox``, ``bbox_mode``, ``category_id`` and ``multimask`` (dict
            name -> polygons / RLE dict / (H0, W0) array / derived mask / None). Names not in
            `mask_names` are ignored; a name missing from an annotation counts as not annotated.
        image_size: (H, W) after the transforms.
        mask_names: the K names, in the order of ``gt_multimask``.
        primary: the name also given as ``gt_masks``; None = the first of mask_names.
        transforms: applied to boxes and masks; None = the annotations are already at image_size.
        original_size: (H0, W0) the RLE / array masks have; None = image_size.
        recompute_boxes: replace the boxes by the boxes of each instance's primary mask as
            transformed, polygons clipped to the crop as detectron2 clips them (see
            ``_recomputed_boxes``); set with crop augmentation, as detectron2's mapper does
            (after a crop, the annotated box can be larger than what is left of the object).
        mask_format: "polygon" (detectron2's default) or "bitmask": polygons rasterised here.

    Returns:
        Instances with ``gt_boxes`` (N, 4), ``gt_classes`` (N,) int64, ``gt_multimask``
        (MultiMasks of N x K masks, not-annotated masks flagged in ``annotated``) and ``gt_masks``
        (the primary mask: PolygonMasks when every primary mask is polygons and mask_format is
        "polygon", else ``NamedMasks``, a view of ``gt_multimask``).
    """
    if mask_format not in ("polygon", "bitmask"):
        raise ValueError(f"mask_format must be 'polygon' or 'bitmask', got {mask_format!r}")
    h, w = image_size
    boxes = transform_boxes(annos, transforms, image_size)
    # drop empty boxes before transforming any mask
    keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5))
    annos = [annos[i] for i in keep]
    boxes = boxes[keep]
    n, k = len(annos), len(mask_names)

    annotated = np.zeros((n, k), dtype=bool)
    leaves: List[List[Leaf]] = [[None] * k for _ in range(n)]
    polygon_leaves: List[PolygonMask] = []
    vertices: List[np.ndarray] = []  # (P, 2) per polygon of every polygon leaf
    bit_jobs: List[Tuple[BitCrop, Any]] = []  # RLE / array / derived masks, windows filled later
    operand_vertices: List[np.ndarray] = []  # (P, 2) per polygon operand of a derived mask

    def leaf_of(segm: Any, memo: Dict[int, Leaf]) -> Leaf:
        # one leaf per mask object of the image (several names can give the same object)
        if id(segm) in memo:
            return memo[id(segm)]
        leaf: Leaf = None
        if isinstance(segm, list):
            valid = [
                np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm if is_valid_polygon(p)
            ]
            if valid:
                leaf = PolygonMask(None, [len(v) for v in valid])
                polygon_leaves.append(leaf)
                vertices.extend(valid)
        else:
            if is_derived(segm):
                # rasterised from the original polygons: checked as the polygons of leaves are
                operand_vertices.extend(_operand_polygons(segm))
            leaf = BitCrop(0, 0, 0, 0, 0)
            bit_jobs.append((leaf, segm))
        memo[id(segm)] = leaf
        return leaf

    memo: Dict[int, Leaf] = {}
    for i, anno in enumerate(annos):
        per_name = anno.get("multimask", {})
        for j, name in enumerate(mask_names):
            segm = per_name.get(name)
            if segm is None:
                continue
            leaves[i][j] = leaf_of(segm, memo)
            # a list whose polygons are all degenerate is not annotated; [] is an empty mask
            annotated[i, j] = leaves[i][j] is not None or not isinstance(segm, list) or not segm

    if operand_vertices:
        check_polygon_coords(operand_vertices, *(original_size or image_size))
    if vertices:
        coords = _transform_polygons(vertices, transforms, original_size or image_size)
        first = 0
        for leaf in polygon_leaves:
            count = int(leaf.lengths.sum())
            leaf.coords = coords[first : first + count]
            first += count
    crops = _transform_bit_masks(bit_jobs, transforms, original_size or image_size, image_size)
    bit_leaves = [leaf for leaf, _ in bit_jobs]
    if mask_format == "bitmask" and polygon_leaves:
        placed = rasterize_polygons_in_boxes(polygon_leaves, image_size)
        empty = (0, 0, np.zeros((0, 0), dtype=bool))
        crops += [empty if c is None else c for c in placed]
        as_bits = [BitCrop(0, 0, 0, 0, 0) for _ in polygon_leaves]
        bits_of = {id(p): b for p, b in zip(polygon_leaves, as_bits)}
        leaves = [[_to_bits(x, bits_of) for x in row] for row in leaves]
        bit_leaves += as_bits
    flat, packed = MaskStorage.pack(crops, torch.device("cpu"))
    for leaf, where in zip(bit_leaves, packed):
        leaf.offset, leaf.x0, leaf.y0, leaf.h, leaf.w = (
            where.offset,
            where.x0,
            where.y0,
            where.h,
            where.w,
        )

    multimask = MultiMasks.from_leaves(
        leaves, flat, mask_names, (h, w), torch.from_numpy(annotated)
    )
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.gt_classes = torch.as_tensor([a["category_id"] for a in annos], dtype=torch.int64)
    instances.gt_multimask = multimask
    p = list(mask_names).index(primary or mask_names[0])
    if all(isinstance(row[p], PolygonMask) for row in leaves):
        # every primary mask is polygons: what detectron2's mapper gives with MASK_FORMAT "polygon"
        instances.gt_masks = PolygonMasks([row[p].polygons() for row in leaves])
    else:
        instances.gt_masks = multimask.named(mask_names[p])
    if recompute_boxes:
        window = _clip_window(transforms, image_size)
        boxes = _recomputed_boxes(multimask, leaves, annotated, p, window)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances = instances[instances.gt_boxes.nonempty()]
    return instances


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
