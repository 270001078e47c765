"""
Per-mask annotation transforms and the conversion of ``multimask`` annotations into ``Instances``.

This is the hot path of data loading, so the work is batched per image rather than per mask: the
boxes of all instances are transformed in one call, the polygon vertices of every mask of every
instance in one ``apply_coords`` call. Polygon masks are then kept as polygons (MASK_FORMAT
"polygon", rasterised per ROI by the loss) or rasterised once, at the final image size, each on its
own box (MASK_FORMAT "bitmask"). RLE masks are decoded at the original size and go through
``apply_segmentation``, as detectron2 does for bitmask annotations.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks

from ..structures import MultiMasks, rasterize_polygons_on_boxes, segmentation_to_bitmask

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


def _transform_bitmasks(
    bitmasks: List[np.ndarray],
    transforms: Optional[T.TransformList],
    out: np.ndarray,
    slots: List[int],
) -> None:
    """
    Apply the transforms to M bitmasks, eight per ``apply_segmentation`` call.

    Each mask is one bit of a uint8 plane. ``apply_segmentation`` must keep label values (a
    segmentation map's labels cannot be blended), so it only moves pixels (nearest-neighbour resize,
    flips, crops, rotations; 0 where it fills), and every bit lands where its pixel lands: the same
    result as one call per mask, for an eighth of the calls.

    Args:
        bitmasks: M (H0, W0) bool arrays.
        transforms: applied to the masks; None = none.
        out: bool array of shape (S, H, W), written in place.
        slots: M indices into `out`, where each mask goes.
    """
    for start in range(0, len(bitmasks), 8):
        group = bitmasks[start : start + 8]
        plane = group[0].astype(np.uint8)
        for bit, m in enumerate(group[1:], start=1):
            plane |= m.astype(np.uint8) << bit
        if transforms is not None:
            plane = transforms.apply_segmentation(plane)
        if plane.shape != out.shape[1:]:
            raise ValueError(
                f"the transforms turned a mask of size {group[0].shape} into {plane.shape}, but the "
                f"image into {out.shape[1:]}"
            )
        for bit, slot in enumerate(slots[start : start + 8]):
            np.not_equal(plane & np.uint8(1 << bit), 0, out=out[slot])


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
        mask_format: "polygon" (detectron2's default): polygon masks stay polygons in
            ``gt_multimask`` and are rasterised on each ROI by ``crop_and_resize``; "bitmask": every
            mask is rasterised here to the full image.

    Returns:
        Instances with ``gt_boxes`` (N, 4), ``gt_classes`` (N,) int64, ``gt_multimask``
        (MultiMasks of shape (N, K, H, W), not-annotated masks flagged in ``annotated``) and
        ``gt_masks`` (the primary mask: PolygonMasks when every primary mask is polygons and
        mask_format is "polygon", else BitMasks of shape (N, H, W)).
    """
    h, w = image_size
    h0, w0 = original_size or image_size
    boxes = transform_boxes(annos, transforms, image_size)
    # drop empty boxes before rasterising anything
    keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5))
    annos = [annos[i] for i in keep]
    boxes = boxes[keep]
    n, k = len(annos), len(mask_names)

    if mask_format not in ("polygon", "bitmask"):
        raise ValueError(f"mask_format must be 'polygon' or 'bitmask', got {mask_format!r}")
    masks: Optional[np.ndarray] = None  # (N * K, H, W) bits, allocated when a mask needs them
    annotated = np.zeros((n, k), dtype=bool)
    polygons: List[np.ndarray] = []
    polygons_per_mask: List[int] = []
    slots: List[int] = []  # flat (instance * K + name) index of each polygon mask
    bitmasks: List[np.ndarray] = []  # RLE / array masks, decoded at the original size
    bitmask_slots: List[int] = []
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
                bitmasks.append(segmentation_to_bitmask(segm, h0, w0))
                bitmask_slots.append(i * k + j)
    if bitmasks:
        masks = np.zeros((n * k, h, w), dtype=bool)
        _transform_bitmasks(bitmasks, transforms, masks, bitmask_slots)

    keep_polygons: Optional[List[List[Optional[List[np.ndarray]]]]] = None
    if slots:
        num_vertices = [len(p) for p in polygons]
        coords = _transform_polygons(polygons, transforms)
        if mask_format == "bitmask":
            if masks is None:
                masks = np.zeros((n * k, h, w), dtype=bool)
            rasterize_polygons_on_boxes(coords, num_vertices, polygons_per_mask, masks, slots)
        else:
            # kept as polygons, rasterised on each ROI when the loss needs them
            flat = [p.ravel() for p in np.split(coords, np.cumsum(num_vertices)[:-1])]
            keep_polygons = [[None] * k for _ in range(n)]
            first = 0
            for slot, count in zip(slots, polygons_per_mask):
                keep_polygons[slot // k][slot % k] = flat[first : first + count]
                first += count
    if masks is None and keep_polygons is None:
        masks = np.zeros((n * k, h, w), dtype=bool)  # no mask at all: empty bits

    masks_t = None if masks is None else torch.from_numpy(masks).view(n, k, h, w)
    multimask = MultiMasks(
        masks_t,
        mask_names,
        torch.from_numpy(annotated),
        polygons=keep_polygons,
        image_size=(h, w),
    )
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.gt_classes = torch.as_tensor([a["category_id"] for a in annos], dtype=torch.int64)
    instances.gt_multimask = multimask
    p = list(mask_names).index(primary or mask_names[0])
    if keep_polygons is not None and all(row[p] for row in keep_polygons):
        # every primary mask is polygons: what detectron2's mapper gives with MASK_FORMAT "polygon"
        instances.gt_masks = PolygonMasks([row[p] for row in keep_polygons])
    else:
        instances.gt_masks = multimask.get(mask_names[p])
    if recompute_boxes:
        instances.gt_boxes = BitMasks(multimask.tensor.any(dim=1)).get_bounding_boxes()
        instances = instances[instances.gt_boxes.nonempty()]
    return instances
