"""The training targets of ``MultiMasks``: every (ROI, mask) rasterised at M x M, in batches."""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .leaves import BitCrop, rasterize_polygons_on_rois

__all__ = ["crop_and_resize_leaves", "host_to_device"]

# Bilinear samples per output pixel side when bits are resized to M x M (see _sample_bits).
BIT_SAMPLES = 2


def crop_and_resize_leaves(
    storage, index: torch.Tensor, boxes: torch.Tensor, mask_size: int, cols: Sequence[int]
) -> torch.Tensor:
    """
    Rasterise ``storage.leaves[index[r]][j]`` on ``boxes[r]`` for every ROI r and column j.

    Each distinct (ROI, leaf) pair is rasterised once (a leaf can stand for several masks, e.g.
    "visible or amodal"). Polygons: one batched pycocotools pass on the CPU; bit crops (RLE masks
    and the exact results of derived masks): ROIAlign's rule, one ``grid_sample`` per stored crop
    on the storage's device (see ``_sample_bits``).
    Every mask is rasterised on its own, by its own form's rule: no target is an operation on other
    targets.

    Transfers: one device-to-host copy (the index and the boxes: the leaves are host-side
    descriptions and pycocotools runs on the host, as in detectron2's ``PolygonMasks``), and one
    pinned, non-blocking host-to-device copy of everything computed on the host (the polygon
    rasters, the bit sample coordinates, the picks). None when all is on the CPU.

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
    if storage.flat.device != device:
        raise ValueError(
            f"the masks are on {storage.flat.device}, the boxes on {device}: move both with "
            "Instances.to(device)"
        )
    boxes = boxes.detach()
    # the one device-to-host copy (see above): the index and the boxes in one tensor
    host = torch.cat([index.to(boxes.device, torch.float64)[:, None], boxes.to(torch.float64)], 1)
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
    chosen = {}
    for code in (1, 2):  # polygons, then bit crops: rows 1.. of the table after the empty mask
        sel = np.flatnonzero(pair_kind == code)
        pick = zip(pair_roi[sel].tolist(), pair_col[sel].tolist())
        chosen[code] = (sel, [leaves[rows[r]][c] for r, c in pick])
    (poly_sel, polygons), (crop_sel, crops) = chosen[1], chosen[2]

    table_row = np.zeros(len(pairs), dtype=np.int64)  # 0: the empty mask
    rasters = rasterize_polygons_on_rois(polygons, host_boxes[pair_roi[poly_sel]], m)
    table_row[poly_sel] = 1 + np.arange(len(polygons))
    coords, plan, sampled = _bit_sample_plan(
        crops, host_boxes[pair_roi[crop_sel]], m, storage.image_size
    )
    # the pairs of empty crops keep row 0, the empty mask
    table_row[crop_sel[sampled]] = 1 + len(polygons) + np.arange(len(sampled))
    rasters_d, picks, coords = host_to_device([rasters, table_row[pair_of], coords], device)
    parts = [torch.zeros((1, m, m), dtype=torch.bool, device=device), rasters_d]
    if plan:
        parts.append(_sample_bits(storage, plan, coords, m))
    return torch.cat(parts)[picks].view(n, kk, m, m)


def host_to_device(arrays: Sequence[np.ndarray], device: torch.device) -> List[torch.Tensor]:
    """
    Host arrays as tensors on `device`, in one copy: on the CPU, without a copy (``from_numpy``);
    elsewhere, packed into one pinned buffer (on CUDA) sent with one non-blocking copy, and viewed
    there with each array's dtype and shape.

    Args:
        arrays: numpy arrays of bool, (u)int8..64 or float32 / float64 values.
        device: where the tensors go.

    Returns:
        the tensors, in the order of `arrays`.
    """
    arrays = [np.ascontiguousarray(a) for a in arrays]
    if device.type == "cpu":
        return [torch.from_numpy(a) for a in arrays]
    offsets, total = [], 0
    for a in arrays:  # each array's bytes start at a multiple of 8, so that it can be viewed
        offsets.append(total)
        total += -(-a.nbytes // 8) * 8
    buffer = torch.empty(max(total, 8), dtype=torch.uint8, pin_memory=device.type == "cuda")
    view = buffer.numpy()
    for a, start in zip(arrays, offsets):
        view[start : start + a.nbytes] = a.reshape(-1).view(np.uint8)
    sent = buffer.to(device, non_blocking=True)
    out = []
    for a, start in zip(arrays, offsets):
        dtype = torch.from_numpy(a[:0]).dtype
        out.append(sent[start : start + a.nbytes].view(dtype).view(a.shape))
    return out


def _bit_sample_plan(
    crops: List[BitCrop], boxes: np.ndarray, m: int, image_size: Tuple[int, int]
) -> Tuple[np.ndarray, List[Tuple[BitCrop, int, int, bool]], np.ndarray]:
    """
    Where ``_sample_bits`` samples each (crop, ROI) pair, computed on the host: ROIAlign's sample
    points (aligned, BIT_SAMPLES x BIT_SAMPLES per output pixel, in float32 in its order of
    operations), in grid_sample's coordinates of the pair's crop.

    ROIAlign's border rule on the image: a sample more than one pixel outside the image is 0, one
    within a pixel takes the nearest border pixel. A crop holds a zero margin of one pixel wherever
    the image allows (``BitCrop``), so "border" padding of the crop (the nearest crop pixel) gives
    the image's value for every sample inside the image or within a pixel of it; only the samples
    farther out need a weight of 0, on the pairs that have any.

    Args:
        crops: T crops, one per pair.
        boxes: (T, 4) float32 XYXY ROIs in image coordinates, one per pair.
        m: M.
        image_size: (H, W) of the image.

    Returns:
        (coords, groups, pairs): coords (T', 2 or 4, M * BIT_SAMPLES) float32, grid_sample's
        normalized x then y sample coordinates (then the x and y weights, 1 or 0, when some
        sample is out of the image) of the T' pairs whose crop is not empty, grouped by crop;
        groups (crop, first, end, masked) for each distinct non-empty crop: rows first..end-1 of
        coords sample it, with weights when `masked`; pairs (T',) int64, the pair of each row.
    """
    s = m * BIT_SAMPLES
    groups: Dict[int, List[int]] = {}
    for t, crop in enumerate(crops):
        if crop.h > 0 and crop.w > 0:  # an empty crop's pairs keep the empty target
            groups.setdefault(id(crop), []).append(t)
    order = [t for ts in groups.values() for t in ts]
    if not order:
        return np.zeros((0, 2, s), dtype=np.float32), [], np.zeros(0, dtype=np.int64)
    ordered = [crops[t] for t in order]
    shift = np.array([[c.x0, c.y0, c.x0, c.y0] for c in ordered], dtype=np.float32)
    size = np.array([[c.w, c.h] for c in ordered], dtype=np.float32)  # (T, 2): x, y
    rois = boxes[order].astype(np.float32) - shift
    half = np.float32(0.5)
    start = rois[:, :2] - half
    bin_size = ((rois[:, 2:] - half) - start) / np.float32(m)
    cell = np.arange(m, dtype=np.float32).repeat(BIT_SAMPLES)  # output pixel of each sample
    sub = np.tile(np.arange(BIT_SAMPLES, dtype=np.float32) + half, m)  # sample within the pixel
    coords = (start[:, :, None] + cell * bin_size[:, :, None]) + (
        sub * bin_size[:, :, None] / np.float32(BIT_SAMPLES)
    )  # (T, 2, s): x samples, y samples, in crop pixels
    # ROIAlign's test on the image: -1 <= y <= H (in crop pixels: -1 - y0 <= y <= H - y0)
    low, high = -1 - shift[:, :2], np.array(image_size[::-1], dtype=np.float32) - shift[:, :2]
    valid = (coords >= low[:, :, None]) & (coords <= high[:, :, None])
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the crop's outer pixel edges
    normalized = (np.float32(2) * coords + np.float32(1)) / size[:, :, None] - np.float32(1)
    masked = ~valid.all(axis=(1, 2))
    out = np.concatenate([normalized, valid], axis=1) if masked.any() else normalized
    plan, first = [], 0
    for ts in groups.values():
        end = first + len(ts)
        plan.append((crops[ts[0]], first, end, bool(masked[first:end].any())))
        first = end
    return out.astype(np.float32), plan, np.asarray(order, dtype=np.int64)


def _sample_bits(storage, plan, coords: torch.Tensor, m: int) -> torch.Tensor:
    """
    The target of each (crop, ROI) pair by ROIAlign's rule (aligned, >= 0.5) with 2 x 2 samples
    per output pixel, as ``BitMasks.crop_and_resize`` but for its sampling: BitMasks' adaptive
    sampling takes (ROI side / M)^2 samples per pixel, 10x the whole cost of the targets on
    COCOA-size objects, for the same mask on >= 99% of the pixels (tests/test_structures_storage.py
    measures the agreement).

    The samples (``_bit_sample_plan``) are interpolated by ``grid_sample`` (4x faster than
    ROIAlign's CPU kernel), one call per stored crop, with "border" padding. The result equals
    ROIAlign's but where the mean of the samples is within float rounding of 0.5
    (tests/test_structures.py checks both).

    Args:
        storage: the ``MaskStorage`` holding the bits.
        plan: the groups of ``_bit_sample_plan``.
        coords: its (T, 2 or 4, M * BIT_SAMPLES) coordinates, on the storage's device.
        m: M.

    Returns:
        Tensor of shape (T, M, M), bool, on the storage's device, the pairs in the plan's order.
    """
    t, s, b = coords.shape[0], m * BIT_SAMPLES, BIT_SAMPLES
    gx, gy = coords[:, 0, None, :].expand(t, s, s), coords[:, 1, :, None].expand(t, s, s)
    grid = torch.stack([gx, gy], dim=-1)
    parts = []
    for crop, first, end, masked in plan:
        # through uint8: bool -> float32 directly is 3x slower on the CPU
        data = storage.crop_bits(crop).view(torch.uint8).to(torch.float32)[None, None]
        where = grid[first:end].view(1, (end - first) * s, s, 2)
        samples = F.grid_sample(data, where, "bilinear", "border", align_corners=False)
        samples = samples.view(end - first, s, s)
        if masked:  # samples more than one pixel outside the image
            vx, vy = coords[first:end, 2, None, :], coords[first:end, 3, :, None]
            samples = samples * (vy * vx)
        parts.append(samples)
    samples = torch.cat(parts) if len(parts) > 1 else parts[0]
    # each output pixel's sum of samples, by strided adds (much faster than a pooling op);
    # compared with 0.5 * b * b, exact as the mean is (b * b is a power of 2)
    rows = sum(samples[:, i::b] for i in range(1, b)) + samples[:, 0::b]
    sums = sum(rows[:, :, j::b] for j in range(1, b)) + rows[:, :, 0::b]
    return sums >= 0.5 * b * b
