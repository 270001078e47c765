"""
Given boxes: masks predicted for boxes that come from elsewhere (the ground truth, another
detector's results file, a user's code) instead of the model's own detections.

The model input is a dataset dict with ``given_instances``: an ``Instances`` at the original image
size ("height" x "width") with ``pred_boxes`` (XYXY, original image coordinates),
``pred_classes`` (contiguous ids) and ``scores``; ``MultiMaskRCNN`` then predicts exactly one
mask set per box (see ``multimask.modeling.meta_arch``). Everything here builds and checks them.
"""

import json
import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager

__all__ = [
    "GIVEN_INSTANCES",
    "attach_given_boxes",
    "check_eval_boxes",
    "dataset_category_ids",
    "gt_given_instances",
    "load_detections",
    "make_given_instances",
    "records_to_given",
]

logger = logging.getLogger(__name__)

# Key of a dataset dict / model input holding the boxes to predict masks for.
GIVEN_INSTANCES = "given_instances"


def _array(values: Any, dtype, what: str, where: str) -> np.ndarray:
    """`values` (list, numpy array or tensor on any device) as a numpy array of `dtype`."""
    if isinstance(values, torch.Tensor):
        # user input, checked once per call on the host: not a hot path
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}{what} must be numbers: {e}") from None


def make_given_instances(
    image_size: Tuple[int, int],
    boxes: Any,
    classes: Any = None,
    scores: Any = None,
    *,
    num_classes: int,
    class_agnostic: bool,
    where: str = "",
) -> Instances:
    """
    Check boxes, classes and scores given for one image and hold them as ``Instances``.

    Args:
        image_size: (height, width) of the original image.
        boxes: (N, 4) XYXY boxes in original image coordinates (list, numpy array or tensor).
            Each must be finite, have x1 > x0 and y1 > y0, and lie inside [0, width] x [0, height].
        classes: N contiguous class ids in [0, num_classes), or None: allowed only when
            `class_agnostic` (then every ``pred_classes`` is 0).
        scores: N finite scores, or None (every score 1.0).
        num_classes: the model's ``ROI_HEADS.NUM_CLASSES``.
        class_agnostic: whether the mask head predicts one mask per name for all classes.
        where: prefix of error messages (a file and image id).

    Returns:
        Instances of `image_size` on the CPU: ``pred_boxes`` (float32), ``pred_classes`` (int64),
        ``scores`` (float32).

    Raises:
        ValueError: naming the first offending box, with `where`.
    """
    h, w = int(image_size[0]), int(image_size[1])
    b = _array(boxes, np.float64, "boxes", where)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{where}boxes must have shape (N, 4) (XYXY), got {tuple(b.shape)}")
    n = len(b)
    bad = np.flatnonzero(~np.isfinite(b).all(axis=1))
    if len(bad):
        raise ValueError(f"{where}box {bad[0]} is not finite: {b[bad[0]].tolist()}")
    bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if len(bad):
        raise ValueError(
            f"{where}box {bad[0]} {b[bad[0]].tolist()} is degenerate (XYXY needs x1 > x0, y1 > y0)"
        )
    bad = np.flatnonzero((b[:, :2] < 0).any(axis=1) | (b[:, 2] > w) | (b[:, 3] > h))
    if len(bad):
        raise ValueError(
            f"{where}box {bad[0]} {b[bad[0]].tolist()} lies outside the {w} x {h} image "
            f"(XYXY boxes in [0, {w}] x [0, {h}])"
        )
    if classes is None:
        if not class_agnostic:
            raise ValueError(
                f"{where}no classes given: this model's mask head is class-specific (one mask per "
                "class), so each box needs its class; give classes=, or use a class-agnostic head "
                "(CLS_AGNOSTIC_MASK)"
            )
        c = np.zeros(n, dtype=np.int64)
    else:
        c = _array(classes, np.float64, "classes", where).reshape(-1)
        if len(c) != n:
            raise ValueError(f"{where}{len(c)} classes for {n} boxes")
        bad = np.flatnonzero((c != np.round(c)) | (c < 0) | (c >= num_classes))
        if len(bad):
            raise ValueError(
                f"{where}class {c[bad[0]]:g} of box {bad[0]} is not in [0, {num_classes - 1}]"
            )
        c = c.astype(np.int64)
    if scores is None:
        s = np.ones(n, dtype=np.float32)
    else:
        s = _array(scores, np.float64, "scores", where).reshape(-1)
        if len(s) != n:
            raise ValueError(f"{where}{len(s)} scores for {n} boxes")
        bad = np.flatnonzero(~np.isfinite(s))
        if len(bad):
            raise ValueError(f"{where}score of box {bad[0]} is not finite: {s[bad[0]]}")
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.as_tensor(b, dtype=torch.float32))
    inst.pred_classes = torch.as_tensor(c, dtype=torch.int64)
    inst.scores = torch.as_tensor(s, dtype=torch.float32)
    return inst


def check_eval_boxes(value: str) -> str:
    """``MULTIMASK.EVAL_BOXES``: "" (own detections), "gt", or an existing detections file."""
    if not isinstance(value, str):
        raise ValueError(f"MULTIMASK.EVAL_BOXES must be a string, got {value!r}")
    if value not in ("", "gt") and not PathManager.isfile(value):
        raise FileNotFoundError(
            f"MULTIMASK.EVAL_BOXES = {value!r}: neither '' (the model's detections), 'gt' nor an "
            "existing detections JSON file"
        )
    return value


