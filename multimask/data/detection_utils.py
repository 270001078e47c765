"""
Per-mask annotation transforms and the conversion of ``multimask`` annotations into ``Instances``.

This is the hot path of data loading, so the work is batched per image rather than per mask: the
boxes of all instances are transformed in one call, the polygon vertices of every mask of every
instance in one ``apply_coords`` call, RLE masks eight per ``apply_segmentation`` call. Nothing is
held at image size: polygons stay polygons (MASK_FORMAT "polygon", rasterised per ROI by the loss)
or are rasterised on their own boxes (MASK_FORMAT "bitmask"), RLE masks are kept on their boxes, and
derived masks (``amodal - visible``) keep their operands.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks

from ..structures import (
    BitCrop,
    DerivedMask,
    MaskStorage,
    MultiMasks,
    PolygonMask,
    is_derived,
    segmentation_to_rle,
)
from ..structures.leaves import Leaf, rasterize_polygons_in_boxes

__all__ = ["check_mask_names", "multimask_annotations_to_instances", "transform_boxes"]

# Largest |polygon coordinate| accepted, in pixels of the original image.
MAX_POLYGON_COORD = 1e5


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
    polygons: List[np.ndarray], transforms: Optional[T.TransformList]
) -> np.ndarray:
    """
    Check and transform the vertices of many polygons in one call.

    Args:
        polygons: (P_i, 2) vertex arrays.
        transforms: applied to the vertices; None = none.

    Returns:
        (sum P_i, 2) float64 vertices. Polygons are not clipped to a crop: the rasteriser clips at
        the image border exactly, so the result equals clipping first.
    """
    coords = np.concatenate(polygons)
    # The loaders reject these; dicts from other sources are checked here, since pycocotools would
    # exhaust memory on them rather than raise.
    if not np.isfinite(coords).all() or np.abs(coords).max() > MAX_POLYGON_COORD:
        bad = coords[~np.isfinite(coords) | (np.abs(coords) > MAX_POLYGON_COORD)][0]
        raise ValueError(
            f"a polygon has the coordinate {bad:g}: coordinates must be finite and within "
            f"+-{MAX_POLYGON_COORD:g} px"
        )
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
    Transform RLE / array masks and keep each on its box only.

    Masks are decoded at the original size and go through ``apply_segmentation`` eight per call, one
    bit of a uint8 plane each: ``apply_segmentation`` keeps label values (nearest-neighbour resize,
    flips, crops; 0 where it pads, see ``_zero_padding``), so every bit lands where its pixel lands.
    Each mask is then cut to its tight box plus a zero margin of one pixel (where the image allows),
    found inside its transformed RLE box, so no mask is held at image size.

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
    seg_transforms = None if transforms is None else _zero_padding(transforms)
    crops: List[Tuple[int, int, np.ndarray]] = []
    for start in range(0, len(jobs), 8):
        group = jobs[start : start + 8]
        rles = [segmentation_to_rle(segm, h0, w0) for _, segm in group]
        boxes = mask_util.toBbox(rles).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        if transforms is not None:
            boxes = transforms.apply_box(boxes)
        decoded = mask_util.decode(rles).reshape(h0, w0, -1)
        plane = np.zeros((h0, w0), dtype=np.uint8)
        for bit in range(len(group)):
            plane |= decoded[:, :, bit] << bit
        if seg_transforms is not None:
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


def _to_bits(leaf: Leaf, bits_of: Dict[int, BitCrop]) -> Leaf:
    """`leaf` with its polygon masks replaced by their BitCrops (``INPUT.MASK_FORMAT "bitmask"``)."""
    if isinstance(leaf, PolygonMask):
        return bits_of[id(leaf)]
    if isinstance(leaf, DerivedMask):
        return DerivedMask(leaf.op, _to_bits(leaf.a, bits_of), _to_bits(leaf.b, bits_of))
    return leaf


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
    on their boxes), RLE masks are kept on their boxes, and derived masks (``amodal - visible``, see
    ``multimask.structures.derived_mask``) keep their operands, shared with the masks they come from.

    Args:
        annos: annotations with ``bbox``, ``bbox_mode``, ``category_id`` and ``multimask`` (dict
            name -> polygons / RLE dict / (H0, W0) array / derived mask / None). Names not in
            `mask_names` are ignored; a name missing from an annotation counts as not annotated.
        image_size: (H, W) after the transforms.
        mask_names: the K names, in the order of ``gt_multimask``.
        primary: the name also given as ``gt_masks``; None = the first of mask_names.
        transforms: applied to boxes and masks; None = the annotations are already at image_size.
        original_size: (H0, W0) the RLE / array masks have; None = image_size.
        recompute_boxes: replace the boxes by the boxes of the union of each instance's masks
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
    bit_jobs: List[Tuple[BitCrop, Any]] = []  # RLE / array masks, windows filled in later

    def leaf_of(segm: Any, memo: Dict[int, Leaf]) -> Leaf:
        # one leaf per mask object of the image: a derived mask shares its operands' leaves (also
        # those of other annotations, e.g. an occluder mask made of the objects in front)
        if id(segm) in memo:
            return memo[id(segm)]
        leaf: Leaf = None
        if isinstance(segm, list):
            valid = [
                np.asarray(p, dtype=np.float64).reshape(-1, 2)
                for p in segm
                if len(p) >= 6 and len(p) % 2 == 0
            ]
            if valid:
                leaf = PolygonMask(None, [len(v) for v in valid])
                polygon_leaves.append(leaf)
                vertices.extend(valid)
        elif is_derived(segm):
            a, b = segm["operands"]
            leaf = DerivedMask(segm["op"], leaf_of(a, memo), leaf_of(b, memo))
        else:
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

    if vertices:
        coords = _transform_polygons(vertices, transforms)
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
        instances.gt_boxes = multimask.get_bounding_boxes()
        instances = instances[instances.gt_boxes.nonempty()]
    return instances
