"""
The amodal panoptic layout (robot-learning-freiburg/amodal-panoptic: KITTI-360-APS, and
AmodalSynthDrive's ``amodal_panoptic_seg``), read for amodal instance segmentation: things only.

As the layout's evaluation reads it (``amodal_panoptic_eval/eval.py``, ``load_annotation`` and
``prepare_segments``) and APSNet's data scan finds it (``read_asd_files``)::

    <split>/amodal_panoptic_seg/<camera>/<sequence>/<frame>_ampano.png    uint16, one channel
    <split>/amodal_panoptic_seg/<camera>/<sequence>/<frame>_ampano.json   thing id -> object
    <split>/images/<camera>/<sequence>/<frame>_rgb.jpg                     the image

A pixel below 1000 is a stuff class (skipped here); a thing pixel is ``class_id * 1000 +
instance``, and its pixels are the object's visible mask. The JSON entry of a thing id (the key is
the pixel value as a string) has ``occluded`` and, when occluded, ``amodal_mask`` and
``occlusion_mask`` RLEs; an unoccluded object's amodal mask is its visible mask and its occluded
mask is an annotated empty mask. As in the evaluation, the objects are the thing ids present in the
PNG (a JSON entry without pixels is not an object there, nor here; counted in the log).

Classes: format ``amodal_panoptic`` keeps the AmodalSynthDrive thing classes as its label table
(``amodal_panoptic_eval/labels/asd_labels.py``: ``hasInstances`` and a train id, i.e. person, car,
truck, bus, motor, bike; the others, caravan and trailer, have train id 255 and are skipped as the
APSNet converter skips them, counted in the log). Format ``kitti360_aps`` takes the classes from the
files (every ``id // 1000`` found, named by the Cityscapes / KITTI-360 label table where it has the
id): KITTI-360-APS's own label file is not in the public code read for this reader, so its class
list is not fixed before loading; keep the train and test splits' classes equal (training checks
it).

Errors name the file: a thing id without a JSON entry, an entry without ``occluded``, an occluded
entry without ``amodal_mask``, a missing image or JSON, a PNG of another size than its image.
"""

import glob
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .coco import read_json
from .mask_images import encode_rle, find_image, image_size, progress, read_mask_png, rle_area

__all__ = [
    "AMODAL_PANOPTIC_MASK_FIELDS",
    "ASD_THING_CLASSES",
    "PANOPTIC_OFFSET",
    "read_amodal_panoptic",
]

logger = logging.getLogger(__name__)

PANOPTIC_OFFSET = 1000  # a thing pixel is class_id * 1000 + instance
# AmodalSynthDrive's thing classes with a train id (asd_labels.py)
ASD_THING_CLASSES = {24: "person", 26: "car", 27: "truck", 28: "bus", 32: "motor", 33: "bike"}
# the Cityscapes label ids of things (KITTI-360 uses the same ids), to name classes found in files
_CITYSCAPES_THING_NAMES = {
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    29: "caravan",
    30: "trailer",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}
AMODAL_PANOPTIC_MASK_FIELDS = {
    "amodal": "amodal_mask",
    "visible": "visible_mask",
    "occluded": "occlusion_mask",
}
_PNG_SUFFIX = "_ampano.png"
_IMAGE_SUFFIXES = ("_rgb.jpg", "_rgb.png", ".png", ".jpg")


