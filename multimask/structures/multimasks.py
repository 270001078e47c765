"""``MultiMasks``: K named masks for each of N instances, carried by ``Instances`` as ``gt_multimask``."""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks, Boxes, PolygonMasks

from .leaves import (
    BitCrop,
    DerivedMask,
    Leaf,
    PolygonMask,
    rasterize_polygons_in_boxes,
    rasterize_polygons_on_rois,
)
from .segmentation import segmentation_to_bitmask

__all__ = ["MaskStorage", "MultiMasks", "NamedMasks"]


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
            polygons = {id(x): x for row in self.leaves for x in _walk(row) if isinstance(x, PolygonMask)}
            rasters = dict(zip(polygons, rasterize_polygons_in_boxes(list(polygons.values()), (h, w))))
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


class MultiMasks:
    """
    K named masks per instance, plus a flag per (instance, mask) saying whether that mask is annotated.

    A mask that is not annotated for an instance is stored as empty and must be ignored (the losses and the
    evaluator do); it is never a claim that the object has an empty mask.

    Masks are stored compactly (see ``multimask.structures.leaves``): polygons stay polygons, bits are
    kept on each mask's box only, and derived masks (``amodal - visible``) as their operands. Nothing
    is held at image size unless a full-image accessor (``tensor``, ``get``, ``area``) asks for it.
    ``crop_and_resize`` (the training targets) rasterises each ROI at M x M, on the ROIs' device.

    Indexing does not copy the masks: a view keeps an index into the stored masks, so detectron2's
    proposal matching, which indexes every ``gt_*`` field with one row per sampled proposal, costs no
    memory per proposal. Every tensor (``annotated``, the index, the packed bits) follows ``.to()``.

    Attributes:
        mask_names (tuple[str]): the K names, in order.
        annotated (Tensor): shape (N, K), bool.
        image_size (tuple[int, int]): (H, W).
    """

    def __init__(
        self,
        masks: Optional[Union[torch.Tensor, np.ndarray]],
        mask_names: Sequence[str],
        annotated: Optional[Union[torch.Tensor, np.ndarray]] = None,
        _index: Optional[torch.Tensor] = None,
        *,
        polygons: Optional[List[List[Optional[Sequence[Any]]]]] = None,
        image_size: Optional[Tuple[int, int]] = None,
        _storage: Optional[MaskStorage] = None,
    ):
        """
        Args:
            masks: shape (N, K, H, W), bool or 0/1 numbers; None = no mask given as bits (then
                `polygons` and `image_size` are required).
            mask_names: K names.
            annotated: shape (N, K) bool; None = every mask annotated.
            polygons: N lists of K entries: the polygons of that mask (a non-empty list of flat
                [x0, y0, x1, y1, ...] arrays, image coordinates) or None where the mask is given by
                `masks` (or is empty). Where an entry has polygons, `masks` must be empty there.
            image_size: (H, W); required when `masks` is None, else it must agree with `masks`.
        """
        self.mask_names = tuple(mask_names)
        k = len(self.mask_names)
        if _storage is None:
            _storage = self._build_storage(masks, k, polygons, image_size)
        self._storage = _storage
        device = _storage.flat.device
        num_stored = len(_storage.leaves)
        self._index = (
            torch.arange(num_stored, device=device) if _index is None else _index.to(torch.long)
        )
        if annotated is None:
            annotated = torch.ones((len(self._index), k), dtype=torch.bool, device=device)
        self.annotated = torch.as_tensor(annotated, device=device).to(torch.bool)
        if self.annotated.shape != (len(self._index), k):
            raise ValueError(
                f"annotated must have shape {(len(self._index), k)}, "
                f"got {tuple(self.annotated.shape)}"
            )

    def _build_storage(self, masks, k, polygons, image_size) -> MaskStorage:
        """Storage of the public constructor's arguments: (N, K, H, W) bits and/or polygons."""
        if masks is not None:
            masks = torch.as_tensor(masks)
            if masks.dim() != 4:
                raise ValueError(
                    f"MultiMasks expects masks of shape (N, K, H, W), got {tuple(masks.shape)}"
                )
            if masks.shape[1] != k:
                raise ValueError(
                    f"masks have K={masks.shape[1]} channels but {k} names were given: "
                    f"{list(self.mask_names)}"
                )
            size = (int(masks.shape[2]), int(masks.shape[3]))
            if image_size is not None and tuple(image_size) != size:
                raise ValueError(f"image_size {tuple(image_size)} but masks of size {size}")
            n, (h, w) = len(masks), size
            flat = (masks if masks.dtype == torch.bool else masks != 0).reshape(-1)
            leaves: List[List[Leaf]] = [
                [BitCrop((i * k + j) * h * w, 0, 0, h, w) for j in range(k)] for i in range(n)
            ]
        else:
            if polygons is None or image_size is None:
                raise ValueError("MultiMasks without bit masks needs polygons and image_size")
            size, n = (int(image_size[0]), int(image_size[1])), len(polygons)
            flat = torch.zeros(0, dtype=torch.bool)
            leaves = [[None] * k for _ in range(n)]
        if polygons is not None:
            if len(polygons) != n or any(len(p) != k for p in polygons):
                raise ValueError(f"polygons must hold {n} lists of {k} entries (one per mask name)")
            for i, row in enumerate(polygons):
                for j, p in enumerate(row):
                    if p:
                        leaves[i][j] = PolygonMask.from_polygons(p)
        return MaskStorage(leaves, flat, size, k)

    @classmethod
    def from_leaves(
        cls,
        leaves: List[List[Leaf]],
        flat: torch.Tensor,
        mask_names: Sequence[str],
        image_size: Tuple[int, int],
        annotated: Optional[torch.Tensor] = None,
    ) -> "MultiMasks":
        """Build from stored leaves (see ``multimask.structures.leaves``); what the mapper does."""
        storage = MaskStorage(leaves, flat, image_size, len(mask_names))
        return cls(None, mask_names, annotated, _storage=storage)

    @classmethod
    def from_segmentations(
        cls,
        segms: Sequence[Union[Dict[str, Any], Sequence[Any]]],
        mask_names: Sequence[str],
        image_size: Tuple[int, int],
    ) -> "MultiMasks":
        """
        Build from per-instance masks in the forms of the dataset dicts.

        Args:
            segms: one entry per instance: a dict mask name -> mask, or a list of K masks in mask_names
                order. A mask is polygons, an RLE dict, an (H, W) array, a derived mask, or None (not
                annotated). Names missing from a dict are not annotated.
            mask_names: K names.
            image_size: (H, W).
        """
        h, w = image_size
        k = len(mask_names)
        data = np.zeros((len(segms), k, h, w), dtype=bool)
        annotated = np.zeros((len(segms), k), dtype=bool)
        for i, per_inst in enumerate(segms):
            if isinstance(per_inst, dict):
                per_inst = [per_inst.get(name) for name in mask_names]
            if len(per_inst) != k:
                raise ValueError(f"instance {i} has {len(per_inst)} masks, expected {k}")
            for j, segm in enumerate(per_inst):
                if segm is None:
                    continue
                data[i, j] = segmentation_to_bitmask(segm, h, w)
                annotated[i, j] = True
        return cls(torch.from_numpy(data), mask_names, torch.from_numpy(annotated))

    @classmethod
    def from_masks(
        cls,
        masks: Dict[str, Union[BitMasks, PolygonMasks, torch.Tensor]],
        image_size: Tuple[int, int],
        annotated: Optional[torch.Tensor] = None,
    ) -> "MultiMasks":
        """
        Build from one detectron2 mask structure (or (N, H, W) tensor) per name.

        Args:
            masks: ordered dict mask name -> BitMasks / PolygonMasks / Tensor (N, H, W), same N for all.
            image_size: (H, W), used to rasterise PolygonMasks.
            annotated: (N, K) bool, None = all annotated.
        """
        h, w = image_size
        per_name = []
        for m in masks.values():
            if isinstance(m, PolygonMasks):
                m = BitMasks.from_polygon_masks(m, h, w)
            per_name.append(m.tensor if isinstance(m, BitMasks) else torch.as_tensor(m))
        return cls(torch.stack(per_name, dim=1), list(masks.keys()), annotated)

    # ------------------------------------------------------------- the Instances protocol
    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: Union[int, slice, torch.Tensor, str]) -> Union["MultiMasks", BitMasks]:
        """
        Index instances like ``BitMasks`` (int / slice / bool or long tensor -> MultiMasks), or get one
        mask of every instance by name (str -> BitMasks of shape (N, H, W)).
        """
        if isinstance(item, str):
            return self.get(item)
        if isinstance(item, int):
            item = slice(item, item + 1 if item != -1 else None)
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.bool and item.shape != (len(self),):
                raise IndexError(f"bool index of shape {tuple(item.shape)} for {len(self)} instances")
            item = item.to(self._index.device)
        return MultiMasks(
            None, self.mask_names, self.annotated[item], self._index[item], _storage=self._storage
        )

    @classmethod
    def cat(cls, multimasks_list: List["MultiMasks"]) -> "MultiMasks":
        """Concatenate along instances (of one or several images); the image size is the largest."""
        if len(multimasks_list) == 0:
            raise ValueError("MultiMasks.cat needs at least one MultiMasks")
        names = multimasks_list[0].mask_names
        for m in multimasks_list:
            if m.mask_names != names:
                raise ValueError(f"cannot cat MultiMasks with names {m.mask_names} and {names}")
        device = multimasks_list[0].device
        leaves: List[List[Leaf]] = []
        flats, offset = [], 0
        for m in multimasks_list:
            store = m._storage
            # leaves keep their coordinates; bit crops move by the packed offset of their storage
            memo: Dict[int, Leaf] = {}
            for s in m._index.tolist():  # host-side leaves are picked by index: one transfer
                leaves.append([_moved(x, offset, memo) for x in store.leaves[s]])
            flats.append(store.flat.to(device))
            offset += store.flat.numel()
        h = max(m.image_size[0] for m in multimasks_list)
        w = max(m.image_size[1] for m in multimasks_list)
        annotated = torch.cat([m.annotated.to(device) for m in multimasks_list])
        return cls.from_leaves(leaves, torch.cat(flats), names, (h, w), annotated)

    def to(self, *args: Any, **kwargs: Any) -> "MultiMasks":
        """Move every tensor (annotated, the view's index, the packed bits); polygons stay numpy."""
        device = torch.empty(0, device=self.device).to(*args, **kwargs).device
        return MultiMasks(
            None,
            self.mask_names,
            self.annotated.to(device),
            self._index.to(device),
            _storage=self._storage.to(device),
        )

    @property
    def device(self) -> torch.device:
        return self._storage.flat.device

    # ------------------------------------------------------------------ accessors
    @property
    def image_size(self) -> Tuple[int, int]:
        return self._storage.image_size

    @property
    def has_polygons(self) -> bool:
        """Whether some masks are stored as polygons (rasterised when needed)."""
        return any(isinstance(x, PolygonMask) for row in self._storage.leaves for x in _walk(row))

    @property
    def tensor(self) -> torch.Tensor:
        """The masks at image size, a tensor of shape (N, K, H, W), bool. Costly: not for training."""
        return self._storage.full_masks()[self._index]

    def name_index(self, name: str) -> int:
        if name not in self.mask_names:
            raise KeyError(f"mask name {name!r} not in {list(self.mask_names)}")
        return self.mask_names.index(name)

    def get(self, name: str) -> BitMasks:
        """The mask called `name` of every instance, as BitMasks of shape (N, H, W)."""
        return BitMasks(self._storage.full_masks()[self._index, self.name_index(name)])

    def named(self, name: str) -> "NamedMasks":
        """The mask called `name` of every instance, sharing this storage (see ``NamedMasks``)."""
        return NamedMasks(self, self.name_index(name))

    def annotated_for(self, name: str) -> torch.Tensor:
        """Shape (N,) bool: which instances have the mask `name` annotated."""
        return self.annotated[:, self.name_index(name)]

    def area(self) -> torch.Tensor:
        """Shape (N, K), the pixel count of every mask (0 for masks that are not annotated)."""
        return self.tensor.flatten(2).sum(dim=2)

    def nonempty(self) -> torch.Tensor:
        """Shape (N,) bool: instances with at least one non-empty mask."""
        return self.tensor.flatten(1).any(dim=1)

    def get_bounding_boxes(self, names: Optional[Sequence[str]] = None) -> Boxes:
        """
        Per instance, the box of the union of its masks (of `names`; None = all), clipped to the image,
        without rasterising: tight for bits, the vertex extent for polygons (as ``PolygonMasks``); a
        difference ``a - b`` takes the box of ``a``. An instance without pixels gets an empty box.
        """
        cols = range(len(self.mask_names)) if names is None else [self.name_index(n) for n in names]
        store, h, w = self._storage, *self.image_size
        boxes = np.zeros((len(self), 4), dtype=np.float64)
        for r, s in enumerate(self._index.tolist()):  # leaves live on the host: one transfer
            extents = [e for j in cols if (e := _extent(store.leaves[s][j], store)) is not None]
            if extents:
                e = np.stack(extents)
                boxes[r] = [*e[:, :2].min(axis=0), *e[:, 2:].max(axis=0)]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return Boxes(torch.as_tensor(boxes, dtype=torch.float32, device=self.device))

    def crop_and_resize(
        self, boxes: torch.Tensor, mask_size: int, names: Optional[Sequence[str]] = None
    ) -> torch.Tensor:
        """
        Crop each instance's masks to its box and resize them to M x M, as ``PolygonMasks`` /
        ``BitMasks.crop_and_resize`` do for one mask (polygons: identical to ``PolygonMasks``; bits:
        ROIAlign, aligned, >= 0.5, as ``BitMasks``). A derived mask is computed from its operands'
        M x M crops. Only the ROIs' rasters are made: nothing at image size.

        Args:
            boxes: shape (N, 4), XYXY in image coordinates, one per instance.
            mask_size: side M of the output.
            names: the masks to compute; None = all K.

        Returns:
            Tensor of shape (N, K', M, M), bool, on the device of `boxes`.
        """
        from .roi_targets import crop_and_resize_leaves

        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} instances")
        cols = range(len(self.mask_names)) if names is None else [self.name_index(n) for n in names]
        return crop_and_resize_leaves(self._storage, self._index, boxes, mask_size, list(cols))

    def __repr__(self) -> str:
        return (
            f"MultiMasks(num_instances={len(self)}, mask_names={list(self.mask_names)}, "
            f"image_size={self.image_size})"
        )

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor


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


