"""
Several training datasets in one run: their classes (the same list, one class-agnostic ``object``
class, or the union of their lists by name), the mask names each one lacks (not annotated for its
objects), their dataset dicts remapped to the training classes, and per-dataset sampling weights
through detectron2's ``RepeatFactorTrainingSampler``.

The YAML keys are ``MULTIMASK.CLASS_AGNOSTIC_TRAIN``, ``MULTIMASK.CLASS_UNION`` and
``MULTIMASK.DATASET_WEIGHTS`` (``MultiMaskTrainer``); a LazyConfig gives the same options to
``multi_dataset_dicts`` as ``dataloader.train.dataset`` (``multimask.engine.lazy_train``).
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances

from .detection_utils import check_mask_names, check_same_classes

__all__ = [
    "AGNOSTIC_CLASS",
    "MultiDatasetDicts",
    "RemappedClassesEvaluator",
    "TrainClasses",
    "cfg_train_classes",
    "check_train_mask_names",
    "dataset_weights_sampler",
    "multi_dataset_dicts",
    "remap_dataset_dicts",
    "remap_given_classes",
    "resolve_train_classes",
]

logger = logging.getLogger(__name__)

# the one class of a class-agnostic model (MULTIMASK.CLASS_AGNOSTIC_TRAIN)
AGNOSTIC_CLASS = "object"

# the option names quoted in messages: YAML keys (LazyConfig: multi_dataset_dicts' arguments)
YAML_KEYS = {"agnostic": "MULTIMASK.CLASS_AGNOSTIC_TRAIN", "union": "MULTIMASK.CLASS_UNION"}
LAZY_KEYS = {
    "agnostic": "dataloader.train.dataset.class_agnostic",
    "union": "dataloader.train.dataset.class_union",
}


@dataclass
class TrainClasses:
    """
    The classes a model trains on and how each dataset's contiguous class ids map to them.

    Attributes:
        mode: "same" (every dataset has one list), "agnostic" (one ``object`` class) or "union".
        classes: the training class names; None when no dataset's classes are known yet.
        id_maps: dataset name -> {the dataset's contiguous id: training id}, for the datasets
            whose ids change (train and test sets); a dataset absent here keeps its ids.
    """

    mode: str
    classes: Optional[List[str]]
    id_maps: Dict[str, Dict[int, int]] = field(default_factory=dict)


class _AllToZero(dict):
    """The class-agnostic id map: every id (listed or not) is class 0."""

    def __missing__(self, key: int) -> int:
        return 0


def _classes(name: str) -> Optional[List[str]]:
    """`name`'s ``thing_classes``, loading the dataset when its metadata does not have them yet."""
    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes") is None:
        DatasetCatalog.get(name)  # COCO-style JSON and LabelMe folders set them when loaded
    classes = meta.get("thing_classes")
    return None if classes is None else list(classes)


def resolve_train_classes(
    train_names: Sequence[str],
    test_names: Sequence[str] = (),
    *,
    class_agnostic: bool = False,
    class_union: bool = False,
    keys: Dict[str, str] = YAML_KEYS,
) -> TrainClasses:
    """
    The training classes of `train_names`, checked against `test_names`.

    Args:
        train_names: the training datasets (DATASETS.TRAIN).
        test_names: the test datasets (DATASETS.TEST).
        class_agnostic: every category of every dataset becomes the one class ``object``.
        class_union: the classes are the union of the training lists by name (in order of first
            appearance: the first dataset's list, then each later dataset's new names); every
            dataset's ids are remapped to it. Each test set's classes must be in it.
        keys: the option names quoted in error messages.

    Returns:
        A TrainClasses.

    Raises:
        ValueError: both options set; without either, datasets whose classes differ (naming
            both and both options); with the union, a dataset without ``thing_classes`` or a test
            set with a class that no training set has.
    """
    if class_agnostic and class_union:
        raise ValueError(f"{keys['agnostic']} and {keys['union']} are exclusive: set one of them.")
    if class_agnostic:
        id_maps = {}
        for name in list(train_names) + list(test_names):
            id_maps[name] = _AllToZero({i: 0 for i in range(len(_classes(name) or ()))})
        return TrainClasses("agnostic", [AGNOSTIC_CLASS], id_maps)
    if not class_union:
        try:
            check_same_classes(list(train_names) + list(test_names))
        except ValueError as e:
            raise ValueError(
                f"{e} To train on datasets whose classes differ, set {keys['agnostic']} True "
                f"(one '{AGNOSTIC_CLASS}' class) or {keys['union']} True (the union of the "
                "training sets' classes, matched by name)."
            ) from e
        known = [c for c in (MetadataCatalog.get(n).get("thing_classes") for n in train_names) if c]
        return TrainClasses("same", list(known[0]) if known else None)
    union: List[str] = []
    lists = {}
    for name in train_names:
        lists[name] = _classes(name)
        if lists[name] is None:
            raise ValueError(
                f"{keys['union']}: training dataset '{name}' has no thing_classes in its metadata "
                "(even once loaded), so its classes cannot be matched by name."
            )
        union += [c for c in lists[name] if c not in union]
    for name in test_names:
        classes = _classes(name)
        if classes is None:
            continue
        missing = [c for c in classes if c not in union]
        if missing:
            raise ValueError(
                f"{keys['union']}: test dataset '{name}' has classes {missing} that no training "
                f"dataset {list(train_names)} has; the training classes are {union}."
            )
        lists[name] = classes
    id_maps = {
        name: {i: union.index(c) for i, c in enumerate(classes)}
        for name, classes in lists.items()
        if classes != union[: len(classes)]
    }
    logger.info(f"{keys['union']}: {len(union)} training classes {union}")
    return TrainClasses("union", union, id_maps)


def cfg_train_classes(cfg) -> TrainClasses:
    """``resolve_train_classes`` of a YAML config: DATASETS.TRAIN / TEST and the MULTIMASK keys."""
    return resolve_train_classes(
        list(cfg.DATASETS.TRAIN),
        list(cfg.DATASETS.TEST),
        class_agnostic=cfg.MULTIMASK.CLASS_AGNOSTIC_TRAIN,
        class_union=cfg.MULTIMASK.CLASS_UNION,
    )


def check_train_mask_names(
    train_names: Sequence[str], test_names: Sequence[str], mask_names: Sequence[str]
) -> Dict[str, List[str]]:
    """
    Check the mask names of a run's datasets: each name must be provided by at least one training
    dataset (a training dataset that lacks it has it "not annotated" for its objects, which the
    loss ignores), and by every test dataset.

    Args:
        train_names: the training datasets.
        test_names: the test datasets.
        mask_names: MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES.

    Returns:
        training dataset name -> the mask names it lacks (only datasets that lack some).

    Raises:
        KeyError: a dataset is not registered.
        ValueError: a name that no training dataset provides (naming what each provides), or that
            a test dataset does not provide.
    """
    if len(train_names) <= 1:
        check_mask_names(list(train_names) + list(test_names), mask_names)
        return {}
    check_mask_names(list(train_names) + list(test_names), [])  # registered, multi-mask
    provided = {n: list(MetadataCatalog.get(n).mask_names) for n in train_names}
    nowhere = [m for m in mask_names if not any(m in p for p in provided.values())]
    if nowhere:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES asks for {nowhere}, which no training dataset "
            f"provides: " + ", ".join(f"'{n}' provides {p}" for n, p in provided.items()) + "."
        )
    check_mask_names(test_names, mask_names)
    lacking = {n: [m for m in mask_names if m not in p] for n, p in provided.items()}
    lacking = {n: m for n, m in lacking.items() if m}
    for name, missing in lacking.items():
        logger.info(f"Dataset '{name}' has no {missing} masks: not annotated for its objects")
    return lacking


