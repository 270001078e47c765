"""
KINS-like and COCOA-like datasets written to disk at the real datasets' scale, for bench_scale.py,
tools/gpu_check.sh and tests.

    make_kins_like(root, num_images, seed)   -> (json_file, image_root)   format "kins_2019"
    make_cocoa_like(root, num_images, seed)  -> (json_file, image_root)   format "cocoa"

KINS-like: 1242 x 375 PNG images (KITTI's size) with about 12 objects each, KINS's 7 categories
(mostly cars); every object has a star-shaped amodal polygon of 20-60 vertices (``segmentation``)
and its visible part as polygons (``inmodal_seg``). COCOA-like: 640 x 480 JPEG images with about 8
regions each in COCOA's original layout (one annotation per image with a ``regions`` list); a flat
amodal polygon per region, and ``visible_mask`` / ``invisible_mask`` RLE when it is occluded.

Occlusion is consistent: objects are placed front to back (KINS: the lower in the image, the closer;
COCOA: ``order`` 1 is the front), and an object's visible mask is its amodal mask minus the amodal
masks of the objects in front of it. A candidate left with less than 10% (or 40 px) visible is
dropped, so every object is seen. Visible polygons are the outer contours of that raster through the
boundary pixels' centres, simplified by at most 1 px (holes cannot be written as polygons: an object
seen around an occluder keeps the occluder's pixels as visible), so they lie inside the amodal
polygon up to that simplification. Images paint the objects back to front in random colours.
"""

import json
import os
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

# make_kins_like writes format "kins_2019": the 2019 files' 7 categories
from multimask.data.datasets.amodal import KINS_2019_CATEGORIES as KINS_CATEGORIES

__all__ = ["KINS_CATEGORIES", "make_cocoa_like", "make_kins_like"]

# category id -> (probability, height / width of its box)
_KINS_SHAPES = {
    4: (0.55, 0.6),
    2: (0.15, 2.4),
    1: (0.07, 1.5),
    7: (0.08, 0.8),
    6: (0.05, 0.9),
    5: (0.03, 0.7),
    8: (0.07, 1.0),
}
KINS_SIZE = (375, 1242)  # height, width
COCOA_SIZE = (480, 640)
_MIN_VISIBLE_FRACTION, _MIN_VISIBLE_PX = 0.1, 40


