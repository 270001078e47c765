"""
A folder of LabelMe JSON files (as LabelMe 5.x and 6.x write them) as a multi-mask dataset.

Convention: a shape labelled ``<class><separator><mask name>`` (``car_amodal``, ``car_visible``)
belongs to that mask of an object of ``<class>``; shapes with the same ``group_id`` and class form
one object, and several shapes of one mask are unioned (a visible part split by an occluder). A
shape without ``group_id`` is an object of its own. As in LabelMe's own converter, group ids may
restart per class: the same ``group_id`` under two classes means two objects. A label without a
known mask suffix goes to ``default_mask`` when given (a plain instance-segmentation folder then
loads as one mask), else it is an error.

Shape types, as LabelMe's own ``shape_to_mask`` reads them: ``polygon``, ``rectangle`` (two
corners), ``oriented_rectangle`` (LabelMe 6.2+: its 4 corners, read as the polygon it is),
``circle`` (center and a point on it; approximated by a polygon) and ``mask`` (a base64 PNG whose
top-left pixel is the shape's first point; becomes an RLE). ``line``, ``linestrip``, ``point`` and
``points`` have no area: skipped, counted in the log.
The label ``__ignore__`` (LabelMe's convention) is a crowd region (``iscrowd=1``) of every class:
the evaluator ignores detections there, the mapper drops it from training, and it is never an
occluder.

The image is ``imagePath`` relative to the JSON file (or to ``image_root``, then also tried by its
base name); when absent, the embedded ``imageData`` is written once into ``image_cache_dir``
(default ``$MULTIMASK_CACHE/labelme_images``), named by its content hash. ``imageHeight`` and
``imageWidth`` must match the image (after EXIF rotation, as detectron2 and LabelMe read it).

The mask-field mapping of :mod:`multimask.data.datasets.coco` applies on top, with the label
suffixes as the annotation keys: ``{"amodal": "amodal", "visible": "visible or amodal",
"occluded": "amodal - visible"}`` lets an unoccluded object carry only its amodal shape. Without
a mapping each mask name is its own suffix. ``occluders(NAME)`` masks are resolved per file as the
COCO loader resolves them without a depth order (LabelMe files have none): every other object whose
box overlaps counts. Bad input raises ValueError / FileNotFoundError naming the file and shape index
(or the object's class and group id).
"""

import glob
import hashlib
import io
import json
import logging
import os
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pycocotools.mask as mask_util
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...structures import segmentation_to_rle
from .coco import dataset_metadata
from .labelme_shapes import _MIN_POINTS, _b64decode, _shape_mask, _union
from .mask_fields import MaskFields

