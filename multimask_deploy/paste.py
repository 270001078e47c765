"""
Mask pasting without torch: detectron2's ``paste_masks_in_image`` (``layers/mask_ops.py``) in
numpy. Each M x M mask is sampled at the centres of the image pixels in its box's region (the box
grown by one pixel, as detectron2's CPU path pastes), bilinearly with zeros outside the mask
(``grid_sample(align_corners=False)``), then thresholded.
"""

from typing import Tuple

import numpy as np

__all__ = ["paste_masks"]


def _weights(start: int, stop: int, lo: np.float32, hi: np.float32, size: int) -> np.ndarray:
    """(stop - start, size) bilinear weights of the pixels [start, stop) on a box [lo, hi]."""
    centres = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    # as _do_paste_mask (normalised to [-1, 1]) then grid_sample's unnormalisation, in float32
    grid = (centres - lo) / (hi - lo) * np.float32(2) - np.float32(1)
    src = ((grid + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)
    first = np.floor(src)
    frac = src - first
    first = first.astype(np.int64)
    weights = np.zeros((stop - start, size + 2), dtype=np.float32)
    rows = np.arange(stop - start)
    # columns shifted by one: index -1 and `size` land in the padding columns, then are dropped
    np.add.at(weights, (rows, np.clip(first, -1, size) + 1), np.float32(1) - frac)
    np.add.at(weights, (rows, np.clip(first + 1, -1, size) + 1), frac)
    return weights[:, 1:-1]


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """
    Paste masks into the image, as detectron2's ``paste_masks_in_image`` does on the CPU.

    Args:
        masks: shape (N, M, M), probabilities in each box.
        boxes: shape (N, 4), XYXY boxes in image pixels.
        image_size: (H, W).
        threshold: a pixel is in the mask when its sampled probability is >= threshold.

    Returns:
        ndarray of shape (N, H, W), bool.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be (N, M, M), got shape {masks.shape}")
    if boxes.shape != (len(masks), 4):
        raise ValueError(f"boxes must be ({len(masks)}, 4), got shape {boxes.shape}")
    height, width = int(image_size[0]), int(image_size[1])
    out = np.zeros((len(masks), height, width), dtype=bool)
    size = masks.shape[1]
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        # the region detectron2 pastes in: the box grown by a pixel, clipped to the image
        c0 = max(int(np.floor(x0)) - 1, 0)
        r0 = max(int(np.floor(y0)) - 1, 0)
        c1 = min(int(np.ceil(x1)) + 1, width)
        r1 = min(int(np.ceil(y1)) + 1, height)
        if r1 <= r0 or c1 <= c0:
            continue
        wy = _weights(r0, r1, y0, y1, size)
        wx = _weights(c0, c1, x0, x1, size)
        out[i, r0:r1, c0:c1] = (wy @ mask @ wx.T) >= threshold
    return out