def dataset_category_ids(dataset_name: str) -> Dict[int, int]:
    """The dataset's category id -> contiguous class id (the identity without a mapping)."""
    meta = MetadataCatalog.get(dataset_name)
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        return {int(k): int(v) for k, v in mapping.items()}
    return {i: i for i in range(len(meta.get("thing_classes", None) or []))}


def gt_given_instances(dataset_dict: Mapping[str, Any], num_classes: int) -> Instances:
    """
    Every non-crowd annotation of a dataset dict as a given box (its class, score 1.0), in the
    order of ``annotations``; boxes are clipped to the image (amodal boxes of objects cut by the
    border may extend beyond it).
    """
    h, w = int(dataset_dict["height"]), int(dataset_dict["width"])
    annos = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = np.zeros((len(annos), 4))
    for j, a in enumerate(annos):
        boxes[j] = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    where = f"image_id {dataset_dict.get('image_id')} ({dataset_dict.get('file_name')}), gt: "
    return make_given_instances(
        (h, w),
        boxes,
        [a["category_id"] for a in annos],
        None,
        num_classes=num_classes,
        class_agnostic=False,
        where=where,
    )


def _read_records(path: str) -> List[Dict[str, Any]]:
    try:
        with PathManager.open(path, "r") as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"detections file {path}: not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise ValueError(
            f"detections file {path}: expected a list of COCO detection results (image_id, "
            f"category_id, bbox, score), got a {type(records).__name__}"
        )
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox"} <= set(r):
            raise ValueError(
                f"detections file {path}: record {i} lacks image_id, category_id or bbox: "
                f"{r!r:.200}"
            )
        if "mask_name" in r:
            raise ValueError(
                f"detections file {path}: record {i} has a mask_name (multimask's per-mask "
                "results, one record per mask): give one record per detection, e.g. "
                "coco_instances_results.json"
            )
    return records


def records_to_given(
    records: Sequence[Mapping[str, Any]],
    image_size: Tuple[int, int],
    category_ids: Mapping[int, int],
    num_classes: int,
    where: str,
) -> Instances:
    """
    COCO detection records of one image (``bbox`` XYWH, ``category_id`` in the dataset's ids,
    ``score``, 1.0 when absent) as given instances; an unknown category id is an error.
    """
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or not {"category_id", "bbox"} <= set(r):
            raise ValueError(f"{where}record {i} lacks category_id or bbox: {r!r:.200}")
    unknown = sorted({r["category_id"] for r in records} - set(category_ids), key=str)
    if unknown:
        raise ValueError(
            f"{where}category ids {unknown[:10]} are not the dataset's (known: "
            f"{sorted(category_ids)[:20]})"
        )
    xywh = np.asarray([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
    boxes = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    return make_given_instances(
        image_size,
        boxes,
        [category_ids[r["category_id"]] for r in records],
        [r.get("score", 1.0) for r in records],
        num_classes=num_classes,
        class_agnostic=False,
        where=where,
    )


def load_detections(
    path: str, dataset_name: str, dicts: Sequence[Mapping[str, Any]]
) -> Dict[Any, Instances]:
    """
    A COCO detection results JSON (detectron2's ``coco_instances_results.json`` layout:
    ``image_id``, ``category_id`` in the dataset's ids, ``bbox`` XYWH, ``score``) as given
    instances per image of the dataset (an image without a record: none).

    Raises:
        ValueError: naming `path`, for image ids not in the dataset, unknown category ids, or bad
            boxes.
    """
    records = _read_records(path)
    sizes = {d["image_id"]: (int(d["height"]), int(d["width"])) for d in dicts}
    by_image: Dict[Any, list] = {i: [] for i in sizes}
    unknown = sorted({r["image_id"] for r in records if r["image_id"] not in by_image}, key=str)
    if unknown:
        raise ValueError(
            f"detections file {path}: image ids {unknown[:10]} (of {len(unknown)} unknown) are "
            f"not in dataset '{dataset_name}'"
        )
    for r in records:
        by_image[r["image_id"]].append(r)
    category_ids = dataset_category_ids(dataset_name)
    return {
        i: records_to_given(
            recs,
            sizes[i],
            category_ids,
            len(category_ids),
            f"detections file {path}, image_id {i}: ",
        )
        for i, recs in by_image.items()
    }


def attach_given_boxes(
    dicts: List[Dict[str, Any]], eval_boxes: str, dataset_name: str
) -> List[Dict[str, Any]]:
    """
    The dataset dicts of `dataset_name`, each (a shallow copy) with ``given_instances`` from
    `eval_boxes`: "gt" (its non-crowd annotations) or a detections file; "" returns `dicts`.
    ``MultiMaskDatasetMapper`` passes the key through to the model input.
    """
    check_eval_boxes(eval_boxes)
    if not eval_boxes:
        return dicts
    if eval_boxes == "gt":
        num_classes = len(dataset_category_ids(dataset_name))
        given = {d["image_id"]: gt_given_instances(d, num_classes) for d in dicts}
    else:
        given = load_detections(eval_boxes, dataset_name, dicts)
    total = sum(len(g) for g in given.values())
    source = "ground-truth boxes" if eval_boxes == "gt" else f"detections of {eval_boxes}"
    logger.info(
        f"'{dataset_name}': masks for {total} given boxes ({source}) in {len(dicts)} images"
    )
    return [{**d, GIVEN_INSTANCES: given[d["image_id"]]} for d in dicts]
