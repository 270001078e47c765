"""The training targets of ``MultiMasks``: every (ROI, mask) rasterised at M x M, in batches."""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .leaves import BitCrop, rasterize_polygons_on_rois

__all__ = ["crop_and_resize_leaves"]

# Bilinear samples per output pixel side when bits are resized to M x M (see _crop_bits).
BIT_SAMPLES = 2


def crop_and_resize_leaves(
    storage, index: torch.Tensor, boxes: torch.Tensor, mask_size: int, cols: Sequence[int]
) -> torch.Tensor:
    """
    Rasterise ``storage.leaves[index[r]][j]`` on ``boxes[r]`` for every ROI r and column j.

    Each distinct (ROI, leaf) pair is rasterised once (a leaf can stand for several masks, e.g.
    "visible or amodal"). Polygons: one batched pycocotools pass on the CPU; bit crops (RLE masks
    and the exact results of derived masks): ROIAlign's rule, one ``grid_sample`` per stored crop on
    the storage's device (see ``_crop_bits``).
    Every mask is rasterised on its own, by its own form's rule: no target is an operation on other
    targets.

    Args:
        storage: the ``MaskStorage``.
        index: (N,) long, the stored row of each ROI.
        boxes: (N, 4) XYXY boxes in image coordinates.
        mask_size: M.
        cols: the K' mask columns to compute.

    Returns:
        Tensor of shape (N, K', M, M), bool, on the device of `boxes`.
    """
    n, kk, m, device = len(index), len(cols), mask_size, boxes.device
    if n == 0 or kk == 0:
        return torch.zeros((n, kk, m, m), dtype=torch.bool, device=device)
    boxes = boxes.detach()
    # The leaves are host-side descriptions, and polygons are rasterised by pycocotools on the CPU
    # (as PolygonMasks does): the index and the boxes come to the host in one transfer.
    host = torch.cat([index.to(device, torch.float64)[:, None], boxes.to(torch.float64)], dim=1)
    host = host.cpu().numpy()
    rows = host[:, 0].astype(np.int64)
    host_boxes = host[:, 1:].astype(np.float32)  # exact: the boxes are float32 (or were cast)

    # every (ROI, column), as (ROI, first column of its leaf): one pair per distinct (ROI, leaf)
    kind_of, first_of = storage.layout()
    cols = np.asarray(cols, dtype=np.int64)
    kind = kind_of[rows[:, None], cols].reshape(-1)
    key = (np.arange(n)[:, None] * storage.k + first_of[rows[:, None], cols]).reshape(-1)
    pairs, pair_of = np.unique(key, return_inverse=True)
    pair_kind = np.zeros(len(pairs), dtype=np.int8)
    pair_kind[pair_of] = kind
    pair_roi, pair_col = pairs // storage.k, pairs % storage.k
    leaves = storage.leaves
    where = {}
    for code in (1, 2):  # polygons, then bit crops: rows 1.. of the table after the empty mask
        sel = np.flatnonzero(pair_kind == code)
        chosen = zip(pair_roi[sel].tolist(), pair_col[sel].tolist())
        where[code] = (sel, [(leaves[rows[r]][c], r) for r, c in chosen])
    (poly_sel, polygons), (crop_sel, crops) = where[1], where[2]

    parts = [torch.zeros((1, m, m), dtype=torch.bool, device=device)]
    table_row = np.zeros(len(pairs), dtype=np.int64)  # 0: the empty mask
    if polygons:
        rasters = rasterize_polygons_on_rois(
            [p for p, _ in polygons], host_boxes[pair_roi[poly_sel]], m
        )
        parts.append(torch.from_numpy(rasters).to(device))
        table_row[poly_sel] = 1 + np.arange(len(polygons))
    if crops:
        crop_targets, crop_row = _crop_bits(storage, crops, host_boxes, m)
        parts.append(crop_targets.to(device))
        table_row[crop_sel] = 1 + len(polygons) + crop_row
    # one host-to-device copy of the picks, one gather
    picks = torch.from_numpy(table_row[pair_of]).to(device)
    return torch.cat(parts)[picks].view(n, kk, m, m)


