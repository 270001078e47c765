"""Dataset loaders and registration: COCO JSON, LabelMe folders, amodal formats, synthetic."""

from . import builtin  # registers the builtin amodal and synthetic dataset names
from .amodal import AMODAL_FORMATS, AMODAL_MASK_NAMES, load_amodal_json, register_amodal_instances
from .amodal import AMODAL_READERS, AmodalReader, register_amodal_format
from .coco import load_multimask_coco_json, register_multimask_coco_instances
from .labelme import load_multimask_labelme_json, register_multimask_labelme_instances
from .synthetic import SYNTHETIC_CLASSES, load_synthetic_dataset, register_synthetic_dataset
