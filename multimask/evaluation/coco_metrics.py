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

__all__ = ["METRICS", "per_category_ap", "per_category_table", "summary_metrics"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mean_percent(precision: np.ndarray) -> float:
    """Mean of the defined (> -1) entries, in percent; NaN when none is defined."""
    defined = precision[precision > -1]
    return float(defined.mean() * 100) if defined.size else float("nan")


def summary_metrics(coco_eval: Any) -> Dict[str, float]:
    """
    AP, AP50, AP75, APs, APm, APl in percent at the last ``maxDets``.

    Args:
        coco_eval: a COCOeval after ``evaluate()`` and ``accumulate()``, with the standard IoU
            thresholds and area ranges.
    """
    p = coco_eval.params
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets)
    precision = coco_eval.eval["precision"][..., len(p.maxDets) - 1]
    iou = {t: np.flatnonzero(np.isclose(p.iouThrs, t)) for t in (0.5, 0.75)}
    area = {label: i for i, label in enumerate(p.areaRngLbl)}
    return {
        "AP": _mean_percent(precision[:, :, :, area["all"]]),
        "AP50": _mean_percent(precision[iou[0.5], :, :, area["all"]]),
        "AP75": _mean_percent(precision[iou[0.75], :, :, area["all"]]),
        "APs": _mean_percent(precision[:, :, :, area["small"]]),
        "APm": _mean_percent(precision[:, :, :, area["medium"]]),
        "APl": _mean_percent(precision[:, :, :, area["large"]]),
    }


def per_category_ap(coco_eval: Any, names: Mapping[int, str]) -> List[Tuple[str, float]]:
    """(category name, AP in percent) per category of ``params.catIds``, at the last maxDets."""
    precision = coco_eval.eval["precision"]
    m = len(coco_eval.params.maxDets) - 1
    area_all = list(coco_eval.params.areaRngLbl).index("all")
    return [
        (names[cat_id], _mean_percent(precision[:, :, k, area_all, m]))
        for k, cat_id in enumerate(coco_eval.params.catIds)
    ]


def per_category_table(per_category: List[Tuple[str, float]]) -> str:
    """A markdown table of (name, AP) pairs, three pairs a row."""
    flat = list(itertools.chain(*per_category))
    cols = min(6, len(flat))
    rows = itertools.zip_longest(*[flat[i::cols] for i in range(cols)])
    return tabulate(rows, headers=["category", "AP"] * (cols // 2), tablefmt="pipe", floatfmt=".3f")
