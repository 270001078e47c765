"""
Occlusion protocols: which ground truth and which detections the occluded-subset keys of
``MultiMaskCOCOEvaluator`` count, as the papers' evaluators decide it.

**Visible fraction.** Every rule below compares one number per ground-truth instance, its visible
fraction ``f``, as the forked pycocotools of VRSP / AISFormer / MAS-Net computes it in
``COCO.createIndex`` (and stores where COCOeval reads an instance's area): ``1 - occlude_rate``
when the annotation has an ``occlude_rate`` (COCOA, COCOA-cls, D2SA), else ``area(visible) /
area`` with the annotation's ``area`` (the forks read the file's) or, when the dataset dict has
none, the pixel area of the whole mask. ``whole`` and ``visible`` are the first two names of
``MULTIMASK.OCCLUSION_MASKS``. ``f`` is unknown (None) when neither gives it (no ``occlude_rate``,
whole mask missing or empty, visible mask missing): such an instance is in no subset.

"Occluded >= t" is ``f <= 1 - t``, with ``1 - t`` the decimal a table writes (``visible_bound``:
0.85 for 0.15, as the forks' literal ``areaRng`` bounds); "occluded > t" is ``f < 1 - t``.

**Detections.** VRSP's evaluator stores, as each detection's "area", its predicted visible
fraction ``sum(amodal * visible) / sum(amodal)`` in float32 (torch ``.float()``); COCOeval then
ignores a detection that matches nothing when that number is outside the evaluated range, so a
false positive only counts in the subsets its own prediction falls into. An empty predicted whole
mask gives 0 / 0 = NaN, which no range comparison excludes: a false positive everywhere.
UOAIS keeps, for its occluded-region task, the detections whose float32
``sum(visible) / sum(amodal)`` is ``< 0.95``.

The keys (see ``MultiMaskCOCOEvaluator``): ``_occ<t>`` (the forks' rule), ``_occ<t>_strict`` (the
same ground truth, every unmatched detection a false positive), ``_occluded`` (the strict rule at
``MULTIMASK.OCCLUDED_THRESHOLD``) and ``segm_<occluded>_uoais`` (UOAIS's ``occlusion_segm``).
"""

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "UOAIS_OCCLUDED_THRESHOLD",
    "UOAIS_PREDICTED_VISIBLE",
    "OcclusionSubset",
    "check_occluded_threshold",
    "check_occlusion_masks",
    "check_occlusion_thresholds",
    "predicted_occluded",
    "predicted_visible_fraction",
    "visible_bound",
    "visible_fraction",
    "whole_area",
]

# UOAIS (adet/evaluation/amodalvisible_evaluation.py): ground truth "occluded_rate > 0.05", and
# detections whose predicted visible / amodal ratio is < 0.95
UOAIS_OCCLUDED_THRESHOLD = 0.05
UOAIS_PREDICTED_VISIBLE = 0.95


def visible_bound(threshold: float) -> float:
    """``1 - threshold`` as a decimal: 0.85 for 0.15 (in binary, 1 - 0.7 is 0.30000000000000004)."""
    return float(Decimal(1) - Decimal(repr(float(threshold))))


@dataclass(frozen=True)
class OcclusionSubset:
    """
    The instances occluded at least (or, `strict`, more than) `threshold`.

    Attributes:
        threshold: an occlusion rate in [0, 1].
        strict: False: occluded >= threshold (VRSP / AISFormer / MAS-Net); True: > threshold
            (UOAIS).
    """

    threshold: float
    strict: bool = False

    @property
    def bound(self) -> float:
        """The largest (strict: the supremum of the) visible fractions in the subset."""
        return visible_bound(self.threshold)

    def contains(self, fraction: Optional[float]) -> bool:
        """Whether an instance of visible fraction `fraction` (None: unknown) is in the subset."""
        if fraction is None:
            return False
        return fraction < self.bound if self.strict else fraction <= self.bound

    def describe(self) -> str:
        return f"occluded {'>' if self.strict else '>='} {self.threshold:g}"