class MultiDatasetDicts(list):
    """
    The dataset dicts of several training datasets, concatenated in order, with where each
    dataset's part lies (``sizes``), the training classes and the sampling weights.
    """

    dataset_names: List[str]
    sizes: List[int]
    classes: Optional[List[str]]
    weights: List[float]


def _remapped(dicts: List[Dict[str, Any]], id_map, lacking: Sequence[str]) -> List[Dict[str, Any]]:
    """Copies of `dicts` (the catalog's are shared) with training class ids and None masks."""
    if not id_map and not lacking:
        return dicts
    out = []
    for d in dicts:
        annos = []
        for a in d.get("annotations", []):
            a = dict(a)
            if id_map:
                a["category_id"] = id_map[a["category_id"]]
            if lacking:
                a["multimask"] = {**a.get("multimask", {}), **{m: None for m in lacking}}
            annos.append(a)
        out.append({**d, "annotations": annos})
    return out


def remap_dataset_dicts(
    dicts: List[Dict[str, Any]], id_map: Optional[Dict[int, int]]
) -> List[Dict[str, Any]]:
    """`dicts` with their class ids mapped by `id_map` (copies; `dicts` itself when it is None)."""
    return _remapped(dicts, id_map, ())


def multi_dataset_dicts(
    names: Sequence[str],
    *,
    mask_names: Sequence[str],
    test_names: Sequence[str] = (),
    class_agnostic: bool = False,
    class_union: bool = False,
    weights: Sequence[float] = (),
    filter_empty: bool = True,
    keys: Dict[str, str] = LAZY_KEYS,
) -> MultiDatasetDicts:
    """
    detectron2's ``get_detection_dataset_dicts(names)`` for datasets whose classes or mask names
    may differ: each dataset's class ids are mapped to the training classes
    (``resolve_train_classes``) and the mask names it lacks are None (not annotated).

    Args:
        names: the training datasets.
        mask_names: the model's mask names, every one provided by at least one dataset.
        test_names: the test datasets, whose classes are checked against the training classes.
        class_agnostic, class_union: see ``resolve_train_classes``.
        weights: [] (each dataset sampled in proportion to its size) or one weight > 0 per
            dataset: the share of sampled images it gets is its weight over their sum
            (``dataset_weights_sampler``, which the train loaders build from this).
        filter_empty: drop images without non-crowd annotations, per dataset.
        keys: the option names quoted in error messages.

    Returns:
        A MultiDatasetDicts.
    """
    names = [names] if isinstance(names, str) else list(names)
    lacking = check_train_mask_names(names, list(test_names), mask_names)
    classes = resolve_train_classes(
        names, list(test_names), class_agnostic=class_agnostic, class_union=class_union, keys=keys
    )
    check_weights(weights, names)
    out = MultiDatasetDicts()
    out.dataset_names, out.sizes, out.classes = names, [], classes.classes
    out.weights = [float(w) for w in weights]
    for name in names:
        dicts = get_detection_dataset_dicts([name], filter_empty=filter_empty)
        dicts = _remapped(dicts, classes.id_maps.get(name), lacking.get(name, ()))
        out.extend(dicts)
        out.sizes.append(len(dicts))
    logger.info(
        "Training on " + ", ".join(f"'{n}' ({s} images)" for n, s in zip(names, out.sizes))
    )
    return out