def read_amodal_panoptic(
    ann_root: str, image_root: str, thing_classes: Optional[Mapping[int, str]] = None
) -> Dict[str, Any]:
    """
    Read an amodal panoptic folder into the COCO-style dict the generic loader maps.

    Args:
        ann_root: the ``amodal_panoptic_seg`` folder of a split (``*_ampano.png`` at any depth).
        image_root: the split's ``images`` folder; an image has its PNG's path relative to
            `ann_root` with ``_ampano.png`` replaced by ``_rgb.jpg`` (else ``_rgb.png``, ``.png``,
            ``.jpg``).
        thing_classes: class id -> name of the classes to read (others are skipped); None = every
            class found, named by the Cityscapes label table.

    Returns:
        dict: ``images``, ``annotations`` (id = ``<frame>_ampano.json thing <id>``, with
        ``amodal_mask``, ``visible_mask``, ``occlusion_mask`` RLEs and ``occlude_rate``) and
        ``categories``.
    """
    pngs = sorted(glob.glob(os.path.join(ann_root, "**", "*" + _PNG_SUFFIX), recursive=True))
    if not pngs:
        raise FileNotFoundError(f"amodal panoptic: no *{_PNG_SUFFIX} file under {ann_root}")
    images, annotations = [], []
    counts = {"class": 0, "no_pixels": 0}
    for png in progress(pngs, "amodal panoptic"):
        rel = os.path.relpath(png, ann_root)[: -len(_PNG_SUFFIX)]
        what = f"amodal panoptic frame {rel}"
        image = find_image(os.path.join(image_root, rel), _IMAGE_SUFFIXES, what)
        size = image_size(image, what)
        images.append(
            {
                "id": rel,
                "file_name": os.path.relpath(image, image_root),
                "height": size[0],
                "width": size[1],
            }
        )
        anns = _frame_things(png, rel, size, thing_classes, counts)
        annotations.extend(anns)
    found = sorted({a["category_id"] for a in annotations})
    names = thing_classes or {c: _CITYSCAPES_THING_NAMES.get(c, f"class_{c}") for c in found}
    if counts["class"] or counts["no_pixels"]:
        logger.info(
            f"amodal panoptic {ann_root}: skipped {counts['class']} things of classes outside "
            f"{sorted(names)} and {counts['no_pixels']} JSON entries without pixels in the PNG"
        )
    categories = [{"id": int(c), "name": n} for c, n in sorted(names.items())]
    if not categories:
        raise ValueError(f"amodal panoptic: no thing object under {ann_root}")
    return {"images": images, "annotations": annotations, "categories": categories}


def _frame_things(
    png: str,
    image_id: str,
    size: Tuple[int, int],
    thing_classes: Optional[Mapping[int, str]],
    counts: Dict[str, int],
) -> List[Dict[str, Any]]:
    json_path = png[: -len(".png")] + ".json"
    entries = read_json(json_path)
    if not isinstance(entries, dict):
        raise ValueError(f"{json_path}: expected a dict thing id -> object")
    panoptic = read_mask_png(png, f"amodal panoptic map of {image_id}", size)
    thing_ids = [int(v) for v in np.unique(panoptic) if v >= PANOPTIC_OFFSET]
    listed = {k for k in entries if k.isdigit() and int(k) >= PANOPTIC_OFFSET}
    counts["no_pixels"] += len(listed - {str(v) for v in thing_ids})
    objects = []
    for thing in thing_ids:
        class_id = thing // PANOPTIC_OFFSET
        if thing_classes is not None and class_id not in thing_classes:
            counts["class"] += 1
            continue
        entry = entries.get(str(thing))
        where = f"{json_path}: thing {thing}"
        if entry is None:
            raise ValueError(
                f"{png}: thing id {thing} (class {class_id}) has no entry in {json_path}"
            )
        if not isinstance(entry, dict) or "occluded" not in entry:
            raise ValueError(f"{where} has no 'occluded' flag")
        visible = encode_rle(panoptic == thing)
        ann = {
            "id": f"{image_id}_ampano.json thing {thing}",
            "image_id": image_id,
            "category_id": class_id,
            "iscrowd": 0,
            "visible_mask": visible,
        }
        if entry["occluded"]:
            if not entry.get("amodal_mask"):
                raise ValueError(f"{where} is occluded but has no 'amodal_mask'")
            ann["amodal_mask"] = entry["amodal_mask"]
            occlusion = entry.get("occlusion_mask")
            if occlusion:
                ann["occlusion_mask"] = occlusion
                amodal_area = rle_area(ann["amodal_mask"])
                if amodal_area:
                    ann["occlude_rate"] = min(rle_area(occlusion) / amodal_area, 1.0)
        else:
            ann.update(amodal_mask=visible, occlusion_mask=[], occlude_rate=0.0)
        objects.append(ann)
    return objects
