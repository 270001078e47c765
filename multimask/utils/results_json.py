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

from typing import Any, Dict, List, Optional, Sequence

import torch

from detectron2.structures import Instances

# torch-free, shared with demo/onnx_demo.py; the record layouts are re-exported here
from multimask_deploy.results import (  # noqa: F401  (coco_records: re-exported)
    DatasetIds,
    coco_records,
    encode_arrays,
    multimask_records,
)

__all__ = ["coco_records", "encode_instances", "instances_to_coco_json", "multimask_records"]

def encode_instances(
    instances: Instances, mask_names: Sequence[str], image_id: Any = None
) -> List[Dict[str, Any]]:
    """
    Encode the predictions of one image once: boxes, scores, classes and an RLE per mask name
    (``multimask_deploy.results.encode_arrays`` on the Instances' fields).

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
    return encode_arrays(
        instances.pred_boxes.tensor.cpu().numpy(),
        instances.scores.cpu().numpy(),
        instances.pred_classes.cpu().numpy(),
        (masks if masks.dtype == torch.bool else masks >= 0.5).cpu().numpy(),
        mask_names,
        image_id,
    )


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
