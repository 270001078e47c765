"""
The evaluation ground truth of ``MultiMaskCOCOEvaluator``: read once from the dataset dicts, then
one in-memory COCO dataset per task and mask name (its occluded subsets are evaluated on it, see
``coco_evaluation``), and one for UOAIS's occluded-region task.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import pycocotools.mask as mask_util

from detectron2.structures import BoxMode

from ..structures import segmentation_to_rle
from .occlusion import OcclusionSubset, visible_fraction, whole_area

__all__ = [
    "AGNOSTIC_ID",
    "VISIBLE_FRACTION",
    "build_ground_truth",
    "class_agnostic",
    "coco_ground_truth",
    "uoais_ground_truth",
]

# Key of a COCO record (ground truth or detection) holding its visible fraction (see occlusion.py)
VISIBLE_FRACTION = "multimask_visible_fraction"
# The one category of a class-agnostic evaluation
AGNOSTIC_ID = 1

logger = logging.getLogger(__name__)


def _to_rle(segm: Any, height: int, width: int, where: str, memo: Optional[dict] = None) -> dict:
    """``segmentation_to_rle`` (polygons, RLE, derived masks), with errors naming `where`."""
    try:
        return segmentation_to_rle(segm, height, width, memo)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def build_ground_truth(
    dataset_name: str,
    dicts: List[Dict[str, Any]],
    classes: Sequence[str],
    dataset_ids: Mapping[int, int],
    mask_names: Set[str],
    occlusion_masks: Tuple[str, ...],
) -> Dict[str, Any]:
    """
    Images, categories and, per annotation, box, RLE of each mask name and visible fraction.

    The COCO records number the images 1..N (``coco_ids`` maps the dataset's image_id to them):
    the C++ backends need integer image ids, datasets may use strings.

    Args:
        dataset_name: named in log lines.
        dicts: the dataset dicts.
        classes: ``thing_classes``.
        dataset_ids: contiguous class -> the dataset's category id.
        mask_names: the masks to read (the evaluated ones and the occlusion masks).
        occlusion_masks: (whole, visible, ...), see ``occlusion.visible_fraction``.

    Returns:
        dict with "images", "categories", "annotations" (internal records) and "coco_ids".
    """
    categories = [{"id": dataset_ids[i], "name": c} for i, c in enumerate(classes)]
    images, anns, coco_ids = [], [], {}
    for d in dicts:
        file_name = d.get("file_name", "<no file_name>")
        if "image_id" not in d or "height" not in d or "width" not in d:
            raise ValueError(f"dataset dict of {file_name} lacks image_id, height or width")
        img_id, h, w = d["image_id"], int(d["height"]), int(d["width"])
        if img_id in coco_ids:
            raise ValueError(f"{file_name}: image_id {img_id} appears twice in the dataset")
        coco_ids[img_id] = len(images) + 1
        images.append({"id": coco_ids[img_id], "height": h, "width": w, "file_name": file_name})
        for j, a in enumerate(d.get("annotations", [])):
            where = f"{file_name} (image_id {img_id}, annotation {j})"
            anns.append(
                _annotation(
                    a, coco_ids[img_id], (h, w), mask_names, dataset_ids, occlusion_masks, where
                )
            )
    unknown = sum(a["visible_fraction"] is None for a in anns)
    if anns and unknown == len(anns):
        whole, visible = occlusion_masks[:2]
        logger.warning(
            f"'{dataset_name}': no instance has an occlude_rate or annotated '{whole}' and "
            f"'{visible}' masks (the occlusion masks): every occluded subset is NaN. Set "
            "MULTIMASK.OCCLUSION_MASKS to the dataset's [whole, visible] mask names."
        )
    elif unknown:
        logger.info(
            f"'{dataset_name}': {unknown} of {len(anns)} instances have no occlusion rate (in no "
            "occluded subset)"
        )
    return {"images": images, "categories": categories, "annotations": anns, "coco_ids": coco_ids}


def class_agnostic(gt: Mapping[str, Any]) -> Dict[str, Any]:
    """``build_ground_truth``'s result with one category ``AGNOSTIC_ID`` ("object") for all."""
    anns = [{**a, "category_id": AGNOSTIC_ID} for a in gt["annotations"]]
    return {**gt, "categories": [{"id": AGNOSTIC_ID, "name": "object"}], "annotations": anns}


def _annotation(
    a: Mapping[str, Any],
    img_id: int,
    size: Tuple[int, int],
    mask_names: Set[str],
    dataset_ids: Mapping[int, int],
    occlusion_masks: Tuple[str, ...],
    where: str,
) -> Dict[str, Any]:
    if "bbox" not in a or "bbox_mode" not in a or "category_id" not in a:
        raise ValueError(f"{where}: annotation lacks bbox, bbox_mode or category_id")
    if a["category_id"] not in dataset_ids:
        raise ValueError(f"{where}: category_id {a['category_id']} is not a contiguous id")
    box = [float(v) for v in BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)]
    multimask = a.get("multimask") or {}
    memo: dict = {}  # derived masks (occluded = amodal - visible) reuse their operands' RLEs
    rles = {
        n: _to_rle(multimask[n], *size, f"{where}, mask '{n}'", memo)
        for n in sorted(mask_names)
        if multimask.get(n) is not None
    }
    areas = {n: float(mask_util.area(r)) for n, r in rles.items()}
    segm = a.get("segmentation")  # COCO's box area ranges use the mask area when there is one
    box_area = mask_util.area(_to_rle(segm, *size, where, memo)) if segm else box[2] * box[3]
    return {
        "image_id": img_id,
        "category_id": dataset_ids[a["category_id"]],
        "bbox": box,
        "iscrowd": int(a.get("iscrowd", 0)),
        "box_area": float(box_area),
        "rles": rles,
        "areas": areas,
        "visible_fraction": visible_fraction(a, areas, occlusion_masks, where),
        "whole_area": whole_area(a, areas, occlusion_masks[0]),
        "size": size,
    }


