"""Multi-mask data: dataset loaders and registration, and the mapper that emits ``gt_multimask``."""

from .build import (
    AGNOSTIC_CLASS,
    MultiDatasetDicts,
    RemappedClassesEvaluator,
    TrainClasses,
    cfg_train_classes,
    check_train_mask_names,
    dataset_weights_sampler,
    multi_dataset_dicts,
    resolve_train_classes,
)
from .dataset_mapper import MultiMaskDatasetMapper
from .datasets import builtin  # registers kins_*, cocoa_*, d2sa_* and multimask_synthetic_*
from .datasets import (
    AMODAL_FORMATS,
    AMODAL_MASK_NAMES,
    SYNTHETIC_CLASSES,
    load_amodal_json,
    load_multimask_coco_json,
    load_multimask_labelme_json,
    load_synthetic_dataset,
    register_amodal_instances,
    register_multimask_coco_instances,
    register_multimask_labelme_instances,
    register_synthetic_dataset,
)
from .detection_utils import (
    check_mask_names,
    check_same_classes,
    multimask_annotations_to_instances,
)
