"""
Generic multi-mask COCO JSON: one call and a field mapping register a dataset of your own.

A COCO-style JSON (``images``, ``annotations``, ``categories``) whose annotations carry several
masks under different keys is read with a *mask-field mapping*, an ordered dict mask name ->
expression::

    register_multimask_coco_instances(
        "my_train", {}, "annotations/train.json", "images/",
        mask_fields={
            "amodal": "segmentation",             # the annotation key that holds the mask
            "visible": "visible_mask or amodal",  # that key, or the amodal mask when it is absent
            "occluded": "amodal - visible",       # derived: the amodal pixels not in visible
        },
    )

Expression syntax (tokens separated by spaces):

- ``KEY``: the value of annotation key KEY: polygons (a list of flat ``[x0, y0, x1, y1, ...]``
  lists, or one flat list as in COCOA) or an RLE dict (compressed or uncompressed, with ``size`` =
  [height, width]). An absent key or a ``null`` value means *not annotated* (None in the dataset
  dict); an empty list is an annotated, empty mask.
- ``A or B``: A when A is present in the annotation, else B. COCOA and D2SA store no visible mask
  for unoccluded objects: ``"visible": "visible_mask or amodal"``.
- ``A - B``, ``A & B``, ``A | B``: difference, intersection and union of two masks; not annotated
  when either side is not annotated.
- An operand that names another mask of the mapping refers to that mask, ``empty`` is an empty
  mask, and any other operand is an annotation key (so ``"occluded": "invisible_mask or empty"``
  works too). Masks may refer to each other in any order, but not in a cycle.

The first mask of the mapping is the dataset's primary mask: it is also written to
``segmentation``, so that detectron2's own tools see one ordinary mask per instance.

Each annotation of the resulting standard dataset dict has ``bbox`` (XYWH_ABS, read from
``bbox_field``, or computed from the primary mask when that key is absent), ``category_id``
(contiguous), ``iscrowd``, ``multimask`` (dict mask name -> polygons / RLE dict / None),
``segmentation`` when the primary mask is annotated, and ``occlude_rate`` when the JSON has it.
An annotation may state which annotations of its image it occludes (``occludes``: their ids; see
:mod:`.order_field`): the image's dict then has ``occlusion_order``, the ground truth of
``MULTIMASK.ORDER_EVAL``.
Malformed input raises ValueError (or FileNotFoundError) naming the file and the image / annotation
id; polygons with fewer than 3 points or an odd number of coordinates are dropped with a count in
the log, as detectron2 drops them (``multimask.structures.segmentation.is_valid_polygon``). A
mapping key that no annotation of the file has (often a typo) is logged as a warning: its masks are
then not annotated, which trains with a zero loss for them.
"""

import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ...structures import segmentation_to_rle
from .mask_fields import MaskFields
from .order_field import ORDER_KEY, OrderCollector

__all__ = [
    "load_multimask_coco_json",
    "multimask_dicts_from_coco",
    "register_multimask_coco_instances",
    "read_json",
]

logger = logging.getLogger(__name__)

EVALUATOR_TYPE = "multimask_coco"


def dataset_metadata(fields: MaskFields, **extra: Any) -> Dict[str, Any]:
    """The metadata every multi-mask loader registers: evaluator type, mask names and mapping."""
    return {
        "evaluator_type": EVALUATOR_TYPE,
        "mask_names": list(fields.names),
        "mask_fields": dict(fields.mask_fields),
        **extra,
    }


