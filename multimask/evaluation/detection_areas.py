"""
Per-detection quantities the evaluator derives from the predicted masks: the pixel area of each
mask, the predicted visible fraction (VRSP's rule) and UOAIS's "predicted occluded" flag.
"""

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from .occlusion import predicted_occluded, predicted_visible_fraction

__all__ = ["detection_areas"]


def detection_areas(
    by_coco_id: Dict[int, list],
    mask_names: Sequence[str],
    occlusion_masks: Tuple[str, ...],
    predicts_occlusion: bool,
) -> Dict[int, List[Dict[str, Any]]]:
    """
    Per image (COCO id), per detection: the pixel area of each predicted mask (``areas``), its
    predicted visible fraction (``fraction``, the VRSP rule) and whether UOAIS calls it occluded
    (``occluded``); NaN and False when the model does not predict both occlusion masks.

    Args:
        by_coco_id: COCO image id -> the image's encoded detections (``encode_instances``), each
            with ``multimask``: {mask name: RLE}.
        mask_names: the K predicted mask names.
        occlusion_masks: (whole, visible, ...) mask names.
        predicts_occlusion: whether both whole and visible are among `mask_names`.

    Returns:
        COCO image id -> one dict per detection with "areas" ({name: float}), "fraction" (float)
        and "occluded" (bool).
    """
    whole, visible = occlusion_masks[:2]
    names = list(mask_names)
    out = {}
    for i, insts in by_coco_id.items():
        # (N, K + 1): the K masks' areas, then whole & visible's; one area() call per
        # detection (pycocotools' area() of more than 255 RLEs overflows a uint8 in numpy 2)
        areas = np.zeros((len(insts), len(names) + 1))
        for j, d in enumerate(insts):
            rles = [d["multimask"][n] for n in names]
            if predicts_occlusion:
                pair = [d["multimask"][whole], d["multimask"][visible]]
                rles.append(mask_util.merge(pair, intersect=True))
            areas[j, : len(rles)] = mask_util.area(rles)
        if predicts_occlusion:
            w, v = areas[:, names.index(whole)], areas[:, names.index(visible)]
            fractions = predicted_visible_fraction(areas[:, -1], w).tolist()
            occluded = predicted_occluded(v, w).tolist()
        else:
            fractions, occluded = [float("nan")] * len(insts), [False] * len(insts)
        out[i] = [
            {"areas": dict(zip(names, a[:-1].tolist())), "fraction": f, "occluded": o}
            for a, f, o in zip(areas, fractions, occluded)
        ]
    return out