__all__ = [
    "IGNORE_LABEL",
    "labelme_image_cache_root",
    "load_multimask_labelme_json",
    "register_multimask_labelme_instances",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = "__ignore__"
_NO_AREA = ("line", "linestrip", "point", "points")


def labelme_image_cache_root() -> str:
    """``$MULTIMASK_CACHE/labelme_images`` (``MULTIMASK_CACHE``: default ``~/.cache/multimask``)."""
    root = os.path.expanduser(os.getenv("MULTIMASK_CACHE", "~/.cache/multimask"))
    return os.path.join(root, "labelme_images")


def _mask_fields(
    mask_names: Sequence[str], default_mask: Optional[str], mask_fields: Optional[Mapping]
) -> MaskFields:
    if (
        isinstance(mask_names, str)
        or not mask_names
        or not all(isinstance(n, str) for n in mask_names)
    ):
        raise ValueError(f"mask_names must be a non-empty list of names, got {mask_names!r}")
    if default_mask is not None and default_mask not in mask_names:
        raise ValueError(f"default_mask {default_mask!r} is not in mask_names {list(mask_names)}")
    if isinstance(mask_fields, MaskFields):
        fields = mask_fields
    else:
        fields = MaskFields(mask_fields if mask_fields else {n: n for n in mask_names})
    unknown = [k for k in fields.keys if k not in mask_names]
    if unknown:
        raise ValueError(
            f"mask_fields read label suffixes {unknown} that are not in mask_names "
            f"{list(mask_names)}: add them there or fix the mapping"
        )
    return fields


def _parse_label(label: Any, suffixes: Sequence[Tuple[str, str]], default_mask, where: str):
    """(class, mask name) of a label; the longest matching suffix wins."""
    if not isinstance(label, str):
        raise ValueError(f"{where}: label {label!r} is not a string")
    for suffix, name in suffixes:
        if label.endswith(suffix):
            cls = label[: -len(suffix)]
            if not cls.strip():
                raise ValueError(f"{where}: label {label!r} has an empty class before {suffix!r}")
            return cls, name
    if default_mask is None:
        raise ValueError(
            f"{where}: label {label!r} ends with none of the mask suffixes "
            f"{[s for s, _ in suffixes]} and no default_mask is given"
        )
    return label, default_mask


def _image_size(path: str) -> Tuple[int, int]:
    with Image.open(path) as img:
        w, h = img.size
        # EXIF orientations 5-8 turn the image by 90 degrees, as read_image (and LabelMe) apply them
        if img.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    return h, w


def _cached_image(data: Any, cache_dir: str, where: str) -> str:
    raw = _b64decode(data, "imageData", where)
    try:
        fmt = Image.open(io.BytesIO(raw)).format  # detectron2's read_image reads it with PIL too
    except OSError:
        raise ValueError(f"{where}: 'imageData' does not decode as an image") from None
    ext = {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, "." + fmt.lower())
    path = os.path.join(cache_dir, hashlib.sha1(raw).hexdigest()[:20] + ext)
    if not os.path.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # data-loader workers may write the same image at once
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    return path


def _image(data: Mapping[str, Any], json_file: str, image_root: Optional[str], cache_dir: str):
    """(file_name, height, width) of the image of one LabelMe file."""
    image_path = data.get("imagePath")
    rel = image_path.replace("\\", "/") if isinstance(image_path, str) and image_path else None
    candidates = []
    if rel is not None:
        if image_root is None:
            candidates.append(os.path.normpath(os.path.join(os.path.dirname(json_file), rel)))
        else:
            candidates += [
                os.path.join(image_root, rel),
                os.path.join(image_root, os.path.basename(rel)),
            ]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None and data.get("imageData"):
        found = _cached_image(data["imageData"], cache_dir, json_file)
    if found is None:
        looked = f" (looked for {' and '.join(candidates)})" if candidates else ""
        raise FileNotFoundError(
            f"{json_file}: image {image_path!r} not found{looked} and no 'imageData' embedded"
        )
    try:
        h, w = _image_size(found)
    except OSError as e:
        raise ValueError(f"{json_file}: cannot read image {found}: {e}") from None
    declared = (data.get("imageHeight"), data.get("imageWidth"))
    if any(d is not None and d != actual for d, actual in zip(declared, (h, w))):
        raise ValueError(
            f"{json_file}: imageHeight x imageWidth is {declared[0]} x {declared[1]}, but image "
            f"{found} is {h} x {w}"
        )
    return found, h, w


def _read_file(json_file: str, opts: Dict[str, Any], skipped: Counter) -> Dict[str, Any]:
    """One dataset dict whose annotations still name their class (``_class``)."""
    try:
        with open(json_file, "r") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: malformed JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise ValueError(f"{json_file}: not a LabelMe file (no 'shapes' list)")
    file_name, h, w = _image(data, json_file, opts["image_root"], opts["image_cache_dir"])
    objects: Dict[Any, Dict[str, Any]] = {}  # key -> class and the shapes' masks per mask name
    for i, shape in enumerate(data["shapes"]):
        where = f"{json_file}: shape {i}"
        if not isinstance(shape, dict):
            raise ValueError(f"{where} is not a dict")
        shape_type = shape.get("shape_type") or "polygon"  # LabelMe 3 wrote no shape_type
        where = f"{where} ({shape_type} {shape.get('label')!r})"
        if shape_type in _NO_AREA:
            skipped[shape_type] += 1
            continue
        if shape_type not in _MIN_POINTS:
            raise ValueError(
                f"{where}: unknown shape_type {shape_type!r}; known: {sorted(_MIN_POINTS)} "
                f"(and {list(_NO_AREA)}, skipped)"
            )
        if shape.get("label") == IGNORE_LABEL:
            cls, name = IGNORE_LABEL, None
        else:
            cls, name = _parse_label(
                shape.get("label"), opts["suffixes"], opts["default_mask"], where
            )
            if opts["thing_classes"] is not None and cls not in opts["thing_classes"]:
                raise ValueError(
                    f"{where}: class {cls!r} is not in thing_classes {opts['thing_classes']}"
                )
        gid = shape.get("group_id")
        if gid is not None and not isinstance(gid, (int, str)):
            raise ValueError(f"{where}: group_id {gid!r} is not an integer")
        key = ("shape", i) if gid is None else ("group", cls, gid)
        obj = objects.setdefault(key, {"class": cls, "where": where, "masks": {}})
        if gid is not None:
            obj["where"] = f"{json_file}: object {cls!r} group_id {gid!r}"
        obj["masks"].setdefault(name, []).append(_shape_mask(shape, shape_type, h, w, where))

    fields: MaskFields = opts["fields"]
    annotations = []
    for obj in objects.values():
        masks = {name: _union(parts, h, w) for name, parts in obj["masks"].items()}
        if obj["class"] == IGNORE_LABEL:
            crowd = dict.fromkeys(fields.names, masks[None])
            annotations.append(_annotation(IGNORE_LABEL, crowd, 1, h, w))
            continue
        try:
            resolved, _ = fields.resolve(masks, h, w)
        except ValueError as e:
            raise ValueError(f"{obj['where']}: {e}") from None
        if all(m is None for m in resolved.values()):
            skipped["objects without a mapped mask"] += 1
            continue
        annotations.append(_annotation(obj["class"], resolved, 0, h, w))
    if fields.occluder_names:
        fields.resolve_occluders(annotations)
    stem = os.path.splitext(os.path.basename(json_file))[0]
    keys = ("file_name", "height", "width", "image_id", "annotations")
    return dict(zip(keys, (file_name, h, w, stem, annotations)))


def _annotation(cls: str, masks: Dict[str, Any], iscrowd: int, h: int, w: int) -> Dict[str, Any]:
    primary = next(iter(masks.values()))
    present = [m for m in masks.values() if m is not None]
    # box of the primary mask, or of the union of the annotated ones when it is not annotated
    rle = segmentation_to_rle(primary if primary is not None else present[0], h, w)
    if primary is None and len(present) > 1:
        rle = mask_util.merge([segmentation_to_rle(m, h, w) for m in present])
    obj = {
        "_class": cls,
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "bbox_mode": BoxMode.XYWH_ABS,
        "iscrowd": iscrowd,
        "multimask": masks,
    }
    if primary is not None:
        obj["segmentation"] = primary
    return obj


def load_multimask_labelme_json(
    json_dir: str,
    image_root: Optional[str] = None,
    mask_names: Sequence[str] = ("amodal", "visible"),
    dataset_name: Optional[str] = None,
    *,
    separator: str = "_",
    default_mask: Optional[str] = None,
    mask_fields: Optional[Mapping[str, str]] = None,
    thing_classes: Optional[Sequence[str]] = None,
    image_cache_dir: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """
    Load every ``*.json`` of a LabelMe folder (not its subfolders) into standard dataset dicts.

    Args:
        json_dir: the folder of LabelMe JSON files.
        image_root: folder that ``imagePath`` is relative to; None = each JSON's own folder.
        mask_names: the mask suffixes a label may end with (after `separator`).
        dataset_name: if given, its metadata gets ``thing_classes``.
        separator: between class and mask name in a label.
        default_mask: the mask of a label without a known suffix (whose class is the whole label).
        mask_fields: mask name -> expression over the suffixes (see the module docstring);
            None = every mask name read from its own suffix.
        thing_classes: the classes in contiguous-id order; None = the labels' classes, sorted.
        image_cache_dir: where embedded images are written; None = ``labelme_image_cache_root()``.

    Returns:
        list[dict]: one per JSON file, annotations with ``bbox`` (XYWH_ABS), ``category_id``,
        ``iscrowd``, ``multimask`` (mask name -> polygons / RLE / derived mask / None, in mapping
        order) and ``segmentation`` (the primary mask, when annotated).
    """
    fields = _mask_fields(mask_names, default_mask, mask_fields)
    if not isinstance(separator, str):
        raise ValueError(f"separator must be a str, got {separator!r}")
    if not os.path.isdir(json_dir):
        raise FileNotFoundError(f"LabelMe folder {json_dir} does not exist")
    json_files = sorted(glob.glob(os.path.join(json_dir, "*.json")))
    if not json_files:
        raise FileNotFoundError(f"LabelMe folder {json_dir} has no *.json files")
    suffixes = sorted(((separator + n, n) for n in mask_names), key=lambda s: -len(s[0]))
    opts = {
        "image_root": image_root,
        "image_cache_dir": image_cache_dir or labelme_image_cache_root(),
        "suffixes": suffixes,
        "default_mask": default_mask,
        "fields": fields,
        "thing_classes": None if thing_classes is None else list(thing_classes),
    }
    skipped: Counter = Counter()
    files = tqdm(json_files, desc=f"Reading LabelMe {json_dir}", unit="file")
    dicts = [_read_file(f, opts, skipped) for f in files]

    found = sorted({a["_class"] for d in dicts for a in d["annotations"]} - {IGNORE_LABEL})
    classes = list(thing_classes) if thing_classes is not None else found
    class_ids = {c: i for i, c in enumerate(classes)}
    num_instances = 0
    for d in dicts:
        annotations = []
        for a in d["annotations"]:
            cls = a.pop("_class")
            if cls == IGNORE_LABEL:  # a crowd region for every class, as COCO's are per class
                annotations += [dict(a, category_id=i) for i in range(len(classes))]
            else:
                annotations.append(dict(a, category_id=class_ids[cls]))
                num_instances += 1
        d["annotations"] = annotations
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=classes)
    if skipped:
        logger.warning(f"{json_dir}: skipped shapes / objects without area: {dict(skipped)}")
    logger.info(
        f"Loaded {len(dicts)} images with {num_instances} instances of {len(classes)} classes and "
        f"masks {fields.names} from LabelMe folder {json_dir}"
    )
    return dicts


def register_multimask_labelme_instances(
    name: str,
    json_dir: str,
    image_root: Optional[str] = None,
    mask_names: Sequence[str] = ("amodal", "visible"),
    separator: str = "_",
    default_mask: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    *,
    mask_fields: Optional[Mapping[str, str]] = None,
    image_cache_dir: Optional[str] = None,
) -> None:
    """
    Register a LabelMe folder under `name`, loaded on first use.

    Mask names, suffixes and mapping are checked here. The metadata records ``mask_names`` (the
    mapping's names), ``mask_fields``, ``json_dir``, ``image_root`` and ``evaluator_type =
    "multimask_coco"``; ``thing_classes`` is given in `metadata` (fixing the order across splits)
    or set from the labels when the folder is loaded.

    Args:
        name: the dataset name.
        json_dir, image_root, mask_names, separator, default_mask, mask_fields, image_cache_dir:
            see :func:`load_multimask_labelme_json`.
        metadata: extra metadata, e.g. ``{"thing_classes": [...]}``.
    """
    fields = _mask_fields(mask_names, default_mask, mask_fields)
    metadata = dict(metadata or {})
    kwargs = dict(separator=separator, default_mask=default_mask, mask_fields=fields)
    kwargs.update(thing_classes=metadata.get("thing_classes"), image_cache_dir=image_cache_dir)
    DatasetCatalog.register(
        name,
        lambda: load_multimask_labelme_json(json_dir, image_root, mask_names, name, **kwargs),
    )
    MetadataCatalog.get(name).set(
        **dataset_metadata(fields, json_dir=json_dir, image_root=image_root, **metadata)
    )
