"""
COCO result records from numpy predictions, without torch: the encoder that
``multimask.utils.results_json`` (the evaluator's and ``demo/demo.py``'s results files) and
``demo/onnx_demo.py`` share, so both write the same records. Needs pycocotools (RLE encoding).
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["coco_records", "encode_arrays", "multimask_records"]

# contiguous class id -> the dataset's category id: a list indexed by class, or a dict
DatasetIds = Union[Sequence[int], Mapping[int, int]]


def encode_arrays(
    boxes: np.ndarray,
    scores: Sequence[float],
    classes: Sequence[int],
    masks: np.ndarray,
    mask_names: Sequence[str],
    image_id: Any = None,
) -> List[Dict[str, Any]]:
    """
    Encode the predictions of one image once: boxes, scores, classes and an RLE per mask name.

    Args:
        boxes: shape (N, 4), XYXY_ABS.
        scores, classes: N scores and contiguous class ids.
        masks: shape (N, K, H, W), bool or probabilities (>= 0.5 is foreground).
        mask_names: the K names of `masks`, in order.
        image_id: named in error messages only.

    Returns:
        N dicts with "bbox" (XYWH_ABS, list of 4 floats), "score", "category_id" (the contiguous
        class) and "multimask" ({mask name: compressed RLE with str counts}).
    """
    if len(scores) == 0:
        return []
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[1] != len(mask_names):
        raise ValueError(
            f"image_id {image_id}: pred_multimasks has shape {tuple(masks.shape)}, expected "
            f"(N, {len(mask_names)}, H, W) for mask names {list(mask_names)}"
        )
    # bool is one byte of 0 or 1: the uint8 view pycocotools needs, without a copy
    masks = (masks if masks.dtype == bool else masks >= 0.5).view(np.uint8)
    boxes = np.array(boxes, copy=True)
    boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH, in the boxes' dtype as BoxMode.convert does
    per_name = []
    for k in range(len(mask_names)):
        # one Fortran (H, W, 1) copy per mask: gathering the N masks into one (H, W, N) stack
        # first is about 1.4x slower at 2000 x 604
        rles = [mask_util.encode(np.asfortranarray(m[:, :, None]))[0] for m in masks[:, k]]
        for r in rles:
            r["counts"] = r["counts"].decode("utf-8")  # str, for json and pickling
        per_name.append(rles)
    return [
        {"bbox": box, "score": score, "category_id": cls, "multimask": dict(zip(mask_names, rles))}
        for box, score, cls, rles in zip(
            boxes.tolist(), np.asarray(scores).tolist(), np.asarray(classes).tolist(), zip(*per_name)
        )
    ]


def _category(d: Mapping[str, Any], dataset_ids: Optional[DatasetIds]) -> int:
    return int(dataset_ids[d["category_id"]]) if dataset_ids is not None else d["category_id"]


def multimask_records(
    encoded: Sequence[Mapping[str, Any]],
    image_id: Any,
    *,
    dataset_ids: Optional[DatasetIds] = None,
    file_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """
    multimask's layout: one record per (instance, mask name).

    Args:
        encoded: ``encode_arrays`` (or ``encode_instances``) of one image.
        image_id: written to every record.
        dataset_ids: contiguous class -> dataset category id; None: write the contiguous class.
        file_name: written to every record when given.

    Returns:
        dicts with "image_id", ["file_name"], "category_id", "bbox", "score", "mask_name" and
        "segmentation", the masks of an instance one after the other.
    """
    head = {"image_id": image_id, **({"file_name": file_name} if file_name is not None else {})}
    return [
        {
            **head,
            "category_id": _category(d, dataset_ids),
            "bbox": d["bbox"],
            "score": d["score"],
            "mask_name": name,
            "segmentation": rle,
        }
        for d in encoded
        for name, rle in d["multimask"].items()
    ]


def coco_records(
    encoded: Sequence[Mapping[str, Any]],
    image_id: Any,
    mask_name: str,
    *,
    dataset_ids: Optional[DatasetIds] = None,
) -> List[Dict[str, Any]]:
    """
    detectron2's layout (``COCOEvaluator``'s ``coco_instances_results.json``): one record per
    instance, with the mask `mask_name` as its ``segmentation``.

    Returns:
        dicts with "image_id", "category_id", "bbox", "score" and "segmentation", in that order.
    """
    return [
        {
            "image_id": image_id,
            "category_id": _category(d, dataset_ids),
            "bbox": d["bbox"],
            "score": d["score"],
            "segmentation": d["multimask"][mask_name],
        }
        for d in encoded
    ]