def read_json(json_file: str) -> Dict[str, Any]:
    """Read a JSON annotation file; FileNotFoundError or ValueError naming the file if it cannot."""
    if not PathManager.isfile(json_file):
        raise FileNotFoundError(f"annotation file {json_file} does not exist")
    try:
        with PathManager.open(json_file, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: malformed JSON: {e}") from None


def _check_list(coco: Mapping[str, Any], key: str, json_file: str) -> List[Dict[str, Any]]:
    value = coco.get(key) if isinstance(coco, Mapping) else None
    if not isinstance(value, list):
        raise ValueError(
            f"{json_file}: a COCO JSON needs a list '{key}', got {type(value).__name__}"
        )
    return value


def _categories(coco: Mapping[str, Any], json_file: str) -> Dict[int, str]:
    cats = {}
    for c in _check_list(coco, "categories", json_file):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{json_file}: every category needs 'id' and 'name', got {c!r}")
        cats[c["id"]] = c["name"]
    if not cats:
        raise ValueError(f"{json_file}: 'categories' is empty")
    return dict(sorted(cats.items()))


def _image_records(
    coco: Mapping[str, Any], json_file: str, image_root: str, check_images: bool
) -> Dict[Any, Dict[str, Any]]:
    records = {}
    missing = []
    for img in _check_list(coco, "images", json_file):
        for k in ("id", "file_name", "height", "width"):
            if not isinstance(img, dict) or k not in img:
                where = f"image id {img.get('id')}" if isinstance(img, dict) else f"image {img!r}"
                raise ValueError(f"{json_file}: {where} has no '{k}'")
        file_name = os.path.join(image_root, img["file_name"])
        where = f"{json_file}: image id {img['id']} ({img['file_name']})"
        if img["id"] in records:
            # a dict keyed by id would keep one of them, silently, with both images' annotations
            raise ValueError(f"{where}: the id is used by another image too")
        if check_images and not PathManager.isfile(file_name):
            missing.append((file_name, img["id"]))
        records[img["id"]] = {
            "file_name": file_name,
            "height": _image_side(img, "height", where),
            "width": _image_side(img, "width", where),
            "image_id": img["id"],
            "annotations": [],
        }
    if missing:
        file_name, image_id = missing[0]
        raise FileNotFoundError(
            f"{json_file}: image id {image_id}: file {file_name} does not exist"
            + (
                f" ({len(missing) - 1} more images are missing under {image_root})"
                if len(missing) > 1
                else ""
            )
        )
    return records


def _image_side(img: Mapping[str, Any], key: str, where: str) -> int:
    try:
        value = int(img[key])
    except (TypeError, ValueError):
        value = 0
    if value < 1 or isinstance(img[key], bool):
        raise ValueError(f"{where}: '{key}' must be a positive integer, got {img[key]!r}")
    return value


def _bbox(
    ann: Mapping[str, Any], bbox_field: str, primary: Optional[Any], h: int, w: int, where: str
):
    bbox = ann.get(bbox_field)
    if bbox is None:
        if primary is None:
            raise ValueError(
                f"{where}: no '{bbox_field}' and no primary mask to compute a box from"
            )
        return [float(v) for v in mask_util.toBbox(segmentation_to_rle(primary, h, w))]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: '{bbox_field}' must be [x, y, width, height], got {bbox!r}")
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{bbox_field}' must hold 4 numbers, got {bbox!r}") from None
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise ValueError(
            f"{where}: '{bbox_field}' {bbox!r} must be finite with width and height >= 0"
        )
    return box


def _set_classes(
    dataset_name: str, json_file: str, classes: List[str], id_map: Dict[int, int]
) -> None:
    """
    Set the classes the file declares in `dataset_name`'s metadata; a clear error, instead of
    detectron2's AssertionError, when the metadata already holds others (a builtin name's
    released categories, or classes given at registration).
    """
    meta = MetadataCatalog.get(dataset_name)
    for key, value in (("thing_classes", classes), ("thing_dataset_id_to_contiguous_id", id_map)):
        known = meta.get(key)
        if known is not None and (list(known) if key == "thing_classes" else known) != value:
            raise ValueError(
                f"{json_file}: its categories give {key} = {value}, but dataset "
                f"'{dataset_name}' was registered with {known}. Is it the file the name expects "
                "(e.g. KINS 2020's update_*_2020.json, 8 categories, vs KINS 2019's "
                "instances_*.json, 7)?"
            )
    if meta.get("thing_classes") is None:
        meta.set(thing_classes=classes)
    if meta.get("thing_dataset_id_to_contiguous_id") is None:
        meta.set(thing_dataset_id_to_contiguous_id=id_map)


def _occlude_rate(value: Any, where: str) -> Any:
    # checked here: the evaluator reads it only after training
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
    ):
        raise ValueError(f"{where}: occlude_rate {value!r} is not a number in [0, 1]")
    return value


