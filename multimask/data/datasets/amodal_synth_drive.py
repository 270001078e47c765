"""
AmodalSynthDrive (ASD), the amodal instance segmentation task, in two released layouts.

**The per-frame layout** (format ``asd_instances``), as ifnspaml/S-AModal reads it
(``datasets/amodal_synth_drive.py``, ``ASD_Dataset``)::

    <split>/amodal_instance_seg/front/<video>/<frame>_aminseg.json   objects, keyed by instance id
    <split>/amodal_instance_seg/front/<video>/<frame>_aminseg.png    visible instance-id map
    <split>/images/front/<video>/<frame>_rgb.jpg                      the image (1920 x 1080)

Each JSON entry has ``category_id``, ``track_id``, ``occluded`` and, only for occluded objects,
``amodal_mask`` and ``occlusion_mask`` (compressed RLEs of the whole image). The visible mask is
the id map's pixels equal to the instance id (S-AModal builds the amodal mask of an unoccluded
object that way); an unoccluded object's amodal mask is its visible mask and its occluded mask is
an annotated empty mask. As S-AModal does, objects whose amodal mask is empty are dropped (counted
in the log), the occlusion rate is area(occlusion) / area(amodal), and the two category ids its
loader corrects (21 -> 27 truck, 11 -> 26 car: wrong annotations of two released frames) are
corrected here too, logged. The classes are the 7 S-AModal lists (``ASD_INSTANCE_CATEGORIES``).

**APSNet's COCO conversion** (format ``asd_apsnet``; the converter of the amodal panoptic code,
``Convert AmodalSynthDrive to coco format``): ``segmentation`` and ``bbox`` are the **visible**
mask and box, ``amodal_segmentation`` / ``amodal_bbox`` the amodal ones, ``occlusion_segmentation``
the occluded part and ``occluder_segmentation`` the occluders' pixels (``[]`` when unoccluded), all
polygons. The mapping therefore swaps the roles a flat COCO file usually has; add
``mask_fields={"occluder": "occluder_segmentation"}`` at registration to train the occluder mask.

Errors name the frame file: an id of the id map without a JSON entry, a JSON key that is not an
integer id, an occluded entry without ``amodal_mask``, a missing image or id map, an id map or RLE
whose size differs from the image.
"""

import glob
import logging
import os
from typing import Any, Dict, List

import numpy as np

from .coco import read_json
from .mask_images import encode_rle, image_size, progress, read_mask_png, rle_area

__all__ = [
    "APSNET_MASK_FIELDS",
    "ASD_INSTANCE_CATEGORIES",
    "ASD_MASK_FIELDS",
    "read_asd_instances",
]

logger = logging.getLogger(__name__)

# as S-AModal's ASD_Dataset lists them (Cityscapes-style label ids)
ASD_INSTANCE_CATEGORIES = [
    {"id": 24, "name": "person", "supercategory": "human"},
    {"id": 25, "name": "rider", "supercategory": "human"},
    {"id": 26, "name": "car", "supercategory": "vehicle"},
    {"id": 27, "name": "truck", "supercategory": "vehicle"},
    {"id": 28, "name": "bus", "supercategory": "vehicle"},
    {"id": 32, "name": "motor", "supercategory": "vehicle"},
    {"id": 33, "name": "bike", "supercategory": "vehicle"},
]
# S-AModal's fixes of wrongly labelled objects (a truck and a car of two released frames)
ASD_CATEGORY_FIXES = {21: 27, 11: 26}
ASD_MASK_FIELDS = {"amodal": "amodal_mask", "visible": "visible_mask", "occluded": "occlusion_mask"}
APSNET_MASK_FIELDS = {
    "amodal": "amodal_segmentation",
    "visible": "segmentation",
    "occluded": "occlusion_segmentation",
}
_JSON_SUFFIX, _IMAGE_SUFFIX, _BACKGROUND = "_aminseg.json", "_rgb.jpg", 0


