"""
Predictions to LabelMe JSON: a trained model pre-annotates images, a person corrects them in
LabelMe, and :func:`multimask.data.register_multimask_labelme_instances` reads them back.

Each object becomes one ``polygon`` shape per mask name and outline, labelled
``<class><separator><mask name>``; all shapes of one object share its ``group_id`` (the instance
index + 1: 0 reads as "no group" to many LabelMe scripts). The outlines follow the pixel borders
of the predicted mask (a polygon rasterised as COCO and the project's loader do gives the pixels
back), simplified so that a person can edit them: Douglas-Peucker (``cv2.approxPolyDP``) within
``epsilon`` pixels, less where needed to keep each outline's IoU with its pixels at ``min_iou``.
Holes are filled (a LabelMe polygon has none).

The file is what LabelMe 6 writes (``labelme/_label_file.py`` ``write_label_file`` and
``labelme/app.py`` ``_shape_to_dict``, v6.3.1): the keys ``version``, ``flags``, ``shapes``,
``imagePath``, ``imageData``, ``imageHeight``, ``imageWidth`` in that order; per shape ``label``,
``points``, ``group_id``, ``description``, ``shape_type``, ``flags``, ``mask``; UTF-8 with labels
unescaped, indented by 2.
"""

from typing import Any, Dict, Optional, Sequence

import torch

from detectron2.structures import Instances

# torch-free, shared with demo/onnx_demo.py (mask_to_polygons is re-exported here)
from multimask_deploy.labelme import (  # noqa: F401
    DEFAULT_EPSILON,
    DEFAULT_MIN_IOU,
    LABELME_VERSION,
    labelme_content,
    mask_to_polygons,
)

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_MIN_IOU",
    "LABELME_VERSION",
    "instances_to_labelme",
    "mask_to_polygons",
]

def instances_to_labelme(
    instances: Instances,
    image_path: str,
    json_path: Optional[str],
    class_names: Optional[Sequence[str]],
    mask_names: Sequence[str],
    *,
    pred_mask_names: Optional[Sequence[str]] = None,
    separator: str = "_",
    epsilon: float = DEFAULT_EPSILON,
    min_iou: float = DEFAULT_MIN_IOU,
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
        epsilon: outline simplification in pixels; 0 = every pixel corner (see
            :func:`mask_to_polygons`).
        min_iou: the IoU each simplified outline keeps with its pixels.
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
    scores = instances.scores.tolist() if instances.has("scores") else None
    return labelme_content(
        masks,
        instances.pred_classes.tolist(),
        scores,
        (height, width),
        image_path,
        json_path,
        class_names,
        mask_names,
        pred_mask_names=pred_mask_names,
        separator=separator,
        epsilon=epsilon,
        min_iou=min_iou,
    )