def check_occluded_threshold(threshold: Optional[float]) -> Optional[float]:
    """``MULTIMASK.OCCLUDED_THRESHOLD`` as a float in [0, 1]; None stays None (no subset)."""
    if threshold is None:
        return None
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"occluded_threshold must be in [0, 1], got {threshold}")
    return t


def check_occlusion_thresholds(thresholds: Sequence[float]) -> List[float]:
    """``MULTIMASK.OCCLUSION_THRESHOLDS``, sorted; ValueError outside [0, 1] or on repeats."""
    values = [float(t) for t in thresholds]
    bad = [t for t in values if math.isnan(t) or not 0.0 <= t <= 1.0]
    if bad:
        raise ValueError(f"occlusion thresholds must be in [0, 1] (occluded >= t), got {bad}")
    if len({format(t, "g") for t in values}) != len(values):
        raise ValueError(f"occlusion thresholds repeat: {list(thresholds)}")
    return sorted(values)


def check_occlusion_masks(names: Sequence[str]) -> Tuple[str, str, Optional[str]]:
    """
    ``(whole, visible, occluded)`` from ``[whole, visible]`` (occluded: None) or
    ``[whole, visible, occluded]``, e.g. ``["amodal", "visible", "occluded"]``; else ValueError.
    """
    names = tuple(names)
    if (
        len(names) not in (2, 3)
        or len(set(names)) != len(names)
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise ValueError(
            "the occlusion masks must be two or three different mask names [whole, visible] or "
            f"[whole, visible, occluded], e.g. ['amodal', 'visible']; got {list(names)}"
        )
    return names[0], names[1], names[2] if len(names) == 3 else None


def whole_area(annotation: Mapping[str, Any], areas: Mapping[str, float], whole: str) -> float:
    """The annotation's ``area`` if it has one, else its `whole` mask's pixel area (0: none)."""
    area = annotation.get("area")
    if area is not None:
        return float(area)
    return float(areas.get(whole, 0.0))


def visible_fraction(
    annotation: Mapping[str, Any],
    areas: Mapping[str, float],
    occlusion_masks: Sequence[str],
    where: str,
) -> Optional[float]:
    """
    The visible fraction of one ground-truth instance (see the module docstring).

    Args:
        annotation: its dataset-dict annotation; ``occlude_rate`` and ``area`` are read.
        areas: mask name -> pixel area of its annotated masks (a name that is not annotated is
            absent).
        occlusion_masks: (whole, visible, ...) mask names.
        where: names the annotation in errors.

    Returns:
        f, or None when unknown. It can exceed 1 when the visible mask is larger than the whole
        one (an annotation error): such an instance is in no subset.
    """
    rate = annotation.get("occlude_rate")
    if rate is not None:
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"{where}: occlude_rate {rate} is not in [0, 1]")
        return 1.0 - float(rate)
    whole, visible = occlusion_masks[0], occlusion_masks[1]
    area = whole_area(annotation, areas, whole)
    if whole not in areas or visible not in areas or area <= 0:
        return None
    return areas[visible] / area


def predicted_visible_fraction(intersection: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """
    VRSP's "area" of detections: ``sum(whole & visible) / sum(whole)`` in float32, as a float64
    array (NaN where the whole mask is empty).

    Args:
        intersection, whole: pixel counts, arrays of shape (N,).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(intersection, np.float32) / np.asarray(whole, np.float32)
    return ratio.astype(np.float64)


def predicted_occluded(visible: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """
    UOAIS's occluded detections: float32 ``sum(visible) / sum(whole) < 0.95`` (False where the
    whole mask is empty: x / 0 is inf or NaN).

    Args:
        visible, whole: pixel counts, arrays of shape (N,).

    Returns:
        bool array of shape (N,).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(visible, np.float32) / np.asarray(whole, np.float32)
    return ratio < np.float32(UOAIS_PREDICTED_VISIBLE)
