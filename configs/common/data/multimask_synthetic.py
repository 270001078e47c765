"""
Data loaders and evaluator of the synthetic occlusion dataset, as a LazyConfig. The mappers and the
evaluator take their mask names from the model (``model.roi_heads.mask_head``), so overriding
``model.roi_heads.mask_head.mask_names`` is enough to train other masks.
"""
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from multimask.data import MultiMaskDatasetMapper
from multimask.evaluation import MultiMaskCOCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="multimask_synthetic_train"),
    mapper=L(MultiMaskDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        mask_names="${model.roi_heads.mask_head.mask_names}",
        primary="${model.roi_heads.mask_head.primary}",
    ),
    total_batch_size=8,
    num_workers=2,
)

# The validation loss (train.val_loss_max_images) uses this loader with mapper.is_train=True.
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="multimask_synthetic_val", filter_empty=False),
    mapper=L(MultiMaskDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
        image_format="${...train.mapper.image_format}",
        mask_names="${...train.mapper.mask_names}",
        primary="${...train.mapper.primary}",
    ),
    num_workers=2,
)

dataloader.evaluator = L(MultiMaskCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    mask_names="${model.roi_heads.mask_head.mask_names}",
    occluded_threshold=0.1,
    # VRSP / AISFormer / MAS-Net: segm_<name>_occ<t> and _occ<t>_strict, occluded >= t
    # (MULTIMASK.OCCLUSION_THRESHOLDS)
    occlusion_thresholds=[0.15, 0.25, 0.4],
    output_dir="${train.output_dir}/inference",
)