def star_polygon(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, h: int, w: int
) -> List[float]:
    """
    A flat [x0, y0, x1, y1, ...] star-shaped polygon of 20-60 vertices around (cx, cy) with radii
    about (rx, ry), its radius modulated by a few low harmonics; clipped to the image.
    """
    n = int(rng.integers(20, 61))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    wobble = np.ones(n)
    for k in (2, 3, 5):
        wobble += rng.uniform(0, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x = np.clip(cx + rx * wobble * np.cos(t), 0, w)
    y = np.clip(cy + ry * wobble * np.sin(t), 0, h)
    return np.round(np.stack([x, y], axis=1), 2).ravel().tolist()


def _raster(polygons: List[List[float]], h: int, w: int) -> np.ndarray:
    """pycocotools' rasterisation (the loaders' and evaluator's), as an (h, w) bool array."""
    rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
    return mask_util.decode(rle).astype(bool)


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _contour_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a bool mask as flat polygons through the boundary pixels' centres."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    polygons = []
    for c in contours:
        c = cv2.approxPolyDP(c, 1.0, True)
        if len(c) >= 3 and cv2.contourArea(c) >= 2:
            polygons.append((c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist())
    return polygons


def _box(mask: np.ndarray) -> List[float]:
    """XYWH box of a bool mask."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return [float(v) for v in mask_util.toBbox(rle)]


def _layered_objects(
    candidates: List[Dict[str, Any]], h: int, w: int, num: int
) -> List[Dict[str, Any]]:
    """
    Keep up to `num` candidates, front to back (candidates come sorted front first), each with its
    amodal raster and its visible raster = amodal minus the kept objects in front of it.
    """
    covered = np.zeros((h, w), dtype=bool)
    kept = []
    for cand in candidates:
        amodal = _raster([cand["polygon"]], h, w)
        visible = amodal & ~covered
        area, vis_area = int(amodal.sum()), int(visible.sum())
        if vis_area < max(_MIN_VISIBLE_PX, _MIN_VISIBLE_FRACTION * area):
            continue
        kept.append(dict(cand, amodal=amodal, visible=visible, area=area, visible_area=vis_area))
        covered |= amodal
        if len(kept) == num:
            break
    return kept


def _paint(rng: np.random.Generator, objects: List[Dict[str, Any]], h: int, w: int) -> np.ndarray:
    """A BGR image: a vertical gradient, the objects painted back to front, a little noise."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = np.linspace(60, 200, h, dtype=np.uint8)[:, None, None]
    for obj in reversed(objects):
        img[obj["amodal"]] = rng.integers(0, 256, 3, dtype=np.uint8)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _start(root: str, image_dir: str, seed: int) -> Tuple[np.random.Generator, str]:
    """The generator's random stream and its image directory (created)."""
    image_root = os.path.join(root, image_dir)
    os.makedirs(image_root, exist_ok=True)
    return np.random.default_rng(seed), image_root


def make_kins_like(
    root: str,
    num_images: int,
    seed: int = 0,
    *,
    objects_per_image: int = 12,
    image_dir: str = "images",
    json_name: str = "instances.json",
) -> Tuple[str, str]:
    """
    Write a KINS-like dataset in the original KINS release's layout (format "kins_2019").

    Args:
        root: directory to write into (created if needed).
        num_images: number of 1242 x 375 images.
        seed: random seed; the same arguments write the same files.
        objects_per_image: objects kept per image (fewer only if no room is left).
        image_dir, json_name: image directory and annotation file, relative to `root`.

    Returns:
        (json_file, image_root).
    """
    rng, image_root = _start(root, image_dir, seed)
    h, w = KINS_SIZE
    cat_ids = list(_KINS_SHAPES)
    probs = np.array([_KINS_SHAPES[c][0] for c in cat_ids])
    images, annotations = [], []
    for i in range(num_images):
        candidates = []
        for _ in range(4 * objects_per_image):
            cat = int(rng.choice(cat_ids, p=probs / probs.sum()))
            bw = float(np.exp(rng.uniform(np.log(20), np.log(260))))
            bh = min(bw * _KINS_SHAPES[cat][1] * rng.uniform(0.8, 1.2), 0.9 * h)
            cx = rng.uniform(0, w)
            bottom = np.clip(170 + 0.6 * bh + rng.normal(0, 20), bh * 0.6, h + 0.2 * bh)
            cy = bottom - bh / 2
            poly = star_polygon(rng, cx, cy, bw / 2, bh / 2, h, w)
            candidates.append({"category_id": cat, "polygon": poly, "depth": -bottom})
        candidates.sort(key=lambda c: c["depth"])  # the lowest box bottom is the closest
        objects = _layered_objects(candidates, h, w, objects_per_image)
        file_name = f"{i:06d}.png"
        cv2.imwrite(os.path.join(image_root, file_name), _paint(rng, objects, h, w))
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for obj in objects:
            inmodal = _contour_polygons(obj["visible"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": obj["category_id"],
                    "segmentation": [obj["polygon"]],
                    "inmodal_seg": inmodal,
                    "bbox": _box(obj["amodal"]),
                    "inmodal_bbox": _box(obj["visible"]),
                    "area": obj["area"],
                    "inmodal_area": obj["visible_area"],
                    "iscrowd": 0,
                    "ico_id": len(annotations) + 1,
                }
            )
    json_file = os.path.join(root, json_name)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": KINS_CATEGORIES}, f)
    return json_file, image_root


def make_cocoa_like(
    root: str,
    num_images: int,
    seed: int = 0,
    *,
    regions_per_image: int = 8,
    image_dir: str = "images",
    json_name: str = "COCO_amodal.json",
) -> Tuple[str, str]:
    """
    Write a COCOA-like dataset in the original COCOA layout (format "cocoa").

    Args:
        root: directory to write into (created if needed).
        num_images: number of 640 x 480 images.
        seed: random seed.
        regions_per_image: regions kept per image (fewer only if no room is left).
        image_dir, json_name: image directory and annotation file, relative to `root`.

    Returns:
        (json_file, image_root).
    """
    rng, image_root = _start(root, image_dir, seed)
    h, w = COCOA_SIZE
    images, annotations = [], []
    for i in range(num_images):
        candidates = []
        for _ in range(4 * regions_per_image):
            rx, ry = np.exp(rng.uniform(np.log(20), np.log(220), 2))
            poly = star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), rx, ry, h, w)
            candidates.append({"polygon": poly, "depth": rng.uniform()})
        candidates.sort(key=lambda c: c["depth"])
        objects = _layered_objects(candidates, h, w, regions_per_image)
        file_name = f"COCO_like_{i:012d}.jpg"
        cv2.imwrite(os.path.join(image_root, file_name), _paint(rng, objects, h, w))
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        regions = []
        for order, obj in enumerate(objects, start=1):
            rate = 1.0 - obj["visible_area"] / obj["area"]
            region = {
                "segmentation": obj["polygon"],
                "name": f"thing{order}",
                "area": float(obj["area"]),
                "isStuff": 0,
                "occlude_rate": round(rate, 4),
                "order": order,
            }
            if obj["visible_area"] < obj["area"]:
                region["visible_mask"] = _rle(obj["visible"])
                region["invisible_mask"] = _rle(obj["amodal"] & ~obj["visible"])
            regions.append(region)
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "regions": regions,
                "size": len(regions),
                "depth_constraint": "",
            }
        )
    json_file = os.path.join(root, json_name)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return json_file, image_root
