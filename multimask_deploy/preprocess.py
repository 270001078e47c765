"""
The test transform of a multimask model without torch, PIL or detectron2: detectron2's
``ResizeShortestEdge`` (``DefaultPredictor``'s resize), whose uint8 images are resized by PIL's
bilinear filter. ``resize_bilinear`` is that filter written again in numpy (Pillow's
``libImaging/Resample.c``: antialiased triangle filter, 22-bit fixed-point coefficients, a
horizontal then a vertical pass, each rounded to uint8). It gives the bytes of Pillow's two-pass
order exactly; Pillow 13 does the vertical pass first for some shapes (python-pillow/Pillow#9549,
"if height is scaled down significantly more than width"), and then this differs by at most one
gray level on part of the pixels (tests/test_onnx_deploy.py measures both).
"""

import math
from typing import Tuple

import numpy as np

__all__ = ["preprocess", "resize_bilinear", "resize_shortest_edge", "shortest_edge_shape"]

_PRECISION_BITS = 32 - 8 - 2  # Resample.c's, for 8-bit images


def shortest_edge_shape(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new height, new width) as detectron2's ``ResizeShortestEdge.get_output_shape``."""
    size = short_edge * 1.0
    scale = size / min(height, width)
    if height < width:
        newh, neww = size, scale * width
    else:
        newh, neww = scale * height, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def _coefficients(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Resample.c's precompute_coeffs + normalize_coeffs_8bpc: (first index (out,), (out, k))."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) truncates toward zero, as astype does
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    x = np.abs(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where((x < 1.0) & (taps[None, :] < xmax[:, None]), 1.0 - x, 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # summed in order, as the C loop does
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    scaled = weights * (1 << _PRECISION_BITS)
    fixed = np.where(scaled < 0, (scaled - 0.5).astype(np.int64), (scaled + 0.5).astype(np.int64))
    return xmin, fixed


def _resample(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One pass of Resample.c along `axis` (1: horizontal, 0: vertical) of an (H, W, C) uint8."""
    first, coeffs = _coefficients(image.shape[axis], out_size)
    last = image.shape[axis] - 1
    acc = np.full(
        (out_size, image.shape[1 - axis], image.shape[2]), 1 << (_PRECISION_BITS - 1), np.int64
    )
    src = np.moveaxis(image, axis, 0).astype(np.int64)
    for t in range(coeffs.shape[1]):
        k = coeffs[:, t]
        if not k.any():
            continue
        acc += src[np.minimum(first + t, last)] * k[:, None, None]
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    Resize as PIL's ``Image.resize((width, height), Image.BILINEAR)`` does.

    Args:
        image: shape (H, W, C) or (H, W), uint8.
        height, width: the output size.

    Returns:
        ndarray of shape (height, width[, C]), uint8.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"resize_bilinear takes uint8 images (as PIL), got {image.dtype}")
    gray = image.ndim == 2
    out = image[:, :, None] if gray else image
    if out.shape[1] != width:
        out = _resample(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample(out, height, axis=0)
    out = out[:, :, 0] if gray else out
    return out.copy() if out is image else out


def resize_shortest_edge(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """detectron2's test-time ``ResizeShortestEdge([short_edge], max_size)``; 0 = no resize."""
    if short_edge == 0:
        return image
    height, width = shortest_edge_shape(image.shape[0], image.shape[1], short_edge, max_size)
    return resize_bilinear(image, height, width)


def preprocess(
    image_bgr: np.ndarray, input_format: str, short_edge: int, max_size: int
) -> np.ndarray:
    """
    An image as ``DefaultPredictor`` gives it to the model.

    Args:
        image_bgr: shape (H, W, 3), uint8 BGR (as cv2 reads it).
        input_format: the model's INPUT.FORMAT, "BGR" or "RGB".
        short_edge, max_size: INPUT.MIN_SIZE_TEST and INPUT.MAX_SIZE_TEST.

    Returns:
        ndarray of shape (3, h, w), float32, in `input_format`.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 BGR image, got shape {image_bgr.shape} {image_bgr.dtype}"
        )
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input format must be BGR or RGB, got {input_format!r}")
    image = image_bgr[:, :, ::-1] if input_format == "RGB" else image_bgr
    image = resize_shortest_edge(np.ascontiguousarray(image), short_edge, max_size)
    return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
