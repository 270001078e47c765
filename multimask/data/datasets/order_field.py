"""
Ground-truth occlusion order read from a dataset's own order field (issue 24 item 3).

The occlusion-order accuracy (``MULTIMASK.ORDER_EVAL``, :mod:`multimask.evaluation.occlusion_order`)
compares the predicted pairwise order with the ground truth's. Where a dataset states the pairwise
order itself, that is the ground truth (``MULTIMASK.ORDER_GT "auto"``); elsewhere it comes from the
masks as uoais-v2's ``generate_ooam`` builds it.

One annotation key carries the order into the loader, whatever the dataset: ``occludes``, the list
of annotation ids (of the same image) that the annotation occludes. Any flat COCO JSON may carry
it; the readers write it from the released fields:

- COCOA (``cocoa``, ``mp3d_amodal``): the image annotation's ``depth_constraint``, a string of
  ``"i-j"`` pairs over its 1-based ``regions``, region i in front of (occluding) region j, as
  XiaohangZhan/deocclusion ``datasets/reader.py`` ``COCOADataset.get_gt_ordering`` reads it
  (``gt_order_matrix[i - 1, j - 1] = 1``); an empty string is an image without occlusion.
- SynTable (``uoais``): the image's ``occlusion_order_file_name``, an (n, n) ``.npy`` matrix under
  the dataset root whose row i and column j follow the image's annotations in file order,
  ``A[i, j] = 1`` when object i occludes object j (ngzhili/SynTable
  ``syntable_composer/src/output/output1.py``: i's visible mask overlaps j's occluded mask).

The loader turns the ids into the image-level ``occlusion_order``: ``[i, j]`` pairs of positions in
the image's ``annotations`` list (annotation i occludes annotation j). Every annotation of an image
has the key or none has it; ids of annotations that were dropped at load (no valid mask) are left
out; an id that is not an annotation of the image is an error naming the file and annotation.
KINS states only a cluster-relative depth (``oco_id`` / ``ico_id``), not which pairs overlap, so its
order comes from the masks, as deocclusion's ``infer_gt_order`` derives it for KINS.
"""

import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from detectron2.utils.file_io import PathManager

__all__ = [
    "IMAGE_ORDER_KEY",
    "ORDER_KEY",
    "OrderCollector",
    "cocoa_depth_constraint",
    "read_order_matrix",
    "syntable_order",
]

# annotation key of the file: ids of the annotations this one occludes
ORDER_KEY = "occludes"
# dataset-dict key of an image: [i, j] positions in its annotations, i occludes j
IMAGE_ORDER_KEY = "occlusion_order"


def cocoa_depth_constraint(value: Any, num_regions: int, where: str) -> List[List[int]]:
    """
    COCOA's ``depth_constraint`` as, per region, the 0-based regions it occludes.

    Args:
        value: the string, e.g. ``"1-2,1-3"`` (1-based: region 1 occludes regions 2 and 3).
        num_regions: how many regions the annotation has.
        where: the file and annotation, for errors.
    """
    occludes: List[List[int]] = [[] for _ in range(num_regions)]
    if value is None or value == "":
        return occludes
    if not isinstance(value, str):
        raise ValueError(f"{where}: depth_constraint {value!r} is not a string of 'i-j' pairs")
    for pair in value.split(","):
        parts = pair.strip().split("-")
        try:
            i, j = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"{where}: depth_constraint pair {pair!r} is not 'i-j' (1-based region indices)"
            ) from None
        if not (1 <= i <= num_regions and 1 <= j <= num_regions) or i == j:
            raise ValueError(
                f"{where}: depth_constraint pair {pair!r} names a region outside 1..{num_regions} "
                "or a region occluding itself"
            )
        occludes[i - 1].append(j - 1)
    return occludes


