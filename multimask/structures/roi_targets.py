"""The training targets of ``MultiMasks``: every (ROI, mask) rasterised at M x M, in batches."""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from detectron2.layers import ROIAlign

from .leaves import BitCrop, DerivedMask, PolygonMask, rasterize_polygons_on_rois

__all__ = ["crop_and_resize_leaves"]

# Bilinear samples per output pixel side when bits are resized to M x M (see _crop_bits).
BIT_SAMPLES = 2

# A node of the target table: ("z", 0) the empty mask, ("p", i) the i-th polygon raster,
# ("b", i) the i-th bit crop, ("d", i) the i-th derived mask.
Node = Tuple[str, int]


def crop_and_resize_leaves(
    storage, index: torch.Tensor, boxes: torch.Tensor, mask_size: int, cols: Sequence[int]
) -> torch.Tensor:
    """
    Rasterise ``storage.leaves[index[r]][j]`` on ``boxes[r]`` for every ROI r and column j.

    Each distinct (ROI, leaf) pair is rasterised once, so a derived mask whose operands are other
    masks of the instance (occluded = amodal - visible) costs one bitwise op on their crops.
    Polygons: one batched pycocotools pass on the CPU; bit crops: one ROIAlign per stored crop on the
    storage's device; derived masks: one tensor op per (depth, op) group.

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
    rows = host[:, 0].astype(np.int64).tolist()

    polygons: List[Tuple[PolygonMask, int]] = []
    crops: List[Tuple[BitCrop, int]] = []
    derived: List[Tuple[str, Node, Node]] = []
    memo: Dict[Tuple[int, int], Node] = {}

    def node(leaf, r: int) -> Node:
        if leaf is None:
            return ("z", 0)
        key = (r, id(leaf))
        if key not in memo:
            if isinstance(leaf, PolygonMask):
                polygons.append((leaf, r))
                memo[key] = ("p", len(polygons) - 1)
            elif isinstance(leaf, BitCrop):
                crops.append((leaf, r))
                memo[key] = ("b", len(crops) - 1)
            elif isinstance(leaf, DerivedMask):
                a, b = node(leaf.a, r), node(leaf.b, r)
                derived.append((leaf.op, a, b))
                memo[key] = ("d", len(derived) - 1)
            else:
                raise TypeError(f"unknown stored mask {type(leaf).__name__}")
        return memo[key]

    leaves = storage.leaves
    assigned = [node(leaves[s][j], r) for r, s in enumerate(rows) for j in cols]

    parts = [torch.zeros((1, m, m), dtype=torch.bool, device=device)]
    if polygons:
        rasters = rasterize_polygons_on_rois(
            [p for p, _ in polygons], host[[r for _, r in polygons], 1:].astype(np.float32), m
        )
        parts.append(torch.from_numpy(rasters).to(device))
    if crops:
        parts.append(_crop_bits(storage, crops, boxes, m).to(device))
    table = torch.cat(parts)
    first = {"z": 0, "p": 1, "b": 1 + len(polygons)}
    derived_row: Dict[int, int] = {}

    def row(nd: Node) -> int:
        return derived_row[nd[1]] if nd[0] == "d" else first[nd[0]] + nd[1]

    if derived:
        depth: List[int] = []
        for _, a, b in derived:  # operands come before the masks made of them
            depth.append(1 + max(depth[x[1]] if x[0] == "d" else 0 for x in (a, b)))
        for d in sorted(set(depth)):
            for op in ("-", "&", "|"):
                ids = [i for i, (o, _, _) in enumerate(derived) if depth[i] == d and o == op]
                if not ids:
                    continue
                ia = torch.tensor([row(derived[i][1]) for i in ids], device=device)
                ib = torch.tensor([row(derived[i][2]) for i in ids], device=device)
                a, b = table[ia], table[ib]
                result = a & ~b if op == "-" else (a & b if op == "&" else a | b)
                for i, r in zip(ids, range(len(table), len(table) + len(ids))):
                    derived_row[i] = r
                table = torch.cat([table, result])
    picks = torch.tensor([row(nd) for nd in assigned], device=device)
    return table[picks].view(n, kk, m, m)


def _crop_bits(
    storage, crops: List[Tuple[BitCrop, int]], boxes: torch.Tensor, m: int
) -> torch.Tensor:
    """
    ROIAlign (aligned, >= 0.5) of each (crop, ROI) pair, as ``BitMasks.crop_and_resize`` but with
    2 x 2 samples per output pixel: BitMasks' adaptive sampling takes (ROI side / M)^2 samples per
    pixel, 10x the whole cost of the targets on COCOA-size objects, for the same mask on >= 99% of
    the pixels (tests/test_structures_storage.py measures the agreement).
    """
    bits_device = storage.flat.device
    groups: Dict[int, Tuple[BitCrop, List[int], List[int]]] = {}
    for t, (crop, r) in enumerate(crops):
        groups.setdefault(id(crop), (crop, [], []))
        groups[id(crop)][1].append(r)
        groups[id(crop)][2].append(t)
    align = ROIAlign((m, m), 1.0, BIT_SAMPLES, aligned=True)
    out = torch.zeros((len(crops), m, m), dtype=torch.bool, device=bits_device)
    boxes = boxes.to(bits_device, torch.float32)
    for crop, rois_of, targets in groups.values():
        if crop.h == 0 or crop.w == 0:
            continue
        data = storage.crop_bits(crop).to(torch.float32)[None, None]
        sel = torch.tensor(rois_of, device=bits_device)
        shift = torch.tensor([crop.x0, crop.y0, crop.x0, crop.y0], device=bits_device)
        rois = torch.cat(
            [torch.zeros((len(rois_of), 1), device=bits_device), boxes[sel] - shift], 1
        )
        out[torch.tensor(targets, device=bits_device)] = align(data, rois)[:, 0] >= 0.5
    return out
