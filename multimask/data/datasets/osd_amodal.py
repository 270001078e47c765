"""
OSD-Amodal (gist-ailab/uoais): the OSD-0.2-depth folder with UOAIS's amodal annotations added.

The layout, as UOAIS's evaluation reads it (``eval/eval_utils.py``, ``eval_visible_on_OSD`` and
``eval_amodal_occ_on_OSD``)::

    OSD-0.2-depth/
      image_color/<img>.png              the RGB images (640 x 480)
      annotation/<img>.png               visible instance-id map: 0 = background, k = object k
      amodal_annotation/<img>_<k>.png    amodal mask of object k (non-zero pixels), one per object
      occlusion_annotation/<img>_<k>.png occluded part of object k, only for occluded objects
      disparity/<img>.png                depth (not read here)

The object id ``k`` is the number after the last ``_`` of a per-object file name, and the same ``k``
labels the object's pixels in the visible map. An object without an occlusion file is not occluded
(UOAIS's occlusion classification reads "occluded" as "the file exists"): its ``occluded`` mask is
an annotated empty mask. An object with an amodal file but no pixel in the visible map is hidden
entirely: its visible mask is annotated empty. Every mask is encoded to a compressed RLE when it is
read; OSD has no classes, so every object is one class, ``object``; the occlusion rate is the
occluded pixels over the amodal pixels.

Errors name the file: a visible id without its amodal PNG (the expected path), an occlusion PNG
without an amodal one, a per-object name without an integer id, an empty amodal mask, a missing
visible map, and any PNG whose size differs from its image.
"""

import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import numpy as np

from .mask_images import encode_rle, image_size, progress, read_mask_png, rle_area

__all__ = ["OSD_CATEGORIES", "OSD_MASK_FIELDS", "read_osd_amodal"]

logger = logging.getLogger(__name__)

OSD_CATEGORIES = [{"id": 1, "name": "object"}]
# the reader's annotation keys; every object has all three
OSD_MASK_FIELDS = {"amodal": "amodal_mask", "visible": "visible_mask", "occluded": "occlusion_mask"}
_BACKGROUND = 0


def _per_object_files(folder: str) -> Dict[str, Dict[int, str]]:
    """image name -> object id -> path, for the ``<img>_<id>.png`` files of `folder`."""
    files: Dict[str, Dict[int, str]] = defaultdict(dict)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".png"):
            continue
        stem, _, obj = name[: -len(".png")].rpartition("_")
        if not stem or not obj.isdigit():
            raise ValueError(
                f"{os.path.join(folder, name)}: a per-object mask must be named "
                "<image name>_<object id>.png"
            )
        files[stem][int(obj)] = os.path.join(folder, name)
    return files


