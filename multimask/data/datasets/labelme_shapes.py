"""
The mask of one LabelMe shape, as LabelMe's own ``shape_to_mask`` reads each shape type: polygons
for ``polygon``, ``oriented_rectangle``, ``rectangle`` and ``circle`` (a polygon within 0.1 px),
a compressed RLE for ``mask`` (a base64 PNG placed at the shape's first point). Used by
``multimask.data.datasets.labelme``; errors name the file and shape (`where`).
"""

import base64
import binascii
import math
from typing import Any, Dict, List, Mapping

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ...structures import segmentation_to_rle

# fewest points each shape type with an area needs
_MIN_POINTS = {"polygon": 3, "rectangle": 2, "oriented_rectangle": 4, "circle": 2, "mask": 2}


def _points(shape: Mapping[str, Any], shape_type: str, where: str) -> np.ndarray:
    try:
        pts = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'points' must be a list of [x, y] numbers") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"{where}: 'points' must be finite [x, y] pairs, got {pts.tolist()}")
    if len(pts) < _MIN_POINTS[shape_type]:
        need = _MIN_POINTS[shape_type]
        raise ValueError(f"{where}: a {shape_type} needs at least {need} points, got {len(pts)}")
    return pts


def _circle_polygon(center: np.ndarray, edge: np.ndarray, where: str) -> List[float]:
    r = float(np.hypot(*(edge - center)))
    if r < 0.5:
        raise ValueError(f"{where}: circle of radius {r:g} has no area")
    # vertices about 1.5 px apart keep the polygon within 0.1 px of the circle
    n = int(min(360, max(16, math.ceil(2 * math.pi * r / 1.5))))
    t = np.arange(n) * (2 * math.pi / n)
    return np.stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)], 1).ravel().tolist()


def _b64decode(data: Any, key: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"{where}: '{key}' is not a base64 string") from None


def _mask_rle(shape: Mapping[str, Any], pts: np.ndarray, h: int, w: int, where: str) -> Dict:
    raw = _b64decode(shape.get("mask"), "mask", where)
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{where}: 'mask' does not decode as an image")
    bits = (img[..., 0] if img.ndim == 3 else img) > 0
    x0, y0 = (int(v) for v in np.floor(pts.min(axis=0)))
    mh, mw = bits.shape
    if x0 < 0 or y0 < 0 or x0 + mw > w or y0 + mh > h:
        raise ValueError(f"{where}: the {mw}x{mh} mask at ({x0}, {y0}) leaves the {w}x{h} image")
    full = np.zeros((h, w), np.uint8)
    full[y0 : y0 + mh, x0 : x0 + mw] = bits
    return mask_util.encode(np.asfortranarray(full))


def _shape_mask(shape: Mapping[str, Any], shape_type: str, h: int, w: int, where: str):
    """Polygons (list of flat lists) or a compressed RLE of one shape."""
    pts = _points(shape, shape_type, where)
    if shape_type == "oriented_rectangle" and len(pts) != 4:
        raise ValueError(f"{where}: an oriented_rectangle has 4 points, got {len(pts)}")
    if shape_type in ("polygon", "oriented_rectangle"):
        return [pts.ravel().tolist()]
    if shape_type == "circle":
        return [_circle_polygon(pts[0], pts[1], where)]
    if shape_type == "mask":
        return _mask_rle(shape, pts, h, w, where)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise ValueError(f"{where}: rectangle {pts.tolist()} has zero width or height")
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _union(parts: List[Any], h: int, w: int) -> Any:
    if all(isinstance(p, list) for p in parts):
        return [poly for p in parts for poly in p]
    rle = mask_util.merge([segmentation_to_rle(p, h, w) for p in parts])
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