def read_asd_instances(gt_root: str, image_root: str) -> Dict[str, Any]:
    """
    Read an ASD ``amodal_instance_seg`` folder into the COCO-style dict the generic loader maps.

    Args:
        gt_root: the annotation folder of one split and camera, e.g.
            ``train/amodal_instance_seg/front``, holding one folder per video.
        image_root: the matching image folder, e.g. ``train/images/front``.

    Returns:
        dict: ``images`` (id = ``<video>/<frame>``, sizes from the image headers),
        ``annotations`` (id = ``<video>/<frame>_aminseg.json instance <id>``, with
        ``amodal_mask``, ``visible_mask``, ``occlusion_mask`` (an RLE, ``[]`` when unoccluded,
        absent when an occluded entry has none), ``occlude_rate`` and ``track_id``; the loader
        computes the box from the amodal mask) and ``categories``.
    """
    frames = sorted(glob.glob(os.path.join(gt_root, "*", "*" + _JSON_SUFFIX)))
    if not frames:
        raise FileNotFoundError(
            f"AmodalSynthDrive: no <video>/<frame>{_JSON_SUFFIX} file under {gt_root}"
        )
    images, annotations = [], []
    counts = {"empty": 0, "fixed": 0}
    for json_path in progress(frames, "AmodalSynthDrive"):
        rel = os.path.relpath(json_path, gt_root)[: -len(_JSON_SUFFIX)]
        file_name = rel + _IMAGE_SUFFIX
        size = image_size(os.path.join(image_root, file_name), f"AmodalSynthDrive frame {rel}")
        images.append({"id": rel, "file_name": file_name, "height": size[0], "width": size[1]})
        annotations.extend(_frame_objects(json_path, rel, size, counts))
    if counts["empty"] or counts["fixed"]:
        logger.warning(
            f"AmodalSynthDrive {gt_root}: dropped {counts['empty']} objects with an empty amodal "
            f"mask and corrected {counts['fixed']} category ids {ASD_CATEGORY_FIXES}, as S-AModal "
            "does"
        )
    return {"images": images, "annotations": annotations, "categories": ASD_INSTANCE_CATEGORIES}


def _frame_objects(
    json_path: str, image_id: str, size: tuple, counts: Dict[str, int]
) -> List[Dict[str, Any]]:
    entries = read_json(json_path)
    if not isinstance(entries, dict):
        raise ValueError(f"{json_path}: expected a dict instance id -> object")
    png_path = json_path[: -len(".json")] + ".png"
    id_map = read_mask_png(png_path, f"AmodalSynthDrive visible id map of {image_id}", size)
    keys = {}
    for key in entries:
        try:
            keys[int(key)] = key
        except ValueError:
            raise ValueError(f"{json_path}: key {key!r} is not an instance id") from None
    in_map = [int(v) for v in np.unique(id_map) if v != _BACKGROUND]
    unknown = [v for v in in_map if v not in keys]
    if unknown:
        raise ValueError(
            f"{png_path}: instance ids {unknown} of the id map have no entry in {json_path}"
        )
    objects = []
    for inst_id, key in sorted(keys.items()):
        entry = entries[key]
        where = f"{json_path}: instance {key}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a dict")
        visible = encode_rle(id_map == inst_id)
        ann = {
            "id": f"{image_id}{_JSON_SUFFIX} instance {key}",
            "image_id": image_id,
            "category_id": entry.get("category_id"),
            "iscrowd": 0,
            "visible_mask": visible,
        }
        if ann["category_id"] in ASD_CATEGORY_FIXES:
            ann["category_id"] = ASD_CATEGORY_FIXES[ann["category_id"]]
            counts["fixed"] += 1
        if "track_id" in entry:
            ann["track_id"] = entry["track_id"]
        if entry.get("amodal_mask"):
            ann["amodal_mask"] = entry["amodal_mask"]
            if entry.get("occlusion_mask"):
                ann["occlusion_mask"] = entry["occlusion_mask"]
        elif entry.get("occluded"):
            raise ValueError(f"{where} is occluded but has no 'amodal_mask'")
        else:
            ann["amodal_mask"], ann["occlusion_mask"] = visible, []
        try:
            amodal_area = rle_area(ann["amodal_mask"])
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{where}: 'amodal_mask' is not an RLE ({e})") from None
        if amodal_area == 0:
            counts["empty"] += 1
            continue
        occlusion = ann.get("occlusion_mask")
        if isinstance(occlusion, dict):
            ann["occlude_rate"] = min(rle_area(occlusion) / amodal_area, 1.0)
        elif occlusion == []:
            ann["occlude_rate"] = 0.0
        objects.append(ann)
    return objects
