"""
Occlusion protocols: the occluded subsets that ``MultiMaskCOCOEvaluator`` reports AP on.

An instance's occlusion rate is the dataset's ``occlude_rate`` when the annotation has one (COCOA,
COCOA-cls, D2SA), else ``1 - area(visible) / area(whole)`` from two of its masks, named by
``MULTIMASK.OCCLUSION_MASKS`` (default ``["amodal", "visible"]``). It is unknown when the whole mask
is missing or empty or the visible one is missing; an unknown rate keeps the instance out of every
subset.

A subset keeps every instance as COCOeval input but flags those outside it as ignored (see
``cocoeval_backend.SubsetCOCOeval``): a detection matched to one of them is neither a true nor a
false positive, and they are never counted as missed. Detections that match nothing stay false
positives.

Subsets, as result keys of mask ``<name>``:

* ``segm_<name>_occluded``: rate >= ``MULTIMASK.OCCLUDED_THRESHOLD`` (multimask's own, default 0.1);
* ``segm_<name>_occ<t>`` for each t of ``MULTIMASK.OCCLUSION_THRESHOLDS``: rate > t, as the
  literature states its protocols (objects "occluded more than t"): 0.15, 0.25 and 0.4 in
  VRSP / AISFormer / MAS-Net's tables, 0.05 in UOAIS's. ``t`` is written with ``format(t, "g")``:
  ``segm_amodal_occ0.15``.
"""

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = ["OcclusionSubset", "check_occlusion_masks", "occlusion_rate", "occlusion_subsets"]

@dataclass(frozen=True)
class OcclusionSubset:
    """
    The instances whose occlusion rate passes a threshold.

    Attributes:
        suffix: appended to ``segm_<name>`` to make the result key.
        threshold: the occlusion rate it compares with.
        strict: True: rate > threshold; False: rate >= threshold.
    """

    suffix: str
    threshold: float
    strict: bool

    def contains(self, rate: Optional[float]) -> bool:
        """Whether an instance of occlusion `rate` (None: unknown) is in the subset."""
        if rate is None:
            return False
        return rate > self.threshold if self.strict else rate >= self.threshold

    def describe(self) -> str:
        return f"occluded {'>' if self.strict else '>='} {self.threshold:g}"


def occlusion_subsets(
    occluded_threshold: Optional[float], thresholds: Sequence[float] = ()
) -> List[OcclusionSubset]:
    """
    The subsets of one evaluation, in result-key order.

    Args:
        occluded_threshold: of ``_occluded`` (rate >=); None: no ``_occluded`` subset.
        thresholds: one ``_occ<t>`` subset (rate > t) each, in [0, 1), no repeats.

    Returns:
        list[OcclusionSubset]: ``_occluded`` first, then the thresholds in ascending order.
    """
    subsets = []
    if occluded_threshold is not None:
        if not 0.0 <= float(occluded_threshold) <= 1.0:
            raise ValueError(f"occluded_threshold must be in [0, 1], got {occluded_threshold}")
        subsets.append(OcclusionSubset("_occluded", float(occluded_threshold), strict=False))
    values = [float(t) for t in thresholds]
    bad = [t for t in values if not 0.0 <= t < 1.0 or math.isnan(t)]
    if bad:
        raise ValueError(f"occlusion thresholds must be in [0, 1) (rate > t), got {bad}")
    if len({format(t, "g") for t in values}) != len(values):
        raise ValueError(f"occlusion thresholds repeat: {list(thresholds)}")
    subsets += [OcclusionSubset(f"_occ{t:g}", t, strict=True) for t in sorted(values)]
    return subsets


def check_occlusion_masks(names: Sequence[str]) -> Tuple[str, str]:
    """(whole, visible) from a 2-name list, e.g. ``["amodal", "visible"]``; ValueError otherwise."""
    names = tuple(names)
    if len(names) != 2 or names[0] == names[1] or not all(isinstance(n, str) for n in names):
        raise ValueError(
            "the occlusion masks must be two different mask names [whole, visible], e.g. "
            f"['amodal', 'visible']; got {list(names)}"
        )
    return names


def occlusion_rate(
    annotation: Mapping[str, Any],
    areas: Mapping[str, float],
    occlusion_masks: Sequence[str],
    where: str,
) -> Optional[float]:
    """
    The occlusion rate of one ground-truth instance.

    Args:
        annotation: its dataset-dict annotation; ``occlude_rate`` is used when present.
        areas: mask name -> pixel area of its annotated masks (a name that is not annotated is
            absent).
        occlusion_masks: (whole, visible) mask names.
        where: names the annotation in errors.

    Returns:
        the rate in [0, 1], or None when unknown.
    """
    rate = annotation.get("occlude_rate")
    if rate is not None:
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"{where}: occlude_rate {rate} is not in [0, 1]")
        return float(rate)
    whole, visible = occlusion_masks
    if areas.get(whole, 0.0) <= 0 or visible not in areas:
        return None
    # (whole - visible) / whole, not 1 - visible / whole: 20 hidden pixels of 200 give 0.1, not
    # 0.09999999999999998, which a threshold of 0.1 would leave out. A visible mask larger than the
    # whole one is an annotation error: call it unoccluded.
    return max(0.0, (areas[whole] - areas[visible]) / areas[whole])

