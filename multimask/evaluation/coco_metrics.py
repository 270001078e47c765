"""
The COCO metrics of an accumulated COCOeval (any backend), read from its precision array.

``COCOeval.summarize`` reports AP at ``maxDets = 100`` whatever ``params.maxDets`` says (it looks
the value 100 up); the metrics here are read at the last ``params.maxDets`` entry, so a
``max_dets_per_image`` other than 100 is honoured, as detectron2's ``COCOEvaluator`` does. At
maxDets [1, 10, 100] they are ``summarize``'s ``stats[0:6]``.
"""

import itertools
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
from tabulate import tabulate

__all__ = [
    "METRICS",
    "SUBSET_METRICS",
    "per_category_ap",
    "per_category_table",
    "range_metrics",
    "summary_metrics",
]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# The metrics of a key evaluated as one area range of a COCOeval run (the occluded subsets)
SUBSET_METRICS = ("AP", "AP50", "AP75")


def _mean_percent(precision: np.ndarray) -> float:
    """Mean of the defined (> -1) entries, in percent; NaN when none is defined."""
    defined = precision[precision > -1]
    return float(defined.mean() * 100) if defined.size else float("nan")


def _area_index(coco_eval: Any, label: str) -> int:
    return list(coco_eval.params.areaRngLbl).index(label)


def range_metrics(coco_eval: Any, label: str = "all") -> Dict[str, float]:
    """
    AP, AP50, AP75 in percent on the area range `label` of ``params.areaRngLbl``, at the last
    ``maxDets``.

    Args:
        coco_eval: a COCOeval after ``evaluate()`` and ``accumulate()``, with the standard IoU
            thresholds.
    """
    p = coco_eval.params
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets)
    precision = coco_eval.eval["precision"][..., _area_index(coco_eval, label), len(p.maxDets) - 1]
    iou = {t: np.flatnonzero(np.isclose(p.iouThrs, t)) for t in (0.5, 0.75)}
    return {
        "AP": _mean_percent(precision),
        "AP50": _mean_percent(precision[iou[0.5]]),
        "AP75": _mean_percent(precision[iou[0.75]]),
    }


def summary_metrics(coco_eval: Any) -> Dict[str, float]:
    """
    AP, AP50, AP75, APs, APm, APl in percent at the last ``maxDets``.

    Args:
        coco_eval: a COCOeval after ``evaluate()`` and ``accumulate()``, with the standard IoU
            thresholds and area ranges ("all", "small", "medium", "large").
    """
    results = range_metrics(coco_eval, "all")
    for label, key in (("small", "APs"), ("medium", "APm"), ("large", "APl")):
        results[key] = range_metrics(coco_eval, label)["AP"]
    return results


def per_category_ap(
    coco_eval: Any, names: Mapping[int, str], label: str = "all"
) -> List[Tuple[str, float]]:
    """(category name, AP in percent) per category of ``params.catIds``, at the last maxDets."""
    precision = coco_eval.eval["precision"]
    m = len(coco_eval.params.maxDets) - 1
    a = _area_index(coco_eval, label)
    return [
        (names[cat_id], _mean_percent(precision[:, :, k, a, m]))
        for k, cat_id in enumerate(coco_eval.params.catIds)
    ]


def per_category_table(per_category: List[Tuple[str, float]]) -> str:
    """A markdown table of (name, AP) pairs, three pairs a row."""
    flat = list(itertools.chain(*per_category))
    cols = min(6, len(flat))
    rows = itertools.zip_longest(*[flat[i::cols] for i in range(cols)])
    return tabulate(rows, headers=["category", "AP"] * (cols // 2), tablefmt="pipe", floatfmt=".3f")
