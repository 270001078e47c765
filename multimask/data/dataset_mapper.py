"""``MultiMaskDatasetMapper``: detectron2's DatasetMapper for annotations with several masks."""

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..config import primary_mask_name
from .build import check_train_mask_names
from .detection_utils import multimask_annotations_to_instances

__all__ = ["MultiMaskDatasetMapper"]

logger = logging.getLogger(__name__)


class MultiMaskDatasetMapper:
    """
    Map a standard dataset dict whose annotations carry ``multimask`` into model inputs.

    It does what detectron2's ``DatasetMapper`` does (read the image, apply the configured
    augmentations, build ``Instances``), and every mask of every instance goes through the same
    transforms as the image and boxes, polygons and RLE alike. In training,
    ``dataset_dict["instances"]`` has ``gt_boxes``, ``gt_classes``, ``gt_multimask`` (MultiMasks in
    ``mask_names`` order, with not-annotated masks flagged) and ``gt_masks`` (the primary mask).
    Crowd annotations and instances whose box becomes empty are dropped, with all their masks.

    ``INPUT.MASK_FORMAT`` means what it means for detectron2's mapper: with "polygon" (the
    default), polygon annotations stay polygons (transformed, rasterised on each ROI when the mask
    loss needs them) and ``gt_masks`` is a PolygonMasks when every primary mask is polygons; with
    "bitmask", every mask is rasterised to the image here. RLE masks are bits in both.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        mask_names: Sequence[str],
        primary: Optional[str] = None,
        recompute_boxes: bool = False,
        mask_format: str = "polygon",
    ):
        """
        Args:
            is_train: whether annotations are turned into ``instances`` (True) or dropped (False).
            augmentations: augmentations or deterministic transforms to apply.
            image_format: an image format supported by ``detection_utils.read_image``.
            mask_names: the K mask names of ``gt_multimask``, in order.
            primary: the mask name given as ``gt_masks``; None = the first of mask_names.
            recompute_boxes: overwrite the boxes by the boxes of each instance's primary mask as
                cropped, polygons clipped to the crop (set when cropping, as detectron2's mapper
                does; see ``multimask_annotations_to_instances``).
            mask_format: "polygon" or "bitmask", as cfg.INPUT.MASK_FORMAT (see the class).
        """
        if primary is not None and primary not in mask_names:
            raise ValueError(
                f"primary mask {primary!r} is not one of mask_names {list(mask_names)}"
            )
        if mask_format not in ("polygon", "bitmask"):
            raise ValueError(
                f"INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got {mask_format!r}"
            )
        self.is_train = is_train
        self.mask_format = mask_format
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.mask_names = list(mask_names)
        self.primary = primary or self.mask_names[0]
        self.recompute_boxes = recompute_boxes
        mode = "training" if is_train else "inference"
        logger.info(
            f"[MultiMaskDatasetMapper] Augmentations used in {mode}: {augmentations}; masks "
            f"{self.mask_names} (primary {self.primary!r}), mask format {mask_format!r}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        augs = utils.build_augmentation(cfg, is_train)
        recompute_boxes = False
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            recompute_boxes = True
        mask_names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
        if is_train:
            # fail at start-up rather than at the first batch; with several training datasets a
            # name one of them lacks is not annotated for its objects (see data/build.py)
            check_train_mask_names(cfg.DATASETS.TRAIN, (), mask_names)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "mask_names": mask_names,
            "primary": primary_mask_name(cfg),
            "recompute_boxes": recompute_boxes,
            "mask_format": cfg.INPUT.MASK_FORMAT,
        }

    def _read_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        file_name = dataset_dict["file_name"]
        image_id = dataset_dict.get("image_id")
        # read_image opens through iopath's PathManager, so a file name may be any URI it has a
        # handler for; a missing one raises FileNotFoundError from there, as a local file does
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"image id {image_id}: image file {file_name} does not exist"
            ) from e
        except Exception as e:  # PIL raises several types for corrupt or truncated files
            raise ValueError(f"image id {image_id}: cannot read image file {file_name}: {e}") from e
        utils.check_image_size(dataset_dict, image)
        return image

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict: one image in detectron2's standard format, annotations with ``multimask``.

        Returns:
            dict: ``image`` (Tensor of shape (C, H, W), uint8), ``height``, ``width``,
            ``file_name``, ``image_id`` and, in training, ``instances``.
        """
        # A shallow copy is enough: the annotations are read, never modified, which saves the
        # deep copy of every polygon that detectron2's mapper makes.
        dataset_dict = dict(dataset_dict)
        annos = dataset_dict.pop("annotations", None)
        image = self._read_image(dataset_dict)
        original_size = image.shape[:2]

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train or annos is None:
            return dataset_dict
        annos = [a for a in annos if a.get("iscrowd", 0) == 0]
        try:
            dataset_dict["instances"] = multimask_annotations_to_instances(
                annos,
                image_shape,
                self.mask_names,
                self.primary,
                transforms=transforms,
                original_size=original_size,
                recompute_boxes=self.recompute_boxes,
                mask_format=self.mask_format,
            )
        except ValueError as e:
            raise ValueError(
                f"image id {dataset_dict.get('image_id')} ({dataset_dict['file_name']}): {e}"
            ) from e
        return dataset_dict
