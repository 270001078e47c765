"""
The conversion of ``multimask`` annotations into ``Instances``, and the dataset checks made before
training.

This is the hot path of data loading, so the work is batched per image rather than per mask (the
transforms in ``annotation_transforms``): the boxes of all instances are transformed in one call,
the polygon vertices of every mask of every instance in one ``apply_coords`` call, RLE masks eight
per ``apply_segmentation`` call. Nothing is
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
from detectron2.structures import Boxes, Instances, PolygonMasks

from ..structures import BitCrop, MaskStorage, MultiMasks, PolygonMask, is_derived
from ..structures.leaves import Leaf, rasterize_polygons_in_boxes
from ..structures.segmentation import check_polygon_coords, is_valid_polygon
from .annotation_transforms import (
    _clip_window,
    _recomputed_boxes,
    _transform_bit_masks,
    _transform_polygons,
    transform_boxes,
)

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
