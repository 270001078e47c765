"""
Predictions to LabelMe JSON without torch: the writer ``multimask.utils.labelme_export`` (the demo's
``--labelme-output``) and ``demo/onnx_demo.py`` share. Each object becomes one ``polygon`` shape per
mask name and outline, ``<class><separator><mask name>``, sharing the object's ``group_id``;
outlines follow the predicted pixels' borders, simplified (see ``mask_to_polygons``). The format
is LabelMe 6.3.1's (see ``multimask.utils.labelme_export``). Needs pycocotools (the polygon
rasteriser of the loader, which the simplification is checked with).
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_MIN_IOU",
    "LABELME_VERSION",
    "labelme_content",
    "mask_to_polygons",
]

# The LabelMe version whose file format is written. Older LabelMe reads it too: 4.x to 5.2 only log
# a warning for another major version, 5.3 and later do not compare versions.
LABELME_VERSION = "6.3.1"
# Default outline simplification in pixels, and the IoU each simplified outline keeps.
DEFAULT_EPSILON = 1.0
DEFAULT_MIN_IOU = 0.97
# Fractions of epsilon tried, largest first, until an outline keeps min_iou (then exact).
_EPSILON_STEPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _outline_bits(points: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """The pixels of one outline (V, 2) on the (height, width) crop whose corner is (x0, y0)."""
    # as multimask.structures.segmentation_to_bitmask rasterises polygons (the loader's rule)
    flat = np.asarray(points - (x0, y0), dtype=np.float64).ravel()
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([flat], height, width))).astype(
        bool
    )


def mask_to_polygons(
    mask: np.ndarray, epsilon: float = DEFAULT_EPSILON, min_iou: float = DEFAULT_MIN_IOU
) -> List[List[List[float]]]:
    """
    The outer outlines of a mask, along its pixels' borders, simplified.

    Args:
        mask: array of shape (H, W), bool or 0/1.
        epsilon: largest distance, in pixels, a simplified outline may move from the pixel border
            (``cv2.approxPolyDP``); 0 keeps every corner, so that the polygons rasterise (as
            pycocotools and the project's LabelMe loader do) to exactly the mask without its holes.
        min_iou: each simplified outline, rasterised, keeps at least this IoU with the pixels of
            its exact outline: a smaller epsilon is used where needed (small objects), down to
            none.

    Returns:
        list of polygons, each a list of [x, y] image coordinates with at least 3 points.
    """
    mask = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return []
    y0, x0 = rows[0], cols[0]
    crop = mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1].astype(np.uint8)
    # cv2 traces contours through pixel centres, half a pixel inside the mask. On a grid of half
    # pixels whose point (c / 2, r / 2) is set when a pixel touching it is set, the traced centres
    # are the pixel borders themselves.
    half = np.pad(np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1), 1)
    grid = half[:-1, :-1] | half[1:, :-1] | half[:-1, 1:] | half[1:, 1:]
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        exact = contour.reshape(-1, 2) / 2.0 + (x0, y0)
        if len(exact) < 3:
            continue
        polygons.append(_simplified(contour, exact, (x0, y0), epsilon, min_iou).tolist())
    return polygons


def _simplified(contour, exact, offset, epsilon: float, min_iou: float) -> np.ndarray:
    """The outline `exact` (V, 2) simplified by the largest step of epsilon that keeps min_iou."""
    if epsilon <= 0:
        return exact
    bx, by = np.floor(exact.min(axis=0)).astype(int)
    bw, bh = np.ceil(exact.max(axis=0)).astype(int) - (bx, by)
    reference = _outline_bits(exact, bx, by, bh, bw)
    area = reference.sum()
    for step in _EPSILON_STEPS:
        # the contour is on the half-pixel grid: epsilon pixels are 2 * epsilon of its units
        points = cv2.approxPolyDP(contour, 2 * epsilon * step, True).reshape(-1, 2) / 2.0 + offset
        if len(points) < 3:
            continue
        bits = _outline_bits(points, bx, by, bh, bw)
        inter = np.count_nonzero(bits & reference)
        if inter / (area + bits.sum() - inter) >= min_iou:
            return points
    return exact


def labelme_content(
    masks: np.ndarray,
    classes: Sequence[int],
    scores: Optional[Sequence[float]],
    image_size: Tuple[int, int],
    image_path: str,
    json_path: Optional[str],
    class_names: Optional[Sequence[str]],
    mask_names: Sequence[str],
    *,
    pred_mask_names: Optional[Sequence[str]] = None,
    separator: str = "_",
    epsilon: float = DEFAULT_EPSILON,
    min_iou: float = DEFAULT_MIN_IOU,
) -> Dict[str, Any]:
    """
    One image's predictions as a LabelMe file.

    Args:
        masks: shape (N, K, H, W), bool.
        classes: N contiguous class ids; scores: N scores written in each shape's
            ``description``, or None.
        image_size: (H, W).
        image_path: the image; ``imagePath`` is written relative to the JSON's folder.
        json_path: where to write the JSON (folders are created); None = do not write.
        class_names: contiguous class id -> name; None (or an id past its end) writes the id.
        mask_names: the mask names to write (a derived mask such as "occluded" is best left
            out, since the loader computes it).
        pred_mask_names: the names of the K masks; None = `mask_names`.
        separator: between class and mask name in a label.
        epsilon, min_iou: outline simplification (see :func:`mask_to_polygons`).

    Returns:
        dict: the LabelMe content (no embedded image data).
    """
    pred_mask_names = list(pred_mask_names if pred_mask_names is not None else mask_names)
    unknown = [n for n in mask_names if n not in pred_mask_names]
    if unknown:
        raise ValueError(f"mask names {unknown} are not among the predicted {pred_mask_names}")
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[1] != len(pred_mask_names):
        raise ValueError(
            f"pred_multimasks has shape {tuple(masks.shape)}, expected (N, "
            f"{len(pred_mask_names)}, H, W) for mask names {pred_mask_names}"
        )
    classes = [int(c) for c in classes]
    scores = [float(s) for s in scores] if scores is not None else [None] * len(classes)
    height, width = image_size
    shapes = []
    for i, (c, score) in enumerate(zip(classes, scores)):
        cls = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        for name in mask_names:
            mask = masks[i, pred_mask_names.index(name)]
            for points in mask_to_polygons(mask, epsilon, min_iou):
                shapes.append(
                    {
                        "label": f"{cls}{separator}{name}",
                        "points": points,
                        "group_id": i + 1,
                        "description": "" if score is None else f"score {score:.3f}",
                        "shape_type": "polygon",
                        "flags": {},
                        "mask": None,
                    }
                )
    folder = os.path.dirname(os.path.abspath(json_path or image_path))
    content = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": os.path.relpath(os.path.abspath(image_path), folder).replace(os.sep, "/"),
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }
    if json_path is not None:
        os.makedirs(folder, exist_ok=True)
        # as LabelMe writes its files: UTF-8, labels such as "café" unescaped
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=2)
    return content
