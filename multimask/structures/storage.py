"""``MaskStorage``: the stored masks of a ``MultiMasks``, and what can be read off them without pixels."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .leaves import BitCrop, Leaf, PolygonMask, rasterize_polygons_in_boxes

__all__ = ["MaskStorage"]


class MaskStorage:
    """
    The stored masks of S instances: a (S, K) table of leaves (see ``multimask.structures.leaves``)
    and the one packed bool tensor that holds the bits of every ``BitCrop``.

    Leaves are host-side descriptions (polygons are numpy arrays, like ``PolygonMasks``); every
    tensor is in ``flat``, so moving a storage is one ``.to()``.
    """

    def __init__(
        self, leaves: List[List[Leaf]], flat: torch.Tensor, image_size: Tuple[int, int], k: int
    ):
        if any(len(row) != k for row in leaves):
            raise ValueError(f"every stored instance needs {k} masks (one per mask name)")
        self.leaves = leaves
        self.k = k
        self.flat = flat
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.full: Optional[torch.Tensor] = None  # (S, K, H, W) bits, once something asks for them
        self._layout: Optional[Tuple[np.ndarray, np.ndarray]] = None

    @staticmethod
    def pack(
        crops: Sequence[Tuple[int, int, Union[np.ndarray, torch.Tensor]]], device: torch.device
    ) -> Tuple[torch.Tensor, List[BitCrop]]:
        """Pack (x0, y0, (h, w) bits) crops into one 1-D bool tensor; returns it and their BitCrops."""
        parts, out, offset = [], [], 0
        for x0, y0, bits in crops:
            bits = torch.as_tensor(bits)
            out.append(BitCrop(offset, int(x0), int(y0), int(bits.shape[0]), int(bits.shape[1])))
            parts.append(bits.reshape(-1).to(torch.bool))
            offset += bits.numel()
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
        return flat.to(device), out

    def layout(self) -> Tuple[np.ndarray, np.ndarray]:
        """
        What each stored mask is, as arrays, so that ROI targets pick masks without a Python loop.

        Returns:
            (kind, first): kind (S, K) int8, 0 empty, 1 ``PolygonMask``, 2 ``BitCrop``; first
            (S, K) int64, the first column of the row that holds the same leaf (a leaf can stand
            for several masks, e.g. "visible or amodal").
        """
        if self._layout is None:
            s, k = len(self.leaves), self.k
            kind, first = np.zeros((s, k), dtype=np.int8), np.zeros((s, k), dtype=np.int64)
            for i, row in enumerate(self.leaves):
                seen: Dict[int, int] = {}
                for j, leaf in enumerate(row):
                    if leaf is not None and not isinstance(leaf, (PolygonMask, BitCrop)):
                        raise TypeError(f"unknown stored mask {type(leaf).__name__}")
                    kind[i, j] = 0 if leaf is None else (1 if isinstance(leaf, PolygonMask) else 2)
                    first[i, j] = seen.setdefault(id(leaf), j)
            self._layout = (kind, first)
        return self._layout

    def crop_bits(self, leaf: BitCrop) -> torch.Tensor:
        return self.flat[leaf.offset : leaf.offset + leaf.h * leaf.w].view(leaf.h, leaf.w)

    def full_masks(self) -> torch.Tensor:
        """Every stored mask at image size, (S, K, H, W) bool, rasterised once and kept."""
        if self.full is None:
            s, k, (h, w) = len(self.leaves), self.k, self.image_size
            data = np.zeros((s, k, h, w), dtype=bool)
            polygons = {
                id(x): x for row in self.leaves for x in row if isinstance(x, PolygonMask)
            }
            rasters = dict(
                zip(polygons, rasterize_polygons_in_boxes(list(polygons.values()), (h, w)))
            )
            for i, row in enumerate(self.leaves):
                for j, leaf in enumerate(row):
                    if isinstance(leaf, PolygonMask):
                        placed = rasters[id(leaf)]
                    elif isinstance(leaf, BitCrop):
                        placed = (leaf.x0, leaf.y0, self.crop_bits(leaf).cpu().numpy())
                    else:
                        placed = None
                    if placed is not None:
                        x0, y0, bits = placed
                        bh, bw = min(bits.shape[0], h - y0), min(bits.shape[1], w - x0)
                        data[i, j, y0 : y0 + bh, x0 : x0 + bw] = bits[:bh, :bw]
            self.full = torch.from_numpy(data).to(self.flat.device)
        return self.full

    def to(self, device: torch.device) -> "MaskStorage":
        moved = MaskStorage(self.leaves, self.flat.to(device), self.image_size, self.k)
        moved.full = None if self.full is None else self.full.to(device)
        moved._layout = self._layout
        return moved


def _extent(leaf: Leaf, storage: MaskStorage) -> Optional[np.ndarray]:
    """(x0, y0, x1, y1) containing the mask (None = empty); tight for bits, vertex extent for polygons."""
    if leaf is None:
        return None
    if isinstance(leaf, PolygonMask):
        return leaf.extent()
    bits = storage.crop_bits(leaf)
    if leaf.h == 0 or leaf.w == 0 or not bool(bits.any()):
        return None
    ys, xs = torch.nonzero(bits.any(dim=1))[:, 0], torch.nonzero(bits.any(dim=0))[:, 0]
    return np.array([xs.min() + leaf.x0, ys.min() + leaf.y0, xs.max() + leaf.x0 + 1,
                     ys.max() + leaf.y0 + 1], dtype=np.float64)  # fmt: skip


def _moved(leaf: Leaf, offset: int, memo: Dict[int, Leaf]) -> Leaf:
    """`leaf` with its bits moved by `offset` in the packed tensor (a shared leaf stays shared)."""
    if not isinstance(leaf, BitCrop) or offset == 0:
        return leaf
    if id(leaf) not in memo:
        memo[id(leaf)] = leaf.moved(offset)
    return memo[id(leaf)]
