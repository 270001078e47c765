"""``MultiMasks``: K named masks for each of N instances, carried by ``Instances`` as ``gt_multimask``."""

from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.structures import BitMasks, Boxes, PolygonMasks

from .leaves import BitCrop, Leaf, PolygonMask
from .segmentation import segmentation_to_bitmask
from .storage import MaskStorage, _extent, _moved

if TYPE_CHECKING:
    from .named_masks import NamedMasks

__all__ = ["MultiMasks"]


class MultiMasks:
    """
    K named masks per instance, plus a flag per (instance, mask) saying whether that mask is annotated.

    A mask that is not annotated for an instance is stored as empty and must be ignored (the losses and the
    evaluator do); it is never a claim that the object has an empty mask.

    Masks are stored compactly (see ``multimask.structures.leaves``): polygons stay polygons, bits are
    kept on each mask's box only, and a derived mask (``amodal - visible``) as the bits of its exact
    result on its box. Nothing is held at image size unless a full-image accessor (``tensor``,
    ``get``, ``area``) asks for it.
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

    def __getitem__(
        self, item: Union[int, slice, torch.Tensor, str]
    ) -> Union["MultiMasks", BitMasks]:
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
                raise IndexError(
                    f"bool index of shape {tuple(item.shape)} for {len(self)} instances"
                )
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
            memo: Dict[int, Leaf] = {}  # a leaf shared by several masks stays shared
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
        return any(isinstance(x, PolygonMask) for row in self._storage.leaves for x in row)

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
        from .named_masks import NamedMasks

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
        without rasterising: tight for bits (derived masks included), the vertex extent for polygons
        (as ``PolygonMasks``). An instance without pixels gets an empty box.
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
        ROIAlign, aligned, >= 0.5, as ``BitMasks``, with 2 x 2 samples per pixel). A derived mask is
        stored as the bits of its exact result, so its target is that single mask's, whatever the
        forms of its operands. Only the ROIs' rasters are made: nothing at image size.

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
