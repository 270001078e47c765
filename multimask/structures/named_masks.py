"""``NamedMasks``: one named mask of a ``MultiMasks``, with detectron2's mask interface."""

from typing import Any, Iterator, List, Tuple, Union

import torch

from detectron2.structures import Boxes

from .multimasks import MultiMasks

__all__ = ["NamedMasks"]


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