def _crop_bits(
    storage, crops: List[Tuple[BitCrop, int]], boxes: np.ndarray, m: int
) -> Tuple[torch.Tensor, np.ndarray]:
    """
    The target of each (crop, ROI) pair by ROIAlign's rule (aligned, >= 0.5) with 2 x 2 samples
    per output pixel, as ``BitMasks.crop_and_resize`` but for its sampling: BitMasks' adaptive
    sampling takes (ROI side / M)^2 samples per pixel, 10x the whole cost of the targets on
    COCOA-size objects, for the same mask on >= 99% of the pixels (tests/test_structures_storage.py
    measures the agreement).

    The samples sit where ROIAlign puts them and are interpolated by ``grid_sample`` (4x faster
    than ROIAlign's CPU kernel, one call per stored crop), with ROIAlign's border rule: a sample
    within one pixel outside the crop takes the nearest border pixel ("border" padding), one
    farther out is 0. The result equals ROIAlign's but where the mean of the samples is within
    float rounding of 0.5 (tests/test_structures.py checks both).

    Args:
        storage: the ``MaskStorage`` holding the bits.
        crops: T (crop, ROI) pairs.
        boxes: (N, 4) float32 XYXY ROIs in image coordinates, on the host.
        m: M.

    Returns:
        (targets, row): targets (T, M, M) bool on the storage's device, grouped by crop; row (T,)
        int64, the row of targets that holds pair t.
    """
    bits_device = storage.flat.device
    groups: Dict[int, List[int]] = {}
    for t, (crop, _) in enumerate(crops):
        groups.setdefault(id(crop), []).append(t)
    order = [t for ts in groups.values() for t in ts]
    row = np.empty(len(crops), dtype=np.int64)
    row[order] = np.arange(len(crops))
    # Sample coordinates in each crop's pixels, in float32 in ROIAlign's order of operations
    # (aligned: pixel centres at integers), computed on the host for all pairs and copied once.
    ordered = [crops[t][0] for t in order]
    shift = np.array([[c.x0, c.y0, c.x0, c.y0] for c in ordered], dtype=np.float32)
    size = np.array([[c.w, c.h] for c in ordered], dtype=np.float32)  # (T, 2): x, y
    rois = boxes[[crops[t][1] for t in order]] - shift
    half = np.float32(0.5)
    start = rois[:, :2] - half
    bin_size = ((rois[:, 2:] - half) - start) / np.float32(m)
    cell = np.arange(m, dtype=np.float32).repeat(BIT_SAMPLES)  # output pixel of each sample
    sub = np.tile(np.arange(BIT_SAMPLES, dtype=np.float32) + half, m)  # sample within the pixel
    coords = (start[:, :, None] + cell * bin_size[:, :, None]) + (
        sub * bin_size[:, :, None] / np.float32(BIT_SAMPLES)
    )  # (T, 2, M * BIT_SAMPLES): x samples, y samples
    valid = (coords >= -1) & (coords <= size[:, :, None])
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer pixel edges
    normalized = (np.float32(2) * coords + np.float32(1)) / np.maximum(size, 1)[:, :, None] - 1
    # the pairs with samples more than 1 px outside their crop (there, ROIAlign gives 0)
    outside = ~valid.all(axis=(1, 2))
    host = np.concatenate([normalized, valid], axis=1) if outside.any() else normalized
    gx, gy, *weights = torch.from_numpy(host.astype(np.float32)).to(bits_device).unbind(1)
    t, s = len(crops), m * BIT_SAMPLES
    grid = torch.stack([gx[:, None, :].expand(t, s, s), gy[:, :, None].expand(t, s, s)], dim=-1)
    b, out, first = BIT_SAMPLES, [], 0
    for ts in groups.values():
        crop, end = crops[ts[0]][0], first + len(ts)
        if crop.h == 0 or crop.w == 0:
            out.append(torch.zeros((len(ts), m, m), dtype=torch.bool, device=bits_device))
            first = end
            continue
        # through uint8: bool -> float32 directly is 3x slower on the CPU
        data = storage.crop_bits(crop).view(torch.uint8).to(torch.float32)[None, None]
        where = grid[first:end].view(1, len(ts) * s, s, 2)
        samples = F.grid_sample(data, where, "bilinear", "border", align_corners=False)[0, 0]
        samples = samples.view(len(ts), s, s)
        if outside[first:end].any():
            vx, vy = weights
            samples = samples * (vy[first:end, :, None] * vx[first:end, None, :])
        # each output pixel's sum of samples, by strided adds (much faster than a pooling op);
        # compared with 0.5 * b * b, exact as the mean is (b * b is a power of 2)
        rows = sum(samples[:, i::b] for i in range(1, b)) + samples[:, 0::b]
        sums = sum(rows[:, :, j::b] for j in range(1, b)) + rows[:, :, 0::b]
        out.append(sums >= 0.5 * b * b)
        first = end
    return torch.cat(out), row
