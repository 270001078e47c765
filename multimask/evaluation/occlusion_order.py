"""
Occlusion-order accuracy (OOACC) of uoais-v2 (ngzhili/uoais-v2, ``eval/eval_utils.py``:
``generate_ooam`` and ``eval_amodal_occ_on_OSD``; matching in ``eval/compute_PRF.py``
``multilabel_amodal_metrics``), re-implemented on multimask's ground truth and predictions.

Per image, with n ground-truth objects:

- the occlusion order adjacency matrix (OOAM) of n masks pairs is 1 on the diagonal and
  ``A[i, j] = 1`` when IoU(visible_i, occluded_j) > 0.1 (i occludes j), IoU = |a & b| / |a | b|,
  0 when the union is empty;
- predictions scored >= the score threshold (uoais-v2 runs its predictor at 0.5), those with a
  non-empty whole mask, are matched to the ground-truth objects by the Hungarian assignment that
  maximises the sum of the whole (amodal) masks' F-measures (2PR / (P + R), 0 without overlap):
  min(n, m) pairs, a pair of F-measure 0 included, as ``multilabel_amodal_metrics`` assigns;
- the predicted OOAM has, for the object matched to prediction p, p's visible mask and p's
  occluded mask ``whole XOR visible`` (uoais-v2's ``np.bitwise_xor(amodal, visible)``), and empty
  masks for unmatched objects;
- the entries where both matrices agree are correct, except that the row and column of an
  unmatched object count as wrong (its diagonal as right); ``correct += sum(agree) - n`` and
  ``pairs += n * n - n``.

OOACC = 100 * correct / pairs over all images (unmatched predictions cost nothing).

The ground-truth OOAM comes from the dataset's own pairwise order where the image has one
(``occlusion_order`` in its dataset dict, read from COCOA's ``depth_constraint``, SynTable's order
matrices or an ``occludes`` key: :mod:`multimask.data.datasets.order_field`), with ``order_gt``
"auto" (``MULTIMASK.ORDER_GT``); from the masks as above for every other image, and for all images
with "masks" (what uoais-v2 computes, also on SynTable).

Where multimask differs, on purpose: uoais-v2 builds its ground truth from OSD's files, where the
"visible mask" of object i is the whole visible id map with i's label set to 1 (every object's
pixels non-zero: a copy that was meant to be a binary mask) and the list of occluded masks holds
only the occluded objects (``occlusion_annotation/`` has no file for the others), so column j is
the j-th occluded object, not object j. Here the ground truth is what ``generate_ooam`` is written
for: object i's own visible mask and object j's own occluded mask (the dataset's occluded mask
when ``occlusion_masks`` names one and it is annotated, else whole - visible), aligned. Objects
whose whole or visible mask is not annotated, and crowd regions, are left out. Hungarian ties may
pair differently from uoais-v2's munkres package.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util

from ..data.datasets.order_field import IMAGE_ORDER_KEY
from ..structures import segmentation_to_bitmask

__all__ = [
    "ORDER_GT_SOURCES",
    "ORDER_IOU_THRESHOLD",
    "check_order_gt",
    "evaluate_occlusion_order",
    "hungarian_assignment",
    "image_order_counts",
    "occlusion_order_matrix",
    "stated_order_matrix",
]

logger = logging.getLogger(__name__)

# uoais-v2's generate_ooam(..., iou_threshold=0.1): i occludes j when the IoU is above it
ORDER_IOU_THRESHOLD = 0.1
# where the ground-truth order comes from (MULTIMASK.ORDER_GT)
ORDER_GT_SOURCES = ("auto", "masks")


def check_order_gt(order_gt: str) -> str:
    """`order_gt` if it is one of ORDER_GT_SOURCES, else a ValueError naming the option."""
    if order_gt not in ORDER_GT_SOURCES:
        raise ValueError(
            f"MULTIMASK.ORDER_GT (order_gt) must be one of {ORDER_GT_SOURCES}, got {order_gt!r}"
        )
    return order_gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a) + np.count_nonzero(b) - inter
    return inter / union if union > 0 else 0.0


def occlusion_order_matrix(
    visible: Sequence[np.ndarray],
    occluded: Sequence[np.ndarray],
    iou_threshold: float = ORDER_IOU_THRESHOLD,
) -> np.ndarray:
    """
    The OOAM of n objects: 1 on the diagonal, ``[i, j] = 1`` when IoU(visible[i], occluded[j]) >
    `iou_threshold`.

    Args:
        visible, occluded: n (H, W) bool masks each, object i's at index i.
        iou_threshold: the IoU above which i occludes j.

    Returns:
        ndarray of shape (n, n), float.
    """
    n = len(visible)
    ooam = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i != j and _iou(visible[i], occluded[j]) > iou_threshold:
                ooam[i, j] = 1
    return ooam


def hungarian_assignment(score: np.ndarray) -> List[Tuple[int, int]]:
    """
    The assignment of rows to columns that maximises the total `score` (Kuhn-Munkres with
    potentials), min(n, m) pairs for an (n, m) matrix.

    Returns:
        (row, column) pairs, sorted by row.
    """
    score = np.asarray(score, dtype=np.float64)
    if score.size == 0:
        return []
    transposed = score.shape[0] > score.shape[1]
    cost = (score.T if transposed else score).max() - (score.T if transposed else score)
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # column j (1-based) -> its row (1-based), 0 = none
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    pairs = [(int(match[j]) - 1, j - 1) for j in range(1, m + 1) if match[j]]
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    return sorted(pairs)


def _f_measures(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> np.ndarray:
    """(n, m) F-measures 2PR / (P + R) of whole masks, 0 where they do not overlap."""
    f = np.zeros((len(gt), len(pred)))
    for i, g in enumerate(gt):
        for j, p in enumerate(pred):
            tp = np.count_nonzero(g & p)
            if tp:
                prec, rec = tp / np.count_nonzero(p), tp / np.count_nonzero(g)
                f[i, j] = 2 * prec * rec / (prec + rec)
    return f


def image_order_counts(
    gt_whole: Sequence[np.ndarray],
    gt_visible: Sequence[np.ndarray],
    gt_occluded: Sequence[np.ndarray],
    pred_whole: Sequence[np.ndarray],
    pred_visible: Sequence[np.ndarray],
    gt_ooam: Optional[np.ndarray] = None,
) -> Tuple[int, int, int]:
    """
    uoais-v2's OOAM counts of one image.

    Args:
        gt_whole, gt_visible, gt_occluded: the n ground-truth objects' (H, W) bool masks.
        pred_whole, pred_visible: the m kept predictions' (H, W) bool masks.
        gt_ooam: the ground-truth (n, n) OOAM stated by the dataset (1 on the diagonal); None =
            built from `gt_visible` and `gt_occluded`.

    Returns:
        (correct, pairs, matched): agreeing off-diagonal entries, n * n - n, matched objects.
    """
    n = len(gt_whole)
    if n == 0:
        return 0, 0, 0
    if gt_ooam is None:
        gt_ooam = occlusion_order_matrix(gt_visible, gt_occluded)
    pairs = hungarian_assignment(_f_measures(gt_whole, pred_whole))
    empty = np.zeros_like(gt_whole[0])
    vis, occ = [empty] * n, [empty] * n
    for i, p in pairs:
        vis[i], occ[i] = pred_visible[p], pred_whole[p] ^ pred_visible[p]
    agree = occlusion_order_matrix(vis, occ) == gt_ooam
    for i in sorted(set(range(n)) - {i for i, _ in pairs}):
        agree[:, i] = agree[i, :] = False
        agree[i, i] = True
    return int(agree.sum()) - n, n * n - n, len(pairs)


def _gt_masks(
    d: Mapping[str, Any], whole: str, visible: str, occluded: Optional[str]
) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray], List[int]]:
    """
    The whole, visible and occluded masks of an image's objects that have whole and visible, and
    those objects' positions in its annotations.
    """
    h, w = int(d["height"]), int(d["width"])
    out: Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]] = ([], [], [])
    kept = []
    for k, a in enumerate(d.get("annotations", [])):
        masks = a.get("multimask", {})
        if a.get("iscrowd", 0) or masks.get(whole) is None or masks.get(visible) is None:
            continue
        kept.append(k)
        wm = segmentation_to_bitmask(masks[whole], h, w).astype(bool)
        vm = segmentation_to_bitmask(masks[visible], h, w).astype(bool)
        if occluded is not None and masks.get(occluded) is not None:
            om = segmentation_to_bitmask(masks[occluded], h, w).astype(bool)
        else:
            om = wm & ~vm
        for lst, m in zip(out, (wm, vm, om)):
            lst.append(m)
    return (*out, kept)


def stated_order_matrix(d: Mapping[str, Any], kept: Sequence[int]) -> Optional[np.ndarray]:
    """
    The OOAM of the annotations at positions `kept` from the image's ``occlusion_order`` (pairs
    [i, j] of annotation positions, i occludes j); None when the image has none.
    """
    pairs = d.get(IMAGE_ORDER_KEY)
    if pairs is None:
        return None
    index = {k: n for n, k in enumerate(kept)}
    ooam = np.eye(len(kept))
    for i, j in pairs:
        if i in index and j in index:
            ooam[index[i], index[j]] = 1
    return ooam


def evaluate_occlusion_order(
    dicts: Sequence[Mapping[str, Any]],
    predictions: Mapping[Any, Sequence[Mapping[str, Any]]],
    occlusion_masks: Sequence[str],
    score_threshold: float = 0.5,
    order_gt: str = "auto",
) -> Dict[str, float]:
    """
    OOACC over the images of `predictions`.

    Args:
        dicts: the test set's dataset dicts (``annotations[i]["multimask"]``).
        predictions: image_id -> its predictions as ``results_json.encode_instances`` gives them
            (``score``, ``multimask`` name -> RLE at image size).
        occlusion_masks: [whole, visible] or [whole, visible, occluded] mask names.
        score_threshold: predictions scored below it are left out.
        order_gt: "auto": the dataset's stated order where an image has one, else the masks';
            "masks": the masks' everywhere (uoais-v2).

    Returns:
        {"OOACC": percent (NaN without any pair), "correct", "pairs", "matched", "instances",
        "images", "images_stated_order" (images whose ground truth is the dataset's order)}.
    """
    check_order_gt(order_gt)
    whole, visible = occlusion_masks[0], occlusion_masks[1]
    occluded = occlusion_masks[2] if len(occlusion_masks) > 2 else None
    by_id = {d["image_id"]: d for d in dicts}
    correct = pairs = matched = instances = stated = 0
    for image_id, insts in predictions.items():
        d = by_id[image_id]
        gt_whole, gt_visible, gt_occluded, kept_gt = _gt_masks(d, whole, visible, occluded)
        gt_ooam = stated_order_matrix(d, kept_gt) if order_gt == "auto" else None
        stated += gt_ooam is not None
        kept = [p for p in insts if p["score"] >= score_threshold]
        pw = [mask_util.decode(p["multimask"][whole]).astype(bool) for p in kept]
        pv = [mask_util.decode(p["multimask"][visible]).astype(bool) for p in kept]
        nonempty = [k for k, m in enumerate(pw) if m.any()]
        c, t, k = image_order_counts(
            gt_whole,
            gt_visible,
            gt_occluded,
            [pw[i] for i in nonempty],
            [pv[i] for i in nonempty],
            gt_ooam,
        )
        correct, pairs, matched, instances = (
            correct + c,
            pairs + t,
            matched + k,
            instances + len(gt_whole),
        )
    if pairs == 0:
        logger.warning("[occlusion order] no image has two ground-truth objects: OOACC is NaN")
    return {
        "OOACC": 100.0 * correct / pairs if pairs else float("nan"),
        "correct": float(correct),
        "pairs": float(pairs),
        "matched": float(matched),
        "instances": float(instances),
        "images": float(len(predictions)),
        "images_stated_order": float(stated),
    }