class NamedMasks:
    """
    One named mask of a ``MultiMasks`` (N masks), sharing its storage: what the mapper gives as
    ``gt_masks`` when the primary mask is not all polygons. It has the interface detectron2's mask
    code uses (``crop_and_resize`` -> (N, M, M), indexing, ``cat``, ``to``, ``get_bounding_boxes``,
    ``nonempty``), so stock Mask R-CNN heads train on it, and like ``MultiMasks`` it copies nothing
    per proposal.
    """

    def __init__(self, multimasks: MultiMasks, column: int):
        self.multimasks = multimasks
        self.column = column

    @property
    def name(self) -> str:
        return self.multimasks.mask_names[self.column]

    def __len__(self) -> int:
        return len(self.multimasks)

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "NamedMasks":
        return NamedMasks(self.multimasks[item], self.column)

    @classmethod
    def cat(cls, masks_list: List["NamedMasks"]) -> "NamedMasks":
        return cls(MultiMasks.cat([m.multimasks for m in masks_list]), masks_list[0].column)

    def to(self, *args: Any, **kwargs: Any) -> "NamedMasks":
        return NamedMasks(self.multimasks.to(*args, **kwargs), self.column)

    @property
    def device(self) -> torch.device:
        return self.multimasks.device

    @property
    def image_size(self) -> Tuple[int, int]:
        return self.multimasks.image_size

    @property
    def tensor(self) -> torch.Tensor:
        """(N, H, W) bool, at image size."""
        return self.multimasks.tensor[:, self.column]

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """(N, M, M) bool, on the device of `boxes`."""
        return self.multimasks.crop_and_resize(boxes, mask_size, [self.name])[:, 0]

    def get_bounding_boxes(self) -> Boxes:
        return self.multimasks.get_bounding_boxes([self.name])

    def nonempty(self) -> torch.Tensor:
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        return self.tensor.flatten(1).sum(dim=1)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"NamedMasks(name={self.name!r}, num_instances={len(self)}, image_size={self.image_size})"
