"""
Readers of the public amodal segmentation datasets, as mask-field mappings onto the generic loader.

Every format gives the masks ``amodal``, ``visible`` and ``occluded`` (= amodal - visible), read
directly from the released JSON files (no conversion step):

- ``kins_2020``: KINS as re-released in 2020 (``update_train_2020.json``): ``a_segm`` / ``i_segm``
  polygons, ``a_bbox`` / ``i_bbox``, the occlusion order ``oco_id`` / ``ico_id``, and 8 categories
  (``KINS_2020_CATEGORIES``: ids 1-8, of which 3, ``rider``, has no instance).
- ``kins_2019``: the original KINS release (``instances_train.json``): ``segmentation`` amodal
  polygons, ``inmodal_seg`` visible polygons or RLE, ``bbox`` amodal, ``inmodal_bbox``, and 7
  categories (``KINS_2019_CATEGORIES``: ids 1, 2, 4-8; no ``rider``).
- ``cocoa``: COCOA as released (``COCO_amodal_train2014.json``): one annotation per image with a
  ``regions`` list; each region has a flat amodal polygon ``segmentation``, ``visible_mask`` /
  ``invisible_mask`` RLE only when occluded, ``occlude_rate``, ``order`` and a free-form ``name``;
  the annotation's ``depth_constraint`` is the ground-truth occlusion order (:mod:`.order_field`).
  COCOA has no categories: every region is one class, ``object``.
- ``cocoa_cls``: COCOA flattened with COCO classes (COCOA-cls, ``COCO_amodal_*_with_classes.json``):
  one annotation per object with ``segmentation``, ``visible_mask``, ``invisible_mask``,
  ``occlude_rate``.
- ``d2sa``: MVTec D2S amodal (``D2S_amodal_*.json``): ``segmentation`` amodal, ``visible_mask``,
  ``occlude_rate``.

COCOA and D2SA omit the visible mask of unoccluded objects, so their mapping falls back to the
amodal mask.

The depth order that ``occluders(...)`` masks read: COCOA's ``order`` (1 is the front) over the
whole image; KINS's ``ico_id`` only within one ``oco_id``: the KINS README (2020 update) defines
``oco_id`` as the cluster id and ``ico_id`` as "the relative occlusion id in this cluster" (1 at the
front, +1 each time occluded; 0 for instances that overlap nothing). Objects of two clusters never
occlude each other, whatever their boxes do.

The formats of issue 24, each in its own module (the public code each follows is named there):

- ``uoais`` (:mod:`.uoais`): UOAIS-Sim and SynTable, flat COCO with ``segmentation`` amodal,
  ``visible_mask``, ``occluded_mask`` and the file's ``occluded_rate``.
- ``osd_amodal`` (:mod:`.osd_amodal`): the OSD-Amodal folder of PNGs.
- ``asd_instances`` / ``asd_apsnet`` (:mod:`.amodal_synth_drive`): AmodalSynthDrive's per-frame
  ``*_aminseg.json`` + id map, and APSNet's COCO conversion (``segmentation`` = visible).
- ``amodal_panoptic`` / ``kitti360_aps`` (:mod:`.amodal_panoptic`): ``*_ampano.png`` + JSON.
- ``walt`` (:mod:`.walt`): ``segmentation: [{"full", "visible"}]``, ``occ_percentage``.
- ``mp3d_amodal`` (:mod:`.mp3d_amodal`): MP3D-Amodal's COCOA-layout pickle, via the COCOA reader.

**One entry point for every layout.** A format is a *reader* (``AMODAL_READERS``: annotation path
and image root -> a COCO-style dict, ``read_json`` for the JSON formats) and the generic loader's
arguments (``AMODAL_FORMATS``: the mask-field mapping, box key, depth order). The folder formats
build their COCO-style dict with RLE masks encoded from the PNGs, so validation, classes, boxes and
``mask_fields`` extras (``occluders(...)``) work the same for every format. The annotation path
(``json_file`` of ``register_amodal_instances``) is the JSON file or, for a folder format, the
annotation folder; ``register_amodal_format`` adds a format of your own.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .amodal_panoptic import AMODAL_PANOPTIC_MASK_FIELDS, ASD_THING_CLASSES, read_amodal_panoptic
from .amodal_synth_drive import (
    APSNET_MASK_FIELDS,
    ASD_INSTANCE_CATEGORIES,
    ASD_MASK_FIELDS,
    read_asd_instances,
)
from .coco import dataset_metadata, multimask_dicts_from_coco, read_json
from .mask_fields import MaskFields
from .mp3d_amodal import read_mp3d_amodal
from .order_field import ORDER_KEY, cocoa_depth_constraint
from .osd_amodal import OSD_CATEGORIES, OSD_MASK_FIELDS, read_osd_amodal
from .uoais import UOAIS_MASK_FIELDS, read_uoais_json
from .walt import WALT_MASK_FIELDS, read_walt_json

__all__ = [
    "AMODAL_FORMATS",
    "AMODAL_MASK_NAMES",
    "AMODAL_READERS",
    "AmodalReader",
    "KINS_2019_CATEGORIES",
    "KINS_2020_CATEGORIES",
    "RELEASED_CATEGORIES",
    "amodal_metadata",
    "categories_metadata",
    "flatten_cocoa_regions",
    "load_amodal_json",
    "register_amodal_format",
    "register_amodal_instances",
]

AMODAL_MASK_NAMES = ["amodal", "visible", "occluded"]

_VISIBLE_OR_AMODAL = {
    "amodal": "segmentation",
    "visible": "visible_mask or amodal",
    "occluded": "amodal - visible",
}

# format -> keyword arguments of multimask_dicts_from_coco
AMODAL_FORMATS: Dict[str, Dict[str, Any]] = {
    "kins_2020": {
        "mask_fields": {"amodal": "a_segm", "visible": "i_segm", "occluded": "amodal - visible"},
        "bbox_field": "a_bbox",
        "depth_key": "ico_id",
        "cluster_key": "oco_id",
    },
    "kins_2019": {
        "mask_fields": {
            "amodal": "segmentation",
            "visible": "inmodal_seg",
            "occluded": "amodal - visible",
        },
        "bbox_field": "bbox",
        "depth_key": "ico_id",
        "cluster_key": "oco_id",
    },
    # regions have no box: it is computed from the amodal polygon
    "cocoa": {
        "mask_fields": _VISIBLE_OR_AMODAL,
        "bbox_field": "bbox",
        "depth_key": "order",
    },
    "cocoa_cls": {"mask_fields": _VISIBLE_OR_AMODAL, "bbox_field": "bbox"},
    "d2sa": {"mask_fields": _VISIBLE_OR_AMODAL, "bbox_field": "bbox"},
}

COCOA_CATEGORIES = [{"id": 1, "name": "object"}]
# The categories of the released KINS files, as they list them. The 2019 files (instances_*.json)
# list 7; the 2020 update files (update_*_2020.json) list 8: the paper's `rider` (id 3) too, which
# no annotation uses (qqlu/Amodal-Instance-Segmentation-through-KINS-Dataset issues #5 and #15).
KINS_2019_CATEGORIES = [
    {"supercategory": "Living Thing", "id": 1, "name": "cyclist"},
    {"supercategory": "Living Thing", "id": 2, "name": "pedestrian"},
    {"supercategory": "vehicles", "id": 4, "name": "car"},
    {"supercategory": "vehicles", "id": 5, "name": "tram"},
    {"supercategory": "vehicles", "id": 6, "name": "truck"},
    {"supercategory": "vehicles", "id": 7, "name": "van"},
    {"supercategory": "vehicles", "id": 8, "name": "misc"},
]
KINS_2020_CATEGORIES = sorted(
    [*KINS_2019_CATEGORIES, {"supercategory": "Living Thing", "id": 3, "name": "rider"}],
    key=lambda c: c["id"],
)
# format -> the categories its released files list, for the formats whose files all list the same
# (COCOA-cls and D2SA: their files' own lists are read at load time)
RELEASED_CATEGORIES: Dict[str, List[Dict[str, Any]]] = {
    "kins_2020": KINS_2020_CATEGORIES,
    "kins_2019": KINS_2019_CATEGORIES,
    "cocoa": COCOA_CATEGORIES,
}


@dataclass(frozen=True)
class AmodalReader:
    """
    How the annotations of a format become the COCO-style dict the generic loader maps.

    Attributes:
        read: (annotation path, image root) -> dict with ``images``, ``annotations`` (masks as
            polygons or RLE under the keys the format's mapping reads) and ``categories``.
        path: what the annotation path is ("JSON file", "folder", ...), for messages and docs.
        categories: the classes every dataset of the format has (the reader writes them itself),
            so that they are known before loading; None when they come from the file.
        coco_ground_truth: whether the annotation file is COCO ground truth of the primary mask
            (``segmentation`` = amodal), so that detectron2's ``COCOEvaluator`` may read it as the
            metadata's ``json_file``.
    """

    read: Callable[[str, str], Dict[str, Any]]
    path: str = "JSON file"
    categories: Optional[List[Dict[str, Any]]] = None
    coco_ground_truth: bool = False


def _read_json(json_file: str, image_root: str) -> Dict[str, Any]:
    return read_json(json_file)


def _read_cocoa(json_file: str, image_root: str) -> Dict[str, Any]:
    return flatten_cocoa_regions(read_json(json_file), json_file)


def _read_mp3d(path: str, image_root: str) -> Dict[str, Any]:
    return flatten_cocoa_regions(read_mp3d_amodal(path), path)


# format -> its reader; the formats of AMODAL_FORMATS above read their JSON file as it is
# (the KINS 2020 and COCOA files are not COCO ground truth, but they have always been the metadata's
# json_file: kept, README says COCOEvaluator fails on them)
AMODAL_READERS: Dict[str, AmodalReader] = {
    "kins_2020": AmodalReader(_read_json, coco_ground_truth=True),
    "kins_2019": AmodalReader(_read_json, coco_ground_truth=True),
    "cocoa": AmodalReader(_read_cocoa, categories=COCOA_CATEGORIES, coco_ground_truth=True),
    "cocoa_cls": AmodalReader(_read_json, coco_ground_truth=True),
    "d2sa": AmodalReader(_read_json, coco_ground_truth=True),
}


def register_amodal_format(
    fmt: str,
    reader: AmodalReader,
    mask_fields: Mapping[str, str],
    **loader_kwargs: Any,
) -> None:
    """
    Add an amodal format, usable by ``register_amodal_instances(name, fmt, ...)``.

    Args:
        fmt: the format name (must be new).
        reader: how its annotation path is read (see :class:`AmodalReader`).
        mask_fields: the mask-field mapping over the keys the reader writes (the first mask is the
            primary one).
        loader_kwargs: ``bbox_field``, ``depth_key``, ``cluster_key``, ``extra_annotation_keys``
            of ``multimask_dicts_from_coco``.
    """
    if fmt in AMODAL_FORMATS:
        raise ValueError(f"amodal format {fmt!r} is already registered")
    MaskFields(mask_fields)  # a bad mapping fails here, not at first load
    AMODAL_FORMATS[fmt] = {"mask_fields": dict(mask_fields), "bbox_field": "bbox", **loader_kwargs}
    AMODAL_READERS[fmt] = reader


register_amodal_format(
    "uoais", AmodalReader(read_uoais_json, coco_ground_truth=True), UOAIS_MASK_FIELDS
)
register_amodal_format(
    "osd_amodal", AmodalReader(read_osd_amodal, "folder", OSD_CATEGORIES), OSD_MASK_FIELDS
)
register_amodal_format(
    "asd_instances",
    AmodalReader(read_asd_instances, "folder", ASD_INSTANCE_CATEGORIES),
    ASD_MASK_FIELDS,
    extra_annotation_keys=("track_id",),
)
# APSNet's conversion: `bbox` is the visible box, `amodal_bbox` the amodal one
register_amodal_format(
    "asd_apsnet", AmodalReader(_read_json), APSNET_MASK_FIELDS, bbox_field="amodal_bbox"
)
register_amodal_format(
    "amodal_panoptic",
    AmodalReader(
        lambda root, images: read_amodal_panoptic(root, images, ASD_THING_CLASSES),
        "folder",
        [{"id": c, "name": n} for c, n in sorted(ASD_THING_CLASSES.items())],
    ),
    AMODAL_PANOPTIC_MASK_FIELDS,
)
register_amodal_format(
    "kitti360_aps", AmodalReader(read_amodal_panoptic, "folder"), AMODAL_PANOPTIC_MASK_FIELDS
)
register_amodal_format("walt", AmodalReader(read_walt_json), WALT_MASK_FIELDS)
register_amodal_format(
    "mp3d_amodal",
    AmodalReader(_read_mp3d, "pickle or JSON file", COCOA_CATEGORIES),
    _VISIBLE_OR_AMODAL,
)


def categories_metadata(categories: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` as loading sets them (by id)."""
    cats = sorted(categories, key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def flatten_cocoa_regions(coco: Mapping[str, Any], json_file: str) -> Dict[str, Any]:
    """
    Turn the original COCOA layout (one annotation per image, a list of ``regions``) into one
    annotation per region, with one category ``object``.

    Args:
        coco: the loaded COCOA JSON.
        json_file: its path, for error messages.

    Returns:
        dict: a COCO-style dict; each annotation's ``id`` is "<annotation id> region <index>", so
        that errors name the region; the annotation's ``depth_constraint`` becomes each region's
        ``occludes`` (:mod:`.order_field`).
    """
    anns = coco.get("annotations") if isinstance(coco, Mapping) else None
    if not isinstance(anns, list):
        raise ValueError(f"{json_file}: a COCOA JSON needs a list 'annotations'")
    flat = []
    for ann in anns:
        if not isinstance(ann, dict):
            raise ValueError(f"{json_file}: annotation {ann!r} is not a dict")
        regions = ann.get("regions")
        if not isinstance(regions, list):
            raise ValueError(
                f"{json_file}: annotation id {ann.get('id')} has no 'regions' list: not the "
                "original COCOA layout (use format 'cocoa_cls' for one annotation per object)"
            )
        where = f"{json_file}: annotation id {ann.get('id')} (image id {ann.get('image_id')})"
        occludes = cocoa_depth_constraint(ann.get("depth_constraint"), len(regions), where)
        ids = [f"{ann.get('id')} region {i}" for i in range(len(regions))]
        for i, region in enumerate(regions):
            if not isinstance(region, dict):
                raise ValueError(
                    f"{json_file}: annotation id {ann.get('id')} region {i} is not a dict"
                )
            record = dict(region, id=ids[i], image_id=ann.get("image_id"), category_id=1)
            if "depth_constraint" in ann:
                record[ORDER_KEY] = [ids[j] for j in occludes[i]]
            flat.append(record)
    return {"images": coco.get("images"), "annotations": flat, "categories": COCOA_CATEGORIES}


def load_amodal_json(
    json_file: str,
    image_root: str,
    fmt: str,
    dataset_name: Optional[str] = None,
    mask_fields: Optional[Mapping[str, str]] = None,
) -> List[Dict[str, Any]]:
    """
    Load a dataset of one of the amodal formats into standard dataset dicts with ``amodal``,
    ``visible`` and ``occluded`` masks.

    Args:
        json_file: the annotation path: the released annotation file or, for a folder format
            (``AMODAL_READERS[fmt].path``), the annotation folder.
        image_root: directory of its images.
        fmt: one of ``AMODAL_FORMATS``.
        dataset_name: if given, its metadata receives the classes.
        mask_fields: masks added to (or replacing) the format's mapping, e.g.
            ``{"occluder": "occluders(visible)"}`` (see ``format_mask_fields``).
    """
    _check_format(fmt)
    coco = AMODAL_READERS[fmt].read(json_file, image_root)
    kwargs = {**AMODAL_FORMATS[fmt], "mask_fields": format_mask_fields(fmt, mask_fields)}
    return multimask_dicts_from_coco(
        coco, json_file, image_root, dataset_name=dataset_name, **kwargs
    )


def _check_format(fmt: str) -> None:
    if fmt not in AMODAL_FORMATS:
        raise ValueError(f"unknown amodal format {fmt!r}; known: {sorted(AMODAL_FORMATS)}")


def format_mask_fields(fmt: str, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The mask-field mapping of format `fmt`, with `extra` masks added (or replacing its own)."""
    _check_format(fmt)
    return {**AMODAL_FORMATS[fmt]["mask_fields"], **(extra or {})}


def register_amodal_instances(
    name: str,
    fmt: str,
    json_file: str,
    image_root: str,
    metadata: Optional[Mapping[str, Any]] = None,
    mask_fields: Optional[Mapping[str, str]] = None,
) -> None:
    """
    Register a dataset in one of the amodal formats under `name`, loaded on first use.

    Args:
        name: the dataset name.
        fmt: one of ``AMODAL_FORMATS``.
        json_file: the annotation path: the annotation file, or the annotation folder of a folder
            format (OSD-Amodal: the ``OSD-0.2-depth`` folder; AmodalSynthDrive: its
            ``amodal_instance_seg/<camera>`` folder; amodal panoptic: ``amodal_panoptic_seg``).
        image_root: the image directory.
        metadata: extra metadata.
        mask_fields: masks added to the format's mapping, e.g.
            ``{"occluder": "occluders(visible)"}`` (the objects in front by the format's depth
            order: COCOA ``order``, KINS ``ico_id`` within one ``oco_id``).
    """
    _check_format(fmt)
    meta = amodal_metadata(fmt, json_file, image_root, mask_fields)
    DatasetCatalog.register(
        name, lambda: load_amodal_json(json_file, image_root, fmt, name, mask_fields)
    )
    MetadataCatalog.get(name).set(**meta, **(metadata or {}))


def amodal_metadata(
    fmt: str, json_file: str, image_root: str, mask_fields: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """
    The metadata known before a dataset of format `fmt` is loaded. ``annotation_path`` is the
    annotation path; ``json_file`` (what detectron2's ``COCOEvaluator`` reads as ground truth) only
    for the formats whose file is COCO ground truth of the primary mask. Loading sets the classes,
    which are known before only for the formats whose reader fixes them (COCOA: ``object``;
    OSD-Amodal, AmodalSynthDrive, MP3D-Amodal): another file of a KINS format may list other
    categories (the builtin names add ``RELEASED_CATEGORIES``, see builtin.py).
    """
    fields = MaskFields(format_mask_fields(fmt, mask_fields))
    reader = AMODAL_READERS[fmt]
    extra: Dict[str, Any] = {"annotation_path": json_file}
    if reader.coco_ground_truth:
        extra["json_file"] = json_file
    if reader.categories is not None:
        extra.update(categories_metadata(reader.categories))
    return dataset_metadata(fields, image_root=image_root, amodal_format=fmt, **extra)