def multimask_dicts_from_coco(
    coco: Mapping[str, Any],
    json_file: str,
    image_root: str,
    mask_fields: Mapping[str, str],
    dataset_name: Optional[str] = None,
    *,
    bbox_field: str = "bbox",
    extra_annotation_keys: Sequence[str] = (),
    check_images: bool = True,
    depth_key: Optional[str] = None,
    cluster_key: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """
    Turn a loaded COCO-style dict into standard dataset dicts with ``multimask`` annotations.

    Args:
        coco: the JSON content (``images``, ``annotations``, ``categories``).
        json_file: its path, used in messages and errors only.
        image_root: directory that image ``file_name`` entries are relative to.
        mask_fields: mask name -> expression (see the module docstring).
        dataset_name: if given, ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` are set
            in its metadata.
        bbox_field: annotation key of the XYWH box; absent -> computed from the primary mask.
        extra_annotation_keys: other annotation keys copied as they are when present.
        check_images: whether to fail here, before training, when an image file does not exist.
        depth_key: annotation key of the depth order (smaller = in front), read by
            ``occluders(...)`` masks and copied to the dataset dicts; None = no order.
        cluster_key: annotation key of the cluster the depth order holds in (KINS ``oco_id``):
            objects of different clusters never occlude each other. Copied too; None = one
            order for the whole image.

    Returns:
        list[dict]: one per image, in detectron2's standard format.
    """
    fields = mask_fields if isinstance(mask_fields, MaskFields) else MaskFields(mask_fields)
    primary_name = fields.names[0]
    categories = _categories(coco, json_file)
    id_map = {cat_id: i for i, cat_id in enumerate(categories)}
    if dataset_name is not None:
        _set_classes(dataset_name, json_file, list(categories.values()), id_map)
    records = _image_records(coco, json_file, image_root, check_images)

    num_dropped_polygons = num_dropped_instances = num_instances = 0
    keys_seen = set()  # every annotation key of the file, to spot mapping keys that never occur
    annotations = _check_list(coco, "annotations", json_file)
    # the dataset's own occlusion order (order_field.py), when its annotations state one
    has_order = any(ORDER_KEY in a for a in annotations if isinstance(a, dict))
    order = OrderCollector(json_file) if has_order else None
    for ann in annotations:
        if not isinstance(ann, dict):
            raise ValueError(f"{json_file}: annotation {ann!r} is not a dict")
        keys_seen.update(k for k, v in ann.items() if v is not None)
        where = f"{json_file}: annotation id {ann.get('id')} (image id {ann.get('image_id')})"
        record = records.get(ann.get("image_id"))
        if record is None:
            raise ValueError(f"{where}: its image_id is not in 'images'")
        if ann.get("category_id") not in id_map:
            raise ValueError(
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                f"(ids {list(categories)})"
            )
        h, w = record["height"], record["width"]
        try:
            masks, dropped = fields.resolve(ann, h, w)
        except ValueError as e:  # MaskFieldError, or pycocotools on a mask it cannot combine
            raise ValueError(f"{where}: {e}") from None
        num_dropped_polygons += dropped
        if all(m is None for m in masks.values()):
            # every mask missing or degenerate: nothing to learn from (detectron2 skips these too)
            num_dropped_instances += 1
            if order is not None:
                order.add(ann, None)
            continue
        obj = {
            "bbox": _bbox(ann, bbox_field, masks[primary_name], h, w, where),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[ann["category_id"]],
            "iscrowd": ann.get("iscrowd", 0),
            "multimask": masks,
        }
        if masks[primary_name] is not None:
            obj["segmentation"] = masks[primary_name]
        if "occlude_rate" in ann:
            obj["occlude_rate"] = _occlude_rate(ann["occlude_rate"], where)
        for key in (*extra_annotation_keys, *(k for k in (depth_key, cluster_key) if k)):
            if key in ann:
                obj[key] = ann[key]
        if order is not None:
            order.add(ann, len(record["annotations"]))
        record["annotations"].append(obj)
        num_instances += 1

    if num_dropped_polygons:
        logger.warning(
            f"{json_file}: dropped {num_dropped_polygons} polygons with fewer than 3 points or an "
            "odd number of coordinates (detectron2's rule); "
            f"{num_dropped_instances} instances were left without any valid mask and skipped."
        )
    never = [k for k in fields.keys if k not in keys_seen]
    if never and annotations:
        users = [n for n, expr in fields.mask_fields.items() if set(expr.split()) & set(never)]
        logger.warning(
            f"{json_file}: no annotation has the key(s) {never} that mask_fields reads for masks "
            f"{users}: those masks are not annotated (or take their 'or' fallback) everywhere. "
            f"Is the mapping right? The annotations' keys are {sorted(keys_seen)}."
        )
    if order is not None:
        num = order.finish(records)
        logger.info(f"{json_file}: the occlusion order of {num} images from '{ORDER_KEY}'")
    dicts = list(records.values())
    if fields.occluder_names:
        for record in dicts:
            fields.resolve_occluders(record["annotations"], depth_key, cluster_key)
    logger.info(
        f"Loaded {len(dicts)} images with {num_instances} instances and masks {fields.names} "
        f"from {json_file}"
    )
    return dicts


def load_multimask_coco_json(
    json_file: str,
    image_root: str,
    mask_fields: Mapping[str, str],
    dataset_name: Optional[str] = None,
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """
    Load a multi-mask COCO JSON file into standard dataset dicts.

    Args:
        json_file: path of the JSON.
        image_root, mask_fields, dataset_name, kwargs: see :func:`multimask_dicts_from_coco`.

    Returns:
        list[dict]: one per image, each annotation with a ``multimask`` dict in mapping order.
    """
    return multimask_dicts_from_coco(
        read_json(json_file), json_file, image_root, mask_fields, dataset_name, **kwargs
    )


def register_multimask_coco_instances(
    name: str,
    metadata: Mapping[str, Any],
    json_file: str,
    image_root: str,
    mask_fields: Mapping[str, str],
    **kwargs: Any,
) -> None:
    """
    Register a multi-mask COCO JSON dataset under `name`, loaded on first use.

    The mapping is checked here, so a bad expression fails at registration. The metadata records
    ``mask_names`` (the mapping's names, in order), ``mask_fields``, ``json_file``, ``image_root``
    and ``evaluator_type = "multimask_coco"``; ``thing_classes`` is set when the JSON is loaded.

    Args:
        name: the dataset name, e.g. "my_amodal_train".
        metadata: extra metadata (may be empty).
        json_file: path of the JSON.
        image_root: directory of the images.
        mask_fields: mask name -> expression (see the module docstring).
        kwargs: ``bbox_field``, ``extra_annotation_keys``, ``check_images``, ``depth_key``,
            ``cluster_key`` of the loader.
    """
    fields = MaskFields(mask_fields)
    DatasetCatalog.register(
        name, lambda: load_multimask_coco_json(json_file, image_root, fields, name, **kwargs)
    )
    MetadataCatalog.get(name).set(
        **dataset_metadata(fields, json_file=json_file, image_root=image_root, **metadata)
    )