def _crowd_box(a: Mapping[str, Any]) -> Dict[str, Any]:
    """A crowd region covering the instance's box: it absorbs every detection inside it."""
    x, y, bw, bh = a["bbox"]
    poly = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
    return {"iscrowd": 1, "area": bw * bh, "segmentation": _to_rle(poly, *a["size"], "")}


def coco_ground_truth(
    gt: Mapping[str, Any], task: str, name: Optional[str] = None
) -> Dict[str, list]:
    """
    The COCO dataset (images, categories, annotations) of ``bbox``, or of mask `name`.

    For a mask: an instance whose mask is not annotated is a crowd region over its box (it absorbs
    every detection inside it); one annotated empty is left out (no object of this mask). Each
    record of a mask also holds its instance's visible fraction (``VISIBLE_FRACTION``, None when
    unknown), which selects the occluded subsets.

    Args:
        gt: ``build_ground_truth``'s result.
        task: "bbox" or "segm".
    """
    anns = []
    for a in gt["annotations"]:
        rec = {k: a[k] for k in ("image_id", "category_id", "bbox", "iscrowd")}
        if task == "bbox":
            rec["area"] = a["box_area"]
        elif name not in a["rles"]:
            rec.update(_crowd_box(a))
        elif a["areas"][name] == 0:
            continue
        else:
            rec.update(area=a["areas"][name], segmentation=a["rles"][name])
        if task != "bbox":
            rec[VISIBLE_FRACTION] = a["visible_fraction"]
        rec["id"] = len(anns) + 1  # ids must be > 0: COCOeval uses 0 for "unmatched"
        anns.append(rec)
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}


def uoais_ground_truth(
    gt: Mapping[str, Any], name: str, subset: OcclusionSubset
) -> Dict[str, list]:
    """
    The ground truth of UOAIS's ``occlusion_segm`` task: the instances of `subset` (occluded >
    0.05), with their mask `name` (the occluded region); the others are removed. Each one's
    ``area`` is the whole area times its occlusion rate, as UOAIS's ``createIndex`` sets it
    (``area * occluded_rate``); it only places the instance in APs / APm / APl.

    An instance whose occlusion is unknown, or whose mask `name` is not annotated, is not
    annotated for this task: a crowd region over its box, as in ``coco_ground_truth``; one of the
    subset annotated empty is left out.
    """
    anns = []
    for a in gt["annotations"]:
        fraction = a["visible_fraction"]
        if fraction is not None and not subset.contains(fraction):
            continue
        rec = {k: a[k] for k in ("image_id", "category_id", "bbox", "iscrowd")}
        if fraction is None or name not in a["rles"]:
            rec.update(_crowd_box(a))
        elif a["areas"][name] == 0:
            continue
        else:
            area = a["whole_area"] * (1.0 - a["visible_fraction"])
            rec.update(area=area, segmentation=a["rles"][name])
        rec["id"] = len(anns) + 1
        anns.append(rec)
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}
