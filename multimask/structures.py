"""``MultiMasks``: K named masks for each of N instances, carried by ``Instances`` as ``gt_multimask``."""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F

from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

__all__ = ["MultiMasks", "segmentation_to_bitmask"]


def segmentation_to_bitmask(segm: Any, height: int, width: int) -> np.ndarray:
    """
    Rasterise one instance's mask given in any COCO form.

    Args:
        segm: polygons (list of flat [x0, y0, x1, y1, ...] lists), an RLE dict (compressed or uncompressed
            counts, with "size" = [height, width]), or an (H, W) array.
        height, width: the image size the mask must have.

    Returns:
        ndarray of shape (H, W), bool.

    Raises:
        ValueError: if the mask is of another size than the image or of no known form.
    """
    if isinstance(segm, list):
        if len(segm) == 0:
            return np.zeros((height, width), dtype=bool)
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], height, width)
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"RLE dict needs 'counts' and 'size', got keys {sorted(segm)}")
        if [int(s) for s in segm["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(segm['size'])} differs from image size {[height, width]}")
        rle = segm
        if isinstance(segm["counts"], list):  # uncompressed RLE
            rle = mask_util.frPyObjects(segm, height, width)
        return mask_util.decode(rle).astype(bool)
    if isinstance(segm, (np.ndarray, torch.Tensor)):
        arr = np.asarray(segm.cpu() if isinstance(segm, torch.Tensor) else segm)
        if arr.shape != (height, width):
            raise ValueError(f"bitmask shape {arr.shape} differs from image size {(height, width)}")
        return arr.astype(bool)
    raise ValueError(f"a mask must be polygons, an RLE dict or an array, got {type(segm).__name__}")


class MultiMasks:
    """
    K named bitmasks per instance, plus a flag per (instance, mask) saying whether that mask is annotated.

    A mask that is not annotated for an instance is stored as empty and must be ignored (the losses and the
    evaluator do); it is never a claim that the object has an empty mask.

    Indexing does not copy the masks: it keeps a view (an index into the stored masks), so detectron2's
    proposal matching, which indexes every ``gt_*`` field with one row per sampled proposal, costs no
    memory per proposal. ``crop_and_resize`` then reads the ROI of each row from the shared storage.

    Attributes:
        mask_names (tuple[str]): the K names, in order.
        annotated (Tensor): shape (N, K), bool.
        image_size (tuple[int, int]): (H, W).
    """

    def __init__(
        self,
        masks: Union[torch.Tensor, np.ndarray],
        mask_names: Sequence[str],
        annotated: Optional[Union[torch.Tensor, np.ndarray]] = None,
        _index: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            masks: shape (N, K, H, W), bool or 0/1 numbers.
            mask_names: K names.
            annotated: shape (N, K) bool; None = every mask annotated.
        """
        device = masks.device if isinstance(masks, torch.Tensor) else torch.device("cpu")
        masks = torch.as_tensor(masks, device=device)
        if masks.dim() != 4:
            raise ValueError(f"MultiMasks expects masks of shape (N, K, H, W), got {tuple(masks.shape)}")
        self.mask_names = tuple(mask_names)
        if masks.shape[1] != len(self.mask_names):
            raise ValueError(
                f"masks have K={masks.shape[1]} channels but {len(self.mask_names)} names were given: "
                f"{list(self.mask_names)}"
            )
        self._data = masks if masks.dtype == torch.bool else masks != 0
        self._index = (
            torch.arange(len(masks), device=device) if _index is None else _index.to(torch.long)
        )
        if annotated is None:
            annotated = torch.ones((len(self._index), len(self.mask_names)), dtype=torch.bool)
        self.annotated = torch.as_tensor(annotated, device=device).to(torch.bool)
        if self.annotated.shape != (len(self._index), len(self.mask_names)):
            raise ValueError(
                f"annotated must have shape {(len(self._index), len(self.mask_names))}, "
                f"got {tuple(self.annotated.shape)}"
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_segmentations(
        cls,
        segms: Sequence[Union[Dict[str, Any], Sequence[Any]]],
        mask_names: Sequence[str],
        image_size: Tuple[int, int],
    ) -> "MultiMasks":
        """
        Build from per-instance masks in COCO forms.

        Args:
            segms: one entry per instance: a dict mask name -> mask, or a list of K masks in mask_names
                order. A mask is polygons, an RLE dict, an (H, W) array, or None (not annotated).
                Names missing from a dict are not annotated.
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
        if isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            if item.shape != (len(self),):
                raise IndexError(f"bool index of shape {tuple(item.shape)} for {len(self)} instances")
        index = self._index[item]
        return MultiMasks(self._data, self.mask_names, self.annotated[item], _index=index)

    @classmethod
    def cat(cls, multimasks_list: List["MultiMasks"]) -> "MultiMasks":
        """Concatenate along instances; masks of different image sizes are zero-padded to the largest."""
        if len(multimasks_list) == 0:
            raise ValueError("MultiMasks.cat needs at least one MultiMasks")
        names = multimasks_list[0].mask_names
        for m in multimasks_list:
            if m.mask_names != names:
                raise ValueError(f"cannot cat MultiMasks with names {m.mask_names} and {names}")
        h = max(m.image_size[0] for m in multimasks_list)
        w = max(m.image_size[1] for m in multimasks_list)
        tensors = [
            F.pad(m.tensor, (0, w - m.image_size[1], 0, h - m.image_size[0])) for m in multimasks_list
        ]
        annotated = torch.cat([m.annotated for m in multimasks_list])
        return cls(torch.cat(tensors), names, annotated)

    def to(self, *args: Any, **kwargs: Any) -> "MultiMasks":
        data = self._data.to(*args, **kwargs)
        return MultiMasks(
            data,
            self.mask_names,
            self.annotated.to(device=data.device),
            _index=self._index.to(device=data.device),
        )

    @property
    def device(self) -> torch.device:
        return self._data.device

    # ------------------------------------------------------------------ accessors
    @property
    def image_size(self) -> Tuple[int, int]:
        return (int(self._data.shape[2]), int(self._data.shape[3]))

    @property
    def tensor(self) -> torch.Tensor:
        """The masks as a tensor of shape (N, K, H, W), bool (a copy when this is an indexed view)."""
        return self._data[self._index]

    def name_index(self, name: str) -> int:
        if name not in self.mask_names:
            raise KeyError(f"mask name {name!r} not in {list(self.mask_names)}")
        return self.mask_names.index(name)

    def get(self, name: str) -> BitMasks:
        """The mask called `name` of every instance, as BitMasks of shape (N, H, W)."""
        return BitMasks(self._data[self._index, self.name_index(name)])

    def annotated_for(self, name: str) -> torch.Tensor:
        """Shape (N,) bool: which instances have the mask `name` annotated."""
        return self.annotated[:, self.name_index(name)]

    def area(self) -> torch.Tensor:
        """Shape (N, K), the pixel count of every mask (0 for masks that are not annotated)."""
        return self.tensor.flatten(2).sum(dim=2)

    def nonempty(self) -> torch.Tensor:
        """Shape (N,) bool: instances with at least one non-empty mask."""
        return self.tensor.flatten(1).any(dim=1)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """
        Crop each instance's K masks to its box and resize them, as ``BitMasks.crop_and_resize`` does
        for one mask.

        Args:
            boxes: shape (N, 4), XYXY in image coordinates, one per instance.
            mask_size: side M of the output.

        Returns:
            Tensor of shape (N, K, M, M), bool.
        """
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} instances")
        if len(self) == 0:
            return torch.zeros(
                (0, len(self.mask_names), mask_size, mask_size), dtype=torch.bool, device=self.device
            )
        # Only the stored rows that are referenced are converted to float; the view's index is the
        # ROIAlign batch index, so no per-proposal copy of the full masks is made.
        used, batch_idx = torch.unique(self._index, return_inverse=True)
        data = self._data[used].to(dtype=torch.float32)
        rois = torch.cat([batch_idx.to(boxes.dtype)[:, None], boxes.to(data.device)], dim=1)
        out = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(data, rois.to(data.dtype))
        return out >= 0.5

    def __repr__(self) -> str:
        return (
            f"MultiMasks(num_instances={len(self)}, mask_names={list(self.mask_names)}, "
            f"image_size={self.image_size})"
        )

    def __iter__(self) -> Iterable[torch.Tensor]:
        yield from self.tensor
