"""
Results JSON: predicted instances as COCO result records. The one encoder of results that the
evaluator (``multimask_instances_results.json``, ``coco_instances_results.json``) and the demo
(``--json-output``) share.

Two layouts, both lists of COCO result records (``image_id``, ``category_id``, ``bbox`` XYWH,
``score``, ``segmentation`` as a compressed RLE with str counts):

* multimask's: one record per (instance, mask name), with ``mask_name``; pycocotools' ``loadRes``
  reads the records of one name, e.g. ``[r for r in records if r["mask_name"] == "amodal"]``;
* detectron2's ``coco_instances_results.json``: one record per instance with one mask (the PRIMARY
  one), the records ``COCOEvaluator`` writes, so detectron2's tools read it unchanged.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.structures import BoxMode, Instances

__all__ = ["coco_records", "encode_instances", "instances_to_coco_json", "multimask_records"]

# contiguous class id -> the dataset's category id: a list indexed by class, or a dict
DatasetIds = Union[Sequence[int], Mapping[int, int]]


def encode_instances(
    instances: Instances, mask_names: Sequence[str], image_id: Any = None
) -> List[Dict[str, Any]]:
    """
    Encode the predictions of one image once: boxes, scores, classes and an RLE per mask name.

    Args:
        instances: predictions at the image size, with ``pred_boxes``, ``scores``,
            ``pred_classes`` and ``pred_multimasks`` (N, K, H, W), bool or probabilities (>= 0.5 is
            foreground), on any device.
        mask_names: the K names of ``pred_multimasks``, in order.
        image_id: named in error messages only.

    Returns:
        N dicts with "bbox" (XYWH_ABS, list of 4 floats), "score", "category_id" (the contiguous
        class) and "multimask" ({mask name: compressed RLE with str counts}).
    """
    if len(instances) == 0:
        return []
    if not instances.has("pred_multimasks"):
        raise ValueError(f"instances of image_id {image_id} have no pred_multimasks")
    masks = instances.pred_multimasks
    if masks.dim() != 4 or masks.shape[1] != len(mask_names):
        raise ValueError(
            f"image_id {image_id}: pred_multimasks has shape {tuple(masks.shape)}, expected "
            f"(N, {len(mask_names)}, H, W) for mask names {list(mask_names)}"
        )
    # bool is one byte of 0 or 1: the uint8 view pycocotools needs, without a copy
    masks = (masks if masks.dtype == torch.bool else masks >= 0.5).cpu().numpy().view(np.uint8)
    boxes = instances.pred_boxes.tensor.cpu().numpy()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.cpu().tolist()
    classes = instances.pred_classes.cpu().tolist()
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
        for box, score, cls, rles in zip(boxes, scores, classes, zip(*per_name))
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
        encoded: ``encode_instances`` of one image.
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


def instances_to_coco_json(
    instances: Instances,
    image_id: Any,
    mask_names: Sequence[str],
    *,
    file_name: Optional[str] = None,
    dataset_ids: Optional[DatasetIds] = None,
) -> List[Dict[str, Any]]:
    """
    multimask's records of one image's predictions (``encode_instances`` then
    ``multimask_records``), as ``multimask_instances_results.json`` holds them.

    Args:
        instances, mask_names: see ``encode_instances``.
        image_id, file_name, dataset_ids: see ``multimask_records``.
    """
    return multimask_records(
        encode_instances(instances, mask_names, image_id),
        image_id,
        dataset_ids=dataset_ids,
        file_name=file_name,
    )
