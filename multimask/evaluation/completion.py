"""
The completion protocol (C2F-Seg, pix2gestalt, ViTA-Seg): the object is given, and the metric is
the mean IoU of each object's own predicted mask with its ground truth.

Read in amazon-science/c2f-seg (``utils/evaluation.py``, ``test_c2f_seg.py``) and re-implemented
on RLEs, at the original image size:

- ``miou_<name>``: per object IoU(pred, gt) with C2F-Seg's smoothing ``(I + 1e-10) / (U + 1e-10)``
  (so an empty prediction of an empty mask is 1), averaged over the objects;
- ``miou_<whole>_occ``: per object IoU(pred ∖ gt_visible, gt_whole ∖ gt_visible), 0 when that
  union is empty (C2F-Seg divides by U + 1e-6), **summed over all objects and divided by the
  number of objects whose hidden part gt_whole ∖ gt_visible is non-empty**.

Here the prediction of ground-truth object j of an image is the j-th prediction for that image,
as ``MULTIMASK.EVAL_BOXES "gt"`` gives the non-crowd objects as boxes in their order.
"""

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import pycocotools.mask as mask_util

__all__ = ["completion_miou", "miou_keys"]

logger = logging.getLogger(__name__)

# C2F-Seg's get_IoU smoothing
_SMOOTH = 1e-10


def miou_keys(mask_names: Sequence[str], whole: str) -> List[str]:
    """The keys of ``completion_miou``, in order."""
    keys = [f"miou_{n}" for n in mask_names]
    return keys + ([f"miou_{whole}_occ"] if whole in mask_names else [])


def _area(rles: List[dict]) -> float:
    """Area of the intersection of `rles`."""
    merged = rles[0] if len(rles) == 1 else mask_util.merge(rles, intersect=True)
    return float(mask_util.area(merged))


def _pairs(gt: Mapping[str, Any], by_coco_id: Mapping[int, list]) -> List[Tuple[dict, dict]]:
    """(prediction, ground-truth record) of every non-crowd object of the evaluated images."""
    objects: Dict[int, list] = {i: [] for i in by_coco_id}
    for a in gt["annotations"]:
        if a["image_id"] in objects and not a["iscrowd"]:
            objects[a["image_id"]].append(a)
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    pairs = []
    for i, preds in by_coco_id.items():
        if len(preds) != len(objects[i]):
            raise ValueError(
                f"MULTIMASK.EVAL_BOXES 'gt': {files[i]} has {len(preds)} predictions for "
                f"{len(objects[i])} non-crowd ground-truth objects; the completion protocol needs "
                "exactly one per object, in order (masks predicted for the ground-truth boxes)"
            )
        pairs += list(zip(preds, objects[i]))
    return pairs


def completion_miou(
    gt: Mapping[str, Any],
    by_coco_id: Mapping[int, list],
    mask_names: Sequence[str],
    occlusion_masks: Tuple[str, ...],
) -> "OrderedDict[str, Dict[str, float]]":
    """
    Args:
        gt: ``build_ground_truth``'s result.
        by_coco_id: COCO image id -> its predictions (``encode_instances``), one per non-crowd
            ground-truth object in order.
        mask_names: the predicted mask names.
        occlusion_masks: (whole, visible, ...).

    Returns:
        {"miou_<name>": {"mIoU": percent}} per mask name, then "miou_<whole>_occ"; NaN (logged)
        where no object is evaluable. An object whose mask is not annotated is left out of that
        name's mean; ``_occ`` needs its whole and visible masks annotated.
    """
    pairs = _pairs(gt, by_coco_id)
    results = OrderedDict()
    for name in mask_names:
        ious = []
        for d, a in pairs:
            if name not in a["rles"]:
                continue
            p, g = d["multimask"][name], a["rles"][name]
            inter = _area([p, g])
            union = float(mask_util.area(p)) + a["areas"][name] - inter
            ious.append((inter + _SMOOTH) / (union + _SMOOTH))
        results[f"miou_{name}"] = {"mIoU": _percent(sum(ious), len(ious), f"miou_{name}")}
    whole, visible = occlusion_masks[:2]
    if whole not in mask_names:
        return results
    total, hidden_count, used = 0.0, 0, 0
    for d, a in pairs:
        if whole not in a["rles"] or visible not in a["rles"]:
            continue
        used += 1
        p, g, v = d["multimask"][whole], a["rles"][whole], a["rles"][visible]
        # |(P - V) & (G - V)| = |P & G| - |P & G & V|, and |X - V| = |X| - |X & V|
        inter = _area([p, g]) - _area([p, g, v])
        pred_hidden = float(mask_util.area(p)) - _area([p, v])
        gt_hidden = a["areas"][whole] - _area([g, v])
        union = pred_hidden + gt_hidden - inter
        total += inter / union if union > 0 else 0.0
        hidden_count += gt_hidden > 0
    key = f"miou_{whole}_occ"
    results[key] = {"mIoU": _percent(total, hidden_count, key)}
    logger.info(
        f"{key}: {hidden_count} of {used} objects with annotated '{whole}' and '{visible}' have a "
        "hidden part (the denominator)"
    )
    return results


def _percent(total: float, count: int, key: str) -> float:
    if count == 0:
        logger.warning(f"{key}: no evaluable ground-truth object; NaN.")
        return float("nan")
    logger.info(f"{key}: {100.0 * total / count:.2f} over {count} objects")
    return 100.0 * total / count
