"""
A deterministic synthetic occlusion dataset: the default data multimask trains on, no download.

Each image (default 128 x 128 px) shows 2-5 textured shapes of three classes (``ellipse``: red,
striped; ``rectangle``: blue, checkered; ``triangle``: green, dotted), 20-70 px across, at random
depths. Shapes are often placed next to one another so that a good share of them is partly hidden,
but an object is never drawn when less than 15% of it would stay visible. Because every pixel is
painted from the rasterised polygons, the masks are exact: ``amodal`` (the whole shape),
``visible`` (what is drawn of it), ``occluded`` (amodal - visible) and ``occluder`` (the visible
parts of the objects in front of it within its box, from the annotations' ``depth``: 1 = front).

The data is generated on first use (about 2 s for 300 images) into
``$MULTIMASK_CACHE/synthetic/<name>`` (default ``~/.cache/multimask``) as PNG images plus a COCO
JSON with the amodal polygons in ``segmentation``, the visible RLE in ``visible_mask``,
``occlude_rate`` and ``depth``, and it is read back through the generic loader. A cache whose parameters match is
reused.
"""

import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco import dataset_metadata, multimask_dicts_from_coco, read_json
from .mask_fields import MaskFields

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_DEPTH_KEY",
    "SYNTHETIC_MASK_FIELDS",
    "generate_synthetic_dataset",
    "load_synthetic_dataset",
    "register_synthetic_dataset",
    "synthetic_cache_root",
]

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES = ["ellipse", "rectangle", "triangle"]
SYNTHETIC_MASK_FIELDS = {
    "amodal": "segmentation",
    "visible": "visible_mask",
    "occluded": "amodal - visible",
    # the other objects' visible masks in front of it (by `depth`) that overlap its box (BCNet's
    # occluder); computed per image, see MaskFields.resolve_occluders
    "occluder": "occluders(visible)",
}
# annotation key of the depth order: 1 = the front object of its image
SYNTHETIC_DEPTH_KEY = "depth"
# RGB base colour of each class, also used as the visualiser's thing_colors
_CLASS_COLORS = [(215, 70, 45), (45, 95, 215), (70, 190, 60)]
# Bump when the drawing changes, so that old caches are regenerated.
_GENERATOR_VERSION = 2  # 2: annotations have `depth`
_MIN_VISIBLE_FRACTION = 0.15
_SIZE_RANGE = (20, 70)
_NUM_OBJECTS_RANGE = (2, 5)
_P_PLACE_NEXT_TO = 0.7


def synthetic_cache_root() -> str:
    """``$MULTIMASK_CACHE/synthetic``; ``MULTIMASK_CACHE`` defaults to ``~/.cache/multimask``."""
    return os.path.join(
        os.path.expanduser(os.getenv("MULTIMASK_CACHE", "~/.cache/multimask")), "synthetic"
    )


def _shape_polygon(cls: int, extent: float, aspect: float, angle: float) -> np.ndarray:
    """Vertices (P, 2) of a shape centred on 0 whose bounding box's longer side is `extent`."""
    if cls == 0:
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], axis=1)
    elif cls == 1:
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=np.float64)
    else:
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts * (extent / (pts.max(0) - pts.min(0)).max())


def _rasterize(poly: np.ndarray, size: int) -> np.ndarray:
    rle = mask_util.frPyObjects([poly.ravel().tolist()], size, size)[0]
    return mask_util.decode(rle).astype(bool)