def read_osd_amodal(root: str, image_root: str) -> Dict[str, Any]:
    """
    Read an OSD-Amodal folder into the COCO-style dict the generic loader maps.

    Args:
        root: the OSD folder (``OSD-0.2-depth``), holding ``annotation/``, ``amodal_annotation/``
            and ``occlusion_annotation/``.
        image_root: the RGB image folder, usually ``<root>/image_color``; every PNG in it is an
            image of the dataset.

    Returns:
        dict: ``images`` (file names relative to `image_root`, sizes from the image headers),
        ``annotations`` (one per object, id ``"<img>_<k>"``, with ``amodal_mask``,
        ``visible_mask``, ``occlusion_mask`` compressed RLEs and ``occlude_rate``) and
        ``categories`` (``OSD_CATEGORIES``).
    """
    folders = {k: os.path.join(root, k) for k in ("annotation", "amodal_annotation")}
    folders["image"] = image_root
    for what, folder in folders.items():
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"OSD-Amodal: folder {folder} ({what}) does not exist")
    occlusion_dir = os.path.join(root, "occlusion_annotation")
    amodal_files = _per_object_files(folders["amodal_annotation"])
    # a release without any occluded object may lack the folder: then nothing is occluded
    occlusion_files = _per_object_files(occlusion_dir) if os.path.isdir(occlusion_dir) else {}
    names = sorted(n for n in os.listdir(image_root) if n.endswith(".png"))
    if not names:
        raise FileNotFoundError(f"OSD-Amodal: no .png image in {image_root}")

    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    hidden = 0
    for image_id, name in enumerate(progress(names, "OSD-Amodal")):
        stem = name[: -len(".png")]
        size = image_size(os.path.join(image_root, name), f"OSD-Amodal image {stem}")
        images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        anns, num_hidden = _image_objects(root, stem, size, amodal_files, occlusion_files)
        for ann in anns:
            ann["image_id"] = image_id
        annotations.extend(anns)
        hidden += num_hidden
    unused = sorted(set(amodal_files) - {n[: -len(".png")] for n in names})
    if unused:
        logger.warning(
            f"OSD-Amodal: {folders['amodal_annotation']} has masks of {len(unused)} images that "
            f"are not in {image_root} (e.g. {unused[0]}); they are not loaded"
        )
    logger.info(
        f"OSD-Amodal: {len(images)} images, {len(annotations)} objects from {root} "
        f"({hidden} hidden entirely: empty visible mask)"
    )
    return {"images": images, "annotations": annotations, "categories": OSD_CATEGORIES}


def _image_objects(
    root: str,
    stem: str,
    size: Tuple[int, int],
    amodal_files: Dict[str, Dict[int, str]],
    occlusion_files: Dict[str, Dict[int, str]],
) -> Tuple[List[Dict[str, Any]], int]:
    """The annotations of image `stem`, and how many of its objects have no visible pixel."""
    visible_path = os.path.join(root, "annotation", stem + ".png")
    visible = read_mask_png(visible_path, f"OSD-Amodal visible id map of image {stem}", size)
    amodal_paths = amodal_files.get(stem, {})
    occlusion_paths = occlusion_files.get(stem, {})
    visible_ids = [int(v) for v in np.unique(visible) if v != _BACKGROUND]
    missing = [k for k in visible_ids if k not in amodal_paths]
    if missing:
        expected = os.path.join(root, "amodal_annotation", f"{stem}_{missing[0]}.png")
        raise FileNotFoundError(
            f"OSD-Amodal: {visible_path} labels objects {missing} that have no amodal mask: "
            f"{expected} does not exist"
        )
    orphans = sorted(set(occlusion_paths) - set(amodal_paths))
    if orphans:
        raise ValueError(
            f"OSD-Amodal: {occlusion_paths[orphans[0]]} is the occlusion mask of object "
            f"{orphans[0]} of image {stem}, which has no amodal mask"
        )
    anns = []
    for k in sorted(amodal_paths):
        amodal = read_mask_png(amodal_paths[k], f"OSD-Amodal amodal mask of object {k}", size) > 0
        if not amodal.any():
            raise ValueError(
                f"OSD-Amodal: {amodal_paths[k]}: the amodal mask of object {k} is empty"
            )
        amodal_rle = encode_rle(amodal)
        if k in occlusion_paths:
            what = f"OSD-Amodal occlusion mask of object {k}"
            occlusion = encode_rle(read_mask_png(occlusion_paths[k], what, size) > 0)
            rate = rle_area(occlusion) / rle_area(amodal_rle)
        else:
            occlusion, rate = [], 0.0
        anns.append(
            {
                "id": f"{stem}_{k}",
                "category_id": OSD_CATEGORIES[0]["id"],
                "iscrowd": 0,
                "amodal_mask": amodal_rle,
                "visible_mask": encode_rle(visible == k) if k in visible_ids else [],
                "occlusion_mask": occlusion,
                "occlude_rate": min(rate, 1.0),
            }
        )
    return anns, sum(1 for k in amodal_paths if k not in visible_ids)
