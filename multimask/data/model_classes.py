"""
The classes a trained model predicts, for the tools that name them (demo, ONNX export).

A model trained on one dataset predicts that dataset's classes; one trained on several with
``MULTIMASK.CLASS_AGNOSTIC_TRAIN`` predicts the one class ``object``; with ``MULTIMASK.CLASS_UNION``
the union of the training sets' class lists (:func:`multimask.data.build.resolve_train_classes`).
:func:`model_metadata` gives the metadata that names the predicted class ids, and
:func:`model_class_ids` maps a dataset's class ids (e.g. of a detections file given as boxes) to
the model's.
"""

import logging
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from .build import AGNOSTIC_CLASS, TrainClasses, cfg_train_classes

__all__ = [
    "dataset_ids",
    "dataset_metadata_with_classes",
    "model_class_ids",
    "model_metadata",
    "model_train_classes",
]

logger = logging.getLogger(__name__)


def dataset_metadata_with_classes(name: str) -> Metadata:
    """`name`'s metadata; a builtin whose classes are only in its file is loaded once for them."""
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None and name in DatasetCatalog.list():
        try:
            DatasetCatalog.get(name)
        except (OSError, ValueError) as e:
            logger.warning(f"class names of {name!r} unknown (its annotations: {e}); no names")
    return metadata


def dataset_ids(metadata) -> Optional[List[int]]:
    """The dataset category id of each contiguous class (results files); None without a mapping."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return None
    inverse = {v: k for k, v in mapping.items()}
    return [inverse[i] for i in range(len(inverse))]


def model_train_classes(cfg) -> Optional[TrainClasses]:
    """
    ``cfg_train_classes(cfg)`` for a config that trains on several class lists (CLASS_AGNOSTIC_TRAIN
    or CLASS_UNION), None otherwise. The union needs the training sets' class lists: where they
    cannot be read (no annotation files on a deployment machine) it is None, with a warning.
    """
    if not (cfg.MULTIMASK.CLASS_AGNOSTIC_TRAIN or cfg.MULTIMASK.CLASS_UNION):
        return None
    if cfg.MULTIMASK.CLASS_AGNOSTIC_TRAIN:
        return TrainClasses("agnostic", [AGNOSTIC_CLASS])
    try:
        return cfg_train_classes(cfg)
    except (OSError, ValueError, KeyError) as e:
        logger.warning(
            f"MULTIMASK.CLASS_UNION: the training classes of {list(cfg.DATASETS.TRAIN)} cannot be "
            f"read ({e}); labels show class ids"
        )
        return None


def model_metadata(cfg) -> Metadata:
    """
    The metadata naming the classes of a YAML config's model (``thing_classes``; with one dataset's
    classes also its ``thing_dataset_id_to_contiguous_id`` and colours).

    - one class list: DATASETS.TEST[0]'s metadata, else DATASETS.TRAIN[0]'s;
    - CLASS_AGNOSTIC_TRAIN: ``thing_classes = ["object"]``;
    - CLASS_UNION: the union of the training sets' classes, which no dataset's id mapping fits (the
      results name classes by their index in the union: ``category_id`` = that index).
    """
    mask_names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    if cfg.MULTIMASK.CLASS_AGNOSTIC_TRAIN or cfg.MULTIMASK.CLASS_UNION:
        train = model_train_classes(cfg)
        meta = Metadata(name="multimask_model_classes", mask_names=mask_names)
        if train is not None and train.classes is not None:
            meta.set(thing_classes=list(train.classes))
        return meta
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    return dataset_metadata_with_classes(names[0]) if names else Metadata(name="__unused", mask_names=mask_names)


def model_class_ids(cfg, dataset_name: str) -> Dict[int, int]:
    """
    `dataset_name`'s contiguous class id -> the model's class id: the identity for a model of one
    class list, every id -> 0 for a class-agnostic one, and by name into the union (a class the
    union lacks is left out, so that boxes of it are a clear error where they are given).
    """
    classes: List[str] = list(dataset_metadata_with_classes(dataset_name).get("thing_classes", None) or [])
    train = model_train_classes(cfg)
    if train is None or train.mode == "same":
        return {i: i for i in range(len(classes))}
    if train.mode == "agnostic":
        return {i: 0 for i in range(len(classes))}
    return {i: train.classes.index(c) for i, c in enumerate(classes) if c in train.classes}