def check_weights(weights: Sequence[float], names: Sequence[str]) -> None:
    """Raise ValueError unless `weights` is [] or one finite weight > 0 per dataset of `names`."""
    if len(weights) == 0:
        return
    if len(weights) != len(names):
        raise ValueError(
            f"MULTIMASK.DATASET_WEIGHTS has {len(weights)} weights {list(weights)} for "
            f"{len(names)} training datasets {list(names)}: give one per dataset, or []."
        )
    bad = [(n, w) for n, w in zip(names, weights) if not (math.isfinite(float(w)) and w > 0)]
    if bad:
        raise ValueError(
            f"MULTIMASK.DATASET_WEIGHTS: weights must be finite and > 0, got {bad} (remove a "
            "dataset from DATASETS.TRAIN rather than giving it weight 0)."
        )


def dataset_weights_sampler(
    sizes: Sequence[int], weights: Sequence[float], seed: Optional[int] = None
) -> RepeatFactorTrainingSampler:
    """
    detectron2's ``RepeatFactorTrainingSampler`` over concatenated datasets of `sizes` images,
    such that dataset i gets the share ``weights[i] / sum(weights)`` of the sampled images.

    Every image of dataset i gets the repeat factor ``share_i * N / sizes[i]`` (N = all images),
    so an "epoch" keeps about N images: a small dataset's images repeat (factor > 1) and a large
    one's are subsampled (factor < 1; the sampler's stochastic rounding keeps each image with
    that probability per epoch).

    Args:
        sizes: images per dataset, in the order of the concatenation.
        weights: one weight > 0 per dataset.
        seed: the shuffle seed (the same on every process); None = a shared random seed.
    """
    if len(sizes) != len(weights) or any(s <= 0 for s in sizes):
        raise ValueError(f"dataset_weights_sampler: sizes {list(sizes)}, weights {list(weights)}")
    total, weight_sum = sum(sizes), float(sum(weights))
    factors = torch.cat(
        [torch.full((s,), w / weight_sum * total / s) for s, w in zip(sizes, weights)]
    )
    logger.info(
        "Dataset sampling shares "
        + ", ".join(f"{w / weight_sum:.3f} (repeat factor {w / weight_sum * total / s:.3f})"
                    for s, w in zip(sizes, weights))
    )  # fmt: skip
    return RepeatFactorTrainingSampler(factors, seed=seed)


