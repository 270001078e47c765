"""``MaskStorage``: the stored masks of a ``MultiMasks``, and what can be read off them without pixels."""

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .leaves import BitCrop, DerivedMask, Leaf, PolygonMask, rasterize_polygons_in_boxes

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

    def crop_bits(self, leaf: BitCrop) -> torch.Tensor:
        return self.flat[leaf.offset : leaf.offset + leaf.h * leaf.w].view(leaf.h, leaf.w)

    def full_masks(self) -> torch.Tensor:
        """Every stored mask at image size, (S, K, H, W) bool, rasterised once and kept."""
        if self.full is None:
            s, k, (h, w) = len(self.leaves), self.k, self.image_size
            data = np.zeros((s, k, h, w), dtype=bool)
            polygons = {
                id(x): x for row in self.leaves for x in _walk(row) if isinstance(x, PolygonMask)
            }
            rasters = dict(
                zip(polygons, rasterize_polygons_in_boxes(list(polygons.values()), (h, w)))
            )
            memo: Dict[int, np.ndarray] = {}
            for i, row in enumerate(self.leaves):
                for j, leaf in enumerate(row):
                    if leaf is not None:
                        data[i, j] = self._full(leaf, rasters, memo)
            self.full = torch.from_numpy(data).to(self.flat.device)
        return self.full

    def _full(self, leaf: Leaf, rasters: dict, memo: Dict[int, np.ndarray]) -> np.ndarray:
        h, w = self.image_size
        if leaf is None:
            return np.zeros((h, w), dtype=bool)
        if id(leaf) in memo:
            return memo[id(leaf)]
        if isinstance(leaf, DerivedMask):
            a, b = self._full(leaf.a, rasters, memo), self._full(leaf.b, rasters, memo)
            out = _apply_op(leaf.op, a, b)
        else:
            out = np.zeros((h, w), dtype=bool)
            if isinstance(leaf, PolygonMask):
                placed = rasters[id(leaf)]
                bits = None if placed is None else placed[2]
                x0, y0 = (0, 0) if placed is None else placed[:2]
            else:
                bits, x0, y0 = self.crop_bits(leaf).cpu().numpy(), leaf.x0, leaf.y0
            if bits is not None:
                bh, bw = min(bits.shape[0], h - y0), min(bits.shape[1], w - x0)
                out[y0 : y0 + bh, x0 : x0 + bw] = bits[:bh, :bw]
        memo[id(leaf)] = out
        return out

    def to(self, device: torch.device) -> "MaskStorage":
        moved = MaskStorage(self.leaves, self.flat.to(device), self.image_size, self.k)
        moved.full = None if self.full is None else self.full.to(device)
        return moved


def _walk(row: Sequence[Leaf]) -> Iterator[Leaf]:
    """Every leaf of a row, operands of derived masks included."""
    stack = list(row)
    while stack:
        leaf = stack.pop()
        if isinstance(leaf, DerivedMask):
            stack.extend((leaf.a, leaf.b))
        elif leaf is not None:
            yield leaf


def _apply_op(op: str, a: Any, b: Any) -> Any:
    """a - b, a & b or a | b on bool arrays / tensors."""
    if op == "-":
        return a & ~b
    return a & b if op == "&" else a | b


def _extent(leaf: Leaf, storage: MaskStorage) -> Optional[np.ndarray]:
    """(x0, y0, x1, y1) containing the mask (None = empty); tight for bits, vertex extent for polygons."""
    if leaf is None:
        return None
    if isinstance(leaf, PolygonMask):
        return leaf.extent()
    if isinstance(leaf, BitCrop):
        bits = storage.crop_bits(leaf)
        if leaf.h == 0 or leaf.w == 0 or not bool(bits.any()):
            return None
        ys, xs = torch.nonzero(bits.any(dim=1))[:, 0], torch.nonzero(bits.any(dim=0))[:, 0]
        return np.array([xs.min() + leaf.x0, ys.min() + leaf.y0, xs.max() + leaf.x0 + 1,
                         ys.max() + leaf.y0 + 1], dtype=np.float64)  # fmt: skip
    a, b = _extent(leaf.a, storage), _extent(leaf.b, storage)
    if leaf.op == "-":
        return a
    if leaf.op == "|":
        if a is None or b is None:
            return b if a is None else a
        return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
    if a is None or b is None:
        return None
    box = np.concatenate([np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])])
    return box if (box[2:] > box[:2]).all() else None


def _moved(leaf: Leaf, offset: int, memo: Dict[int, Leaf]) -> Leaf:
    """`leaf` with its bit crops moved by `offset` in the packed tensor (shared operands stay shared)."""
    if leaf is None or isinstance(leaf, PolygonMask) or offset == 0:
        return leaf
    if id(leaf) not in memo:
        if isinstance(leaf, BitCrop):
            memo[id(leaf)] = leaf.moved(offset)
        else:
            memo[id(leaf)] = DerivedMask(
                leaf.op, _moved(leaf.a, offset, memo), _moved(leaf.b, offset, memo)
            )
    return memo[id(leaf)]
