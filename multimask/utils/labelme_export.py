"""
Predictions to LabelMe JSON: a trained model pre-annotates images, a person corrects them in
LabelMe, and :func:`multimask.data.register_multimask_labelme_instances` reads them back.

Each object becomes one ``polygon`` shape per mask name and outline, labelled
``<class><separator><mask name>``; all shapes of one object share its ``group_id`` (the instance
index + 1: 0 reads as "no group" to many LabelMe scripts). Polygons trace the pixel borders of the
predicted mask, so they rasterise back to the same pixels; holes are filled (a LabelMe polygon has
none) and ``epsilon`` simplifies the outlines for easier editing.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from detectron2.structures import Instances

__all__ = ["LABELME_VERSION", "instances_to_labelme", "mask_to_polygons"]

# The LabelMe file format version written (5.x reads it; 4.x ignores the newer shape keys).
LABELME_VERSION = "5.4.1"


def mask_to_polygons(mask: np.ndarray, epsilon: float = 0.0) -> List[List[List[float]]]:
    """
    The outer outlines of a mask, along its pixels' borders.

    Args:
        mask: array of shape (H, W), bool or 0/1.
        epsilon: largest distance, in pixels, a simplified outline may move from the pixel border
            (``cv2.approxPolyDP``); 0 keeps every corner, so that the polygons rasterise (with
            pycocotools) to exactly the mask without its holes.

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
        if epsilon > 0:
            contour = cv2.approxPolyDP(contour, 2 * epsilon, True)
        points = contour.reshape(-1, 2) / 2.0 + (x0, y0)
        if len(points) >= 3:
            polygons.append(points.tolist())
    return polygons


def instances_to_labelme(
    instances: Instances,
    image_path: str,
    json_path: Optional[str],
    class_names: Optional[Sequence[str]],
    mask_names: Sequence[str],
    *,
    pred_mask_names: Optional[Sequence[str]] = None,
    separator: str = "_",
    epsilon: float = 0.0,
    mask_threshold: float = 0.5,
) -> Dict[str, Any]:
    """
    One image's predictions as a LabelMe file.

    Args:
        instances: predictions at image size, with ``pred_multimasks`` (Tensor of shape
            (N, K, H, W), bool or probabilities), ``pred_classes`` and optionally ``scores``
            (written in each shape's ``description``).
        image_path: the image; ``imagePath`` is written relative to the JSON's folder.
        json_path: where to write the JSON (folders are created); None = do not write.
        class_names: contiguous class id -> name; None (or an id past its end) writes the id.
        mask_names: the mask names to write, e.g. ("amodal", "visible"): a derived mask such as
            "occluded" is best left out, since the loader computes it.
        pred_mask_names: the names of the K masks of ``pred_multimasks``; None = `mask_names`.
        separator: between class and mask name in a label.
        epsilon: outline simplification in pixels (see :func:`mask_to_polygons`).
        mask_threshold: probability above which a pixel is in the mask (float masks only).

    Returns:
        dict: the LabelMe content (no embedded image data).
    """
    pred_mask_names = list(pred_mask_names if pred_mask_names is not None else mask_names)
    unknown = [n for n in mask_names if n not in pred_mask_names]
    if unknown:
        raise ValueError(f"mask names {unknown} are not among the predicted {pred_mask_names}")
    height, width = instances.image_size
    masks = instances.pred_multimasks
    if masks.dim() != 4 or masks.shape[1] != len(pred_mask_names):
        raise ValueError(
            f"pred_multimasks has shape {tuple(masks.shape)}, expected (N, "
            f"{len(pred_mask_names)}, H, W) for mask names {pred_mask_names}"
        )
    masks = (masks if masks.dtype == torch.bool else masks >= mask_threshold).cpu().numpy()
    classes = instances.pred_classes.tolist()
    scores = instances.scores.tolist() if instances.has("scores") else [None] * len(classes)
    shapes = []
    for i, (c, score) in enumerate(zip(classes, scores)):
        cls = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        for name in mask_names:
            for points in mask_to_polygons(masks[i, pred_mask_names.index(name)], epsilon):
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
        with open(json_path, "w") as f:
            json.dump(content, f, indent=2)
    return content
