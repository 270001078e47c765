"""
Per-mask annotation transforms and the conversion of ``multimask`` annotations into ``Instances``.

This is the hot path of data loading, so the work is batched per image rather than per mask: the
boxes of all instances are transformed in one call, the polygon vertices of every mask of every
instance in one ``apply_coords`` call, and each polygon mask is rasterised once, at the final image
size, on its own box. RLE masks are decoded at the original size and go through
``apply_segmentation``, as detectron2 does for bitmask annotations.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

from ..structures import MultiMasks, segmentation_to_bitmask
from .datasets.mask_fields import shift_polygon_coords

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


def _rasterize_polygons(
    polygons: List[np.ndarray],
    polygons_per_mask: List[int],
    transforms: Optional[T.TransformList],
    out: np.ndarray,
    slots: List[int],
) -> None:
    """
    Transform the polygons of M masks and rasterise each mask into `out`.

    Args:
        polygons: (P_i, 2) vertex arrays of all masks, grouped by mask.
        polygons_per_mask: M counts, summing to len(polygons).
        transforms: applied to the vertices; None = none.
        out: bool array of shape (S, H, W), zero, written in place.
        slots: M indices into `out`, where each mask goes.
    """
    num_vertices = [len(p) for p in polygons]
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
        # One call for every vertex of the image. Polygons are not clipped to a crop: the rasteriser
        # clips at the image border exactly, so the result equals clipping first.
        coords = transforms.apply_coords(coords)
    h, w = out.shape[1:]
    # Each mask is rasterised on its own bounding box only, since decoding a full-image mask costs
    # O(H * W) and objects usually cover a small part of the image.
    poly_starts = np.cumsum([0] + polygons_per_mask)[:-1]
    vertex_starts = np.cumsum([0] + num_vertices)[poly_starts]
    lo = np.floor(np.minimum.reduceat(coords, vertex_starts, axis=0)) - 1
    hi = np.ceil(np.maximum.reduceat(coords, vertex_starts, axis=0)) + 2
    lo = np.clip(lo, 0, [w, h]).astype(np.int64)
    hi = np.clip(hi, 0, [w, h]).astype(np.int64)
    vertex_mask = np.repeat(
        np.arange(len(polygons_per_mask)), np.diff(np.append(vertex_starts, len(coords)))
    )
    coords = shift_polygon_coords(coords, lo[vertex_mask])
    flat = [p.ravel() for p in np.split(coords, np.cumsum(num_vertices)[:-1])]
    for m, (first, count) in enumerate(zip(poly_starts, polygons_per_mask)):
        (x0, y0), (x1, y1) = lo[m], hi[m]
        if x1 <= x0 or y1 <= y0:
            continue  # entirely outside the image
        rles = mask_util.frPyObjects(flat[first : first + count], int(y1 - y0), int(x1 - x0))
        rle = rles[0] if count == 1 else mask_util.merge(rles)
        out[slots[m], y0:y1, x0:x1] = mask_util.decode(rle)


def multimask_annotations_to_instances(
    annos: Sequence[Dict[str, Any]],
    image_size: Tuple[int, int],
    mask_names: Sequence[str],
    primary: Optional[str] = None,
    transforms: Optional[T.TransformList] = None,
    original_size: Optional[Tuple[int, int]] = None,
    recompute_boxes: bool = False,
) -> Instances:
    """
    Transform the annotations of one image and build its training targets.

    Instances whose box is empty after the transforms are dropped, with all their masks.

    Args:
        annos: annotations with ``bbox``, ``bbox_mode``, ``category_id`` and ``multimask`` (dict
            name -> polygons / RLE dict / (H0, W0) array / None). Names not in `mask_names` are
            ignored; a name missing from an annotation counts as not annotated.
        image_size: (H, W) after the transforms.
        mask_names: the K names, in the order of ``gt_multimask``.
        primary: the name also given as ``gt_masks``; None = the first of mask_names.
        transforms: applied to boxes and masks; None = the annotations are already at image_size.
        original_size: (H0, W0) the RLE / array masks have; None = image_size.
        recompute_boxes: replace the boxes by the tight boxes of the union of each instance's masks
            (after a crop, the annotated box can be larger than what is left of the object).

    Returns:
        Instances with ``gt_boxes`` (N, 4), ``gt_classes`` (N,) int64, ``gt_multimask``
        (MultiMasks of shape (N, K, H, W), not-annotated masks flagged in ``annotated``) and
        ``gt_masks`` (BitMasks of shape (N, H, W), the primary mask).
    """
    h, w = image_size
    h0, w0 = original_size or image_size
    boxes = transform_boxes(annos, transforms, image_size)
    # drop empty boxes before rasterising anything
    keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5))
    annos = [annos[i] for i in keep]
    boxes = boxes[keep]
    n, k = len(annos), len(mask_names)

    masks = np.zeros((n * k, h, w), dtype=bool)
    annotated = np.zeros((n, k), dtype=bool)
    polygons: List[np.ndarray] = []
    polygons_per_mask: List[int] = []
    slots: List[int] = []  # flat (instance * K + name) index of each polygon mask
    for i, anno in enumerate(annos):
        per_name = anno.get("multimask", {})
        for j, name in enumerate(mask_names):
            segm = per_name.get(name)
            if segm is None:
                continue
            if isinstance(segm, list):
                # degenerate polygons are skipped as the loaders do; [] is an annotated empty mask
                valid = [
                    np.asarray(p, dtype=np.float64).reshape(-1, 2)
                    for p in segm
                    if len(p) >= 6 and len(p) % 2 == 0
                ]
                annotated[i, j] = bool(valid) or len(segm) == 0
                if valid:
                    slots.append(i * k + j)
                    polygons.extend(valid)
                    polygons_per_mask.append(len(valid))
            else:
                annotated[i, j] = True
                bitmask = segmentation_to_bitmask(segm, h0, w0).view(np.uint8)
                if transforms is not None:
                    bitmask = transforms.apply_segmentation(bitmask)
                np.greater(bitmask, 0, out=masks[i * k + j])
    if slots:
        _rasterize_polygons(polygons, polygons_per_mask, transforms, masks, slots)

    masks_t = torch.from_numpy(masks).view(n, k, h, w)
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.gt_classes = torch.as_tensor([a["category_id"] for a in annos], dtype=torch.int64)
    instances.gt_multimask = MultiMasks(masks_t, mask_names, torch.from_numpy(annotated))
    p = list(mask_names).index(primary or mask_names[0])
    instances.gt_masks = BitMasks(masks_t[:, p])
    if recompute_boxes:
        instances.gt_boxes = BitMasks(masks_t.any(dim=1)).get_bounding_boxes()
        instances = instances[instances.gt_boxes.nonempty()]
    return instances