def _visible_masks(amodal: List[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each mask, given masks ordered from the farthest to the nearest."""
    visible = [m.copy() for m in amodal]
    for i in range(len(amodal)):
        for j in range(i + 1, len(amodal)):
            visible[i] &= ~amodal[j]
    return visible


def _sample_objects(rng: np.random.Generator, size: int) -> List[Dict[str, Any]]:
    """Objects ordered from the farthest to the nearest, each at least 15% visible."""
    target = int(rng.integers(_NUM_OBJECTS_RANGE[0], _NUM_OBJECTS_RANGE[1] + 1))
    objects: List[Dict[str, Any]] = []
    for _ in range(8 * target):
        if len(objects) == target:
            break
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        extent = rng.uniform(*_SIZE_RANGE)
        poly = _shape_polygon(cls, extent, rng.uniform(0.45, 1.0), rng.uniform(0, np.pi))
        half = (poly.max(0) - poly.min(0)) / 2
        if objects and rng.random() < _P_PLACE_NEXT_TO:
            # next to an existing object, overlapping it partly, to create occlusions
            other = objects[int(rng.integers(len(objects)))]
            dist = rng.uniform(0.35, 0.9) * (half.mean() + other["half"].mean())
            theta = rng.uniform(0, 2 * np.pi)
            center = other["center"] + dist * np.array([np.cos(theta), np.sin(theta)])
        else:
            center = rng.uniform(0, size, 2)
        # keep the whole shape inside the image: amodal masks never leave it
        center = np.clip(center, half + 1, size - 1 - half)
        poly = np.round(poly + center, 2)
        candidate = {
            "cls": cls,
            "poly": poly,
            "center": center,
            "half": half,
            "mask": _rasterize(poly, size),
        }
        if candidate["mask"].sum() < 50:
            continue
        trial = list(objects)
        trial.insert(int(rng.integers(len(objects) + 1)), candidate)
        amodal = [o["mask"] for o in trial]
        visible = _visible_masks(amodal)
        if all(v.sum() >= _MIN_VISIBLE_FRACTION * a.sum() for v, a in zip(visible, amodal)):
            objects = trial
    return objects


def _texture(cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB fill of one object: its class colour times its class pattern."""
    color = np.array(_CLASS_COLORS[cls], dtype=np.float32) + rng.uniform(-25, 25, 3).astype(
        np.float32
    )
    if cls == 0:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        pattern = np.sin((xx * np.cos(a) + yy * np.sin(a)) * (2 * np.pi / 6.0)) > 0
    elif cls == 1:  # checkerboard
        ox, oy = rng.integers(0, 8, 2)
        pattern = (((xx + ox) // 4 + (yy + oy) // 4) % 2) == 0
    else:  # dots
        ox, oy = rng.integers(0, 6, 2)
        pattern = (((xx + ox) % 6) - 2.5) ** 2 + (((yy + oy) % 6) - 2.5) ** 2 < 4.0
    return color * np.where(pattern, 1.0, 0.6).astype(np.float32)[..., None]


def _draw_image(index: int, seed: int, size: int) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """One image (H, W, 3) uint8 BGR and its objects (farthest first), with their visible masks."""
    rng = np.random.default_rng([seed, index])
    objects = _sample_objects(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(70, 180) + rng.uniform(-15, 15, 3)
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    img = base[None, None, :] + (gx * xx + gy * yy)[..., None]
    for obj in objects:
        img[obj["mask"]] = _texture(obj["cls"], rng, yy, xx)[obj["mask"]]
    img += rng.normal(0, 6, img.shape)
    for obj, vis in zip(objects, _visible_masks([o["mask"] for o in objects])):
        obj["visible"] = vis
    return np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1], objects


def generate_synthetic_dataset(
    out_dir: str, num_images: int, seed: int, image_size: int = 128, desc: str = "synthetic"
) -> str:
    """
    Draw the dataset into `out_dir` (``images/*.png``, ``annotations.json``, ``params.json``).

    Image i depends only on (seed, i), so a smaller dataset is a prefix of a larger one.

    Args:
        out_dir: directory to write; must not exist yet.
        num_images: number of images.
        seed: random seed.
        image_size: side of the square images, in px (>= 96 so that 70 px shapes fit).
        desc: label of the progress bar.

    Returns:
        str: the path of the COCO JSON.
    """
    if image_size < 96:
        raise ValueError(
            f"image_size must be >= 96 px to hold shapes of up to 70 px, got {image_size}"
        )
    os.makedirs(os.path.join(out_dir, "images"))
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=f"Generating {desc}", unit="img"):
        img, objects = _draw_image(i, seed, image_size)
        file_name = f"{i:06d}.png"
        cv2.imwrite(os.path.join(out_dir, "images", file_name), img)
        images.append({"id": i, "file_name": file_name, "height": image_size, "width": image_size})
        for index, obj in enumerate(objects):
            amodal_rle = mask_util.encode(np.asfortranarray(obj["mask"], dtype=np.uint8))
            visible_rle = mask_util.encode(np.asfortranarray(obj["visible"], dtype=np.uint8))
            area, visible_area = float(mask_util.area(amodal_rle)), float(
                mask_util.area(visible_rle)
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": obj["cls"] + 1,
                    "bbox": [float(v) for v in mask_util.toBbox(amodal_rle)],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": [obj["poly"].ravel().tolist()],
                    "visible_mask": {
                        "size": visible_rle["size"],
                        "counts": visible_rle["counts"].decode(),
                    },
                    "occlude_rate": round(1.0 - visible_area / area, 4),
                    # objects are drawn farthest first: the last one is in front (depth 1)
                    SYNTHETIC_DEPTH_KEY: len(objects) - index,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SYNTHETIC_CLASSES)]
    json_file = os.path.join(out_dir, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


def _params(num_images: int, seed: int, image_size: int) -> Dict[str, int]:
    return {
        "version": _GENERATOR_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
    }


def _cache_matches(out_dir: str, params: Dict[str, int]) -> bool:
    try:
        with open(os.path.join(out_dir, "params.json")) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return False
    return cached == params and os.path.isfile(os.path.join(out_dir, "annotations.json"))


def ensure_synthetic_dataset(
    out_dir: str, num_images: int, seed: int, image_size: int = 128
) -> str:
    """
    Generate the dataset into `out_dir` unless a cache with the same parameters is there.

    Generation writes a temporary directory renamed at the end, so an interrupted or concurrent run
    never leaves a half-written cache behind.

    Returns:
        str: the path of the COCO JSON.
    """
    params = _params(num_images, seed, image_size)
    json_file = os.path.join(out_dir, "annotations.json")
    if _cache_matches(out_dir, params):
        return json_file
    if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, "params.json")):
        raise FileExistsError(f"{out_dir} exists and is not a multimask synthetic dataset cache")
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info(f"Generating synthetic dataset {params} into {out_dir}")
    try:
        generate_synthetic_dataset(tmp_dir, num_images, seed, image_size, os.path.basename(out_dir))
        with open(os.path.join(tmp_dir, "params.json"), "w") as f:
            json.dump(params, f)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if os.path.exists(out_dir):  # a cache with other parameters
        shutil.rmtree(out_dir, ignore_errors=True)
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        # another process finished first: keep its copy if it is the one we need
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not _cache_matches(out_dir, params):
            raise
    return json_file


def load_synthetic_dataset(
    name: str, num_images: int, seed: int, image_size: int = 128, root: Optional[str] = None
) -> List[Dict[str, Any]]:
    """
    Generate (if needed) and load the synthetic dataset `name` from ``<root>/<name>``.

    Args:
        name: dataset name, also the cache sub-directory.
        num_images, seed, image_size: see :func:`generate_synthetic_dataset`.
        root: cache directory; None = :func:`synthetic_cache_root`.

    Returns:
        list[dict]: standard dataset dicts with ``amodal``, ``visible`` and ``occluded`` masks.
    """
    out_dir = os.path.join(root or synthetic_cache_root(), name)
    json_file = ensure_synthetic_dataset(out_dir, num_images, seed, image_size)
    return multimask_dicts_from_coco(
        read_json(json_file),
        json_file,
        os.path.join(out_dir, "images"),
        SYNTHETIC_MASK_FIELDS,
        name,
        depth_key=SYNTHETIC_DEPTH_KEY,
    )


def register_synthetic_dataset(
    name: str, num_images: int, seed: int, image_size: int = 128, root: Optional[str] = None
) -> None:
    """
    Register a synthetic occlusion dataset under `name`, generated on first use.

    Args:
        name: the dataset name, e.g. "my_synthetic_1000".
        num_images: number of images.
        seed: random seed; the same seed gives the same images.
        image_size: side of the square images in px (>= 96).
        root: cache directory; None = ``$MULTIMASK_CACHE/synthetic`` as it is now.
    """
    root = root or synthetic_cache_root()
    DatasetCatalog.register(
        name, lambda: load_synthetic_dataset(name, num_images, seed, image_size, root)
    )
    MetadataCatalog.get(name).set(
        **dataset_metadata(
            MaskFields(SYNTHETIC_MASK_FIELDS),
            thing_classes=list(SYNTHETIC_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTHETIC_CLASSES))},
            thing_colors=[list(c) for c in _CLASS_COLORS],
            image_root=os.path.join(root, name, "images"),
            synthetic_params=_params(num_images, seed, image_size),
        )
    )