def read_order_matrix(path: str, num_objects: int, where: str) -> List[List[int]]:
    """
    An (n, n) occlusion-order ``.npy`` (SynTable) as, per object, the objects it occludes.

    Args:
        path: the file.
        num_objects: the image's annotation count, which n must equal.
        where: the annotation file and image, for errors.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"{where}: occlusion order file {path} does not exist")
    with PathManager.open(path, "rb") as f:
        try:
            matrix = np.load(f, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{where}: {path} is not a numeric .npy array ({e})") from None
    if matrix.shape != (num_objects, num_objects):
        raise ValueError(
            f"{where}: occlusion order {path} has shape {matrix.shape}, but the image has "
            f"{num_objects} annotations (rows and columns follow them in file order)"
        )
    return [[int(j) for j in np.flatnonzero(row) if j != i] for i, row in enumerate(matrix != 0)]


class OrderCollector:
    """
    Collects the ``occludes`` ids of a file's annotations while the loader reads them, then writes
    each image's ``occlusion_order``.
    """

    def __init__(self, json_file: str):
        self.json_file = json_file
        # image id -> [(annotation id, its position in the record or None if dropped, occludes)]
        self._by_image: Dict[Any, List[tuple]] = {}

    def add(self, ann: Mapping[str, Any], position: Optional[int]) -> None:
        """One annotation of the file: `position` in its record's annotations, None if dropped."""
        occ = ann.get(ORDER_KEY)
        where = f"{self.json_file}: annotation id {ann.get('id')} (image id {ann.get('image_id')})"
        if occ is not None and not isinstance(occ, (list, tuple)):
            raise ValueError(f"{where}: '{ORDER_KEY}' must be a list of annotation ids, got {occ!r}")
        if occ is not None and ann.get("id") is None:
            raise ValueError(f"{where}: an annotation with '{ORDER_KEY}' needs an 'id'")
        self._by_image.setdefault(ann.get("image_id"), []).append((ann.get("id"), position, occ))

    def finish(self, records: Mapping[Any, Dict[str, Any]]) -> int:
        """Set ``occlusion_order`` on the images whose annotations carry the key; returns how many."""
        count = 0
        for image_id, anns in self._by_image.items():
            have = [a for a in anns if a[2] is not None]
            if not have:
                continue
            if len(have) != len(anns):
                lacking = [a[0] for a in anns if a[2] is None]
                raise ValueError(
                    f"{self.json_file}: image id {image_id}: annotations {lacking[:5]} have no "
                    f"'{ORDER_KEY}' while others of the image have it: the order of the image "
                    "would be partial"
                )
            ids = {a[0] for a in anns}
            position = {a[0]: a[1] for a in anns if a[1] is not None}
            pairs = []
            for ann_id, pos, occ in anns:
                unknown = [j for j in occ if j not in ids]
                if unknown:
                    raise ValueError(
                        f"{self.json_file}: annotation id {ann_id} (image id {image_id}): "
                        f"'{ORDER_KEY}' names {unknown}, not annotations of the image"
                    )
                if pos is not None:
                    pairs += [[pos, position[j]] for j in occ if j in position and j != ann_id]
            records[image_id][IMAGE_ORDER_KEY] = sorted(pairs)
            count += 1
        return count


def syntable_order(
    coco: Mapping[str, Any], json_file: str, image_root: str, key: str = "occlusion_order_file_name"
) -> int:
    """
    Write ``occludes`` on the annotations of every image that names an order matrix under `key`
    (SynTable), read from ``image_root/<that path>``; returns how many images had one.
    """
    by_image: Dict[Any, List[Dict[str, Any]]] = {}
    for ann in coco.get("annotations") or ():
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    count = 0
    for img in coco.get("images") or ():
        if not isinstance(img, dict) or not img.get(key):
            continue
        anns = by_image.get(img.get("id"), [])
        where = f"{json_file}: image id {img.get('id')} ({img.get('file_name')})"
        occludes = read_order_matrix(os.path.join(image_root, img[key]), len(anns), where)
        for ann, occ in zip(anns, occludes):
            if ann.get("id") is None:
                raise ValueError(f"{where}: its annotations need ids for the occlusion order")
            ann[ORDER_KEY] = [anns[j]["id"] for j in occ]
        count += 1
    return count