def _remap_instances(instances: Instances, lut: torch.Tensor, field_name: str) -> Instances:
    """`instances` whose `field_name` classes are mapped by `lut`; those mapped to -1 dropped."""
    mapped = lut.to(instances.get(field_name).device)[instances.get(field_name).long()]
    keep = mapped >= 0
    out = instances[keep]
    out.set(field_name, mapped[keep])
    return out


def _lookup(id_map: Dict[int, int], size: int) -> torch.Tensor:
    lut = torch.full((max(size, max(id_map, default=-1) + 1),), -1, dtype=torch.long)
    for src, dst in id_map.items():
        lut[src] = dst
    return lut


def remap_given_classes(dicts: List[Dict[str, Any]], id_map: Dict[int, int], key: str):
    """
    The test dicts whose given boxes (`key`, ``given_instances``) have training class ids: their
    ``pred_classes`` are the test set's contiguous ids, mapped by `id_map` (test -> training).
    """
    if not id_map:
        return dicts
    lut = _lookup(id_map, 0)
    return [
        {**d, key: _remap_instances(d[key], lut, "pred_classes")} if key in d else d for d in dicts
    ]


class RemappedClassesEvaluator(DatasetEvaluator):
    """
    An evaluator of a test set whose classes are a subset of the training classes (``CLASS_UNION``):
    each prediction's class is mapped from the training list to the test set's ids before the
    wrapped evaluator sees it, and predictions of classes the test set does not list are dropped
    (COCO evaluation scores only the ground truth's categories, so they would count nowhere).
    """

    def __init__(self, evaluator: DatasetEvaluator, train_classes: Sequence[str], test_name: str):
        """
        Args:
            evaluator: the test set's evaluator (MultiMaskCOCOEvaluator).
            train_classes: the training class names, in the model's order.
            test_name: the test dataset, whose ``thing_classes`` are a subset of them.
        """
        self.evaluator = evaluator
        test_classes = list(MetadataCatalog.get(test_name).thing_classes)
        id_map = {
            i: test_classes.index(c) for i, c in enumerate(train_classes) if c in test_classes
        }
        self._lut = _lookup(id_map, len(train_classes))

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        outputs = [
            {**o, "instances": _remap_instances(o["instances"], self._lut, "pred_classes")}
            if "instances" in o
            else o
            for o in outputs
        ]
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        return self.evaluator.evaluate()
