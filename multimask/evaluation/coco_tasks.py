"""
The COCOeval runs of ``MultiMaskCOCOEvaluator``: box AP, mask AP of one mask name with its
occluded subsets (further runs of one COCOeval's matching), and UOAIS's ``occlusion_segm`` task.
"""

import contextlib
import gc
import io
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.utils.logger import create_small_table

from .coco_metrics import (
    METRICS,
    SUBSET_METRICS,
    per_category_ap,
    per_category_table,
    range_metrics,
    summary_metrics,
)
from .cocoeval_backend import PROTOCOL_IGNORE
from .ground_truth import VISIBLE_FRACTION, coco_ground_truth, uoais_ground_truth
from .occlusion import UOAIS_OCCLUDED_THRESHOLD, OcclusionSubset

__all__ = ["COCO_AREA_RANGES", "COCOTasks", "gc_paused"]

logger = logging.getLogger(__name__)

# pycocotools' area ranges (Params.setDetParams), by label
COCO_AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


@contextlib.contextmanager
def gc_paused():
    """
    No cyclic garbage collection inside: an evaluation allocates about ten objects per detection
    and mask, which makes the collector rescan the whole heap (the predictions included) again
    and again, 20-30 % of the time at KINS size; it creates no reference cycles to collect.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class COCOTasks:
    """
    The COCOeval tasks of one evaluation, on the ground truth of ``build_ground_truth``: what
    ``MultiMaskCOCOEvaluator`` runs per key once it has the detections as COCO records.
    """

    def __init__(
        self,
        backend: Any,
        gt: Mapping[str, Any],
        max_dets: Sequence[int],
        occluded: OcclusionSubset,
        subsets: Sequence[OcclusionSubset],
        occlusion_masks: Tuple[str, ...],
        predicts_occlusion: bool,
        uoais_mask: Optional[str],
    ):
        """
        Args:
            backend: the COCOeval implementation (``coco_eval_backend``).
            gt: ``build_ground_truth``'s result.
            max_dets: COCOeval's three maxDets.
            occluded: the ``_occluded`` subset.
            subsets: one ``_occ<t>`` subset per occlusion threshold.
            occlusion_masks: (whole, visible, ...) mask names.
            predicts_occlusion: whether the model predicts both whole and visible.
            uoais_mask: the mask name that gets the ``_uoais`` key, or None.
        """
        self.backend = backend
        self.gt = gt
        self.max_dets = list(max_dets)
        self.occluded = occluded
        self.subsets = list(subsets)
        self.occlusion_masks = tuple(occlusion_masks)
        self.predicts_occlusion = predicts_occlusion
        self.uoais_mask = uoais_mask

    def mask_keys(self, name: str) -> Dict[str, Tuple[str, ...]]:
        """The keys of mask `name`, in order, and the metrics of each (without ``AP-<class>``)."""
        keys = {f"segm_{name}": METRICS, f"segm_{name}_occluded": METRICS}
        for rule in ("", "_strict"):
            keys.update(
                {f"segm_{name}_occ{s.threshold:g}{rule}": SUBSET_METRICS for s in self.subsets}
            )
        if name == self.uoais_mask:
            keys[f"segm_{name}_uoais"] = METRICS
        return keys

    def coco_eval(self, coco_gt: Any, dts: List[Dict[str, Any]], iou_type: str, img_ids) -> Any:
        """A rerunnable COCOeval of `dts` on `coco_gt`, restricted to `img_ids`."""
        coco_dt = self.backend.load_results(coco_gt, dts)
        coco_eval = self.backend.cocoeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.imgIds = list(img_ids)
        coco_eval.params.maxDets = list(self.max_dets)
        return coco_eval

    @staticmethod
    def _run(
        coco_eval: Any,
        ranges: Mapping[str, Tuple[float, float]],
        gt: Mapping[int, Tuple[float, bool]],
        dt_area: Mapping[int, float],
    ):
        """
        One matching of `coco_eval` with these area ranges, ground-truth (area, ignored) and
        detection areas, by annotation id; the IoUs of its first run are reused.
        """
        for ann_id, ann in coco_eval.cocoGt.anns.items():
            ann["area"], ann[PROTOCOL_IGNORE] = gt[ann_id]
        for ann_id, ann in coco_eval.cocoDt.anns.items():
            ann["area"] = dt_area[ann_id]
        coco_eval.params.areaRng = [list(r) for r in ranges.values()]
        coco_eval.params.areaRngLbl = list(ranges)
        with contextlib.redirect_stdout(io.StringIO()):  # the backends print their progress
            coco_eval.evaluate()
            coco_eval.accumulate()

    def _metrics(self, key: str, coco_eval: Any, label: str, count: int) -> Dict[str, float]:
        """The metrics of `key`, read on area range `label` (all of them on "all"), and logged."""
        if label == "all":
            results = summary_metrics(coco_eval)
        else:
            results = range_metrics(coco_eval, label)
        logger.info(
            f"COCOeval ({self.backend.name}) of {key}: {count} instances, at most "
            f"{self.max_dets[-1]} detections per image:\n" + create_small_table(results)
        )
        names = {c["id"]: c["name"] for c in self.gt["categories"]}
        per_category = per_category_ap(coco_eval, names, label)
        if len(per_category) > 1:
            logger.info(f"Per-category {key} AP:\n" + per_category_table(per_category))
        results.update({f"AP-{n}": ap for n, ap in per_category})
        return results

    @staticmethod
    def _evaluable(coco_gt: Any, img_ids, subset: Optional[OcclusionSubset] = None) -> int:
        """Instances of `coco_gt` that can be missed in `img_ids` (in `subset`, if given)."""
        ids = set(img_ids)
        return sum(
            a["image_id"] in ids
            and not a["iscrowd"]
            and (subset is None or subset.contains(a[VISIBLE_FRACTION]))
            for a in coco_gt.anns.values()
        )

    def evaluate_boxes(self, img_ids: List[int], dts: List[Dict[str, Any]]) -> Dict[str, float]:
        coco_gt = self.backend.coco(coco_ground_truth(self.gt, "bbox"))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.warning("bbox: no annotated ground truth in the evaluated images; NaN.")
            return {m: float("nan") for m in METRICS}
        coco_eval = self.coco_eval(coco_gt, dts, "bbox", img_ids)
        gt = {i: (a["area"], False) for i, a in coco_gt.anns.items()}
        dt_area = {i: a["area"] for i, a in coco_eval.cocoDt.anns.items()}
        self._run(coco_eval, COCO_AREA_RANGES, gt, dt_area)
        return self._metrics("bbox", coco_eval, "all", count)

    def evaluate_mask(
        self, name: str, img_ids: List[int], dts: List[Dict[str, Any]]
    ) -> Dict[str, Dict[str, float]]:
        """
        Every key of mask `name` but ``_uoais``: one COCOeval, run on all instances (pixel areas,
        COCO's area ranges), on ``_occluded`` (the others flagged ignored), then once with the
        visible fraction as the area and one range per threshold: detections at area 0 (every
        one counts: ``_strict``), then at their predicted visible fraction (``_occ<t>``).
        """
        keys = self.mask_keys(name)
        keys.pop(f"segm_{name}_uoais", None)
        coco_gt = self.backend.coco(coco_ground_truth(self.gt, "segm", name))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.warning(f"segm_{name}: no annotated ground truth in the evaluated images; NaN.")
            return {key: {m: float("nan") for m in metrics} for key, metrics in keys.items()}
        coco_eval = self.coco_eval(coco_gt, dts, "segm", img_ids)
        gts, dets = coco_gt.anns, coco_eval.cocoDt.anns
        pixels = {i: (a["area"], False) for i, a in gts.items()}
        dt_pixels = {i: a["area"] for i, a in dets.items()}
        results = {}
        self._run(coco_eval, COCO_AREA_RANGES, pixels, dt_pixels)
        results[f"segm_{name}"] = self._metrics(f"segm_{name}", coco_eval, "all", count)

        subsets = {"_occluded": self.occluded}
        subsets.update({f"_occ{s.threshold:g}": s for s in self.subsets})
        counts = {k: self._evaluable(coco_gt, img_ids, s) for k, s in subsets.items()}
        for suffix, subset in subsets.items():
            if counts[suffix] == 0:
                logger.info(f"segm_{name}{suffix}: no instance {subset.describe()}; NaN.")

        occluded = {
            i: (pixels[i][0], not self.occluded.contains(a[VISIBLE_FRACTION]))
            for i, a in gts.items()
        }
        self._run(coco_eval, COCO_AREA_RANGES, occluded, dt_pixels)
        key = f"segm_{name}_occluded"
        results[key] = self._metrics(key, coco_eval, "all", counts["_occluded"])
        if not self.subsets:
            return results

        # the forks' trick: the visible fraction is the area, each subset an area range
        # [0, 1 - t]; an unknown fraction is out of every range
        ranges = {f"_occ{s.threshold:g}": (0.0, s.bound) for s in self.subsets}
        fractions = {}
        for i, a in gts.items():
            f = a[VISIBLE_FRACTION]
            fractions[i] = (float("inf") if f is None else f, False)
        for rule, dt_area in (
            ("_strict", {i: 0.0 for i in dets}),
            ("", {i: a[VISIBLE_FRACTION] for i, a in dets.items()}),
        ):
            if rule == "" and not self.predicts_occlusion:
                whole, visible = self.occlusion_masks[:2]
                logger.warning(
                    f"segm_{name}_occ<t>: the model does not predict both '{whole}' and "
                    f"'{visible}' (MULTIMASK.OCCLUSION_MASKS), which give a detection's "
                    "occlusion; NaN."
                )
                for suffix in ranges:
                    results[f"segm_{name}{suffix}"] = {m: float("nan") for m in SUBSET_METRICS}
                continue
            self._run(coco_eval, ranges, fractions, dt_area)
            for suffix in ranges:
                key = f"segm_{name}{suffix}{rule}"
                results[key] = self._metrics(key, coco_eval, suffix, counts[suffix])
        return {key: results[key] for key in keys}

    def evaluate_uoais(self, key: str, name: str, dts: List[Dict[str, Any]]) -> Dict[str, float]:
        """UOAIS's ``occlusion_segm``: see ``uoais_ground_truth``, on the images of `dts`."""
        if not self.predicts_occlusion:
            whole, visible = self.occlusion_masks[:2]
            logger.warning(
                f"{key}: the model does not predict both '{whole}' and '{visible}', which select "
                "the occluded detections; NaN."
            )
            return {m: float("nan") for m in METRICS}
        # UOAIS evaluates only the images with a detection ("eval only forwarded data")
        img_ids = sorted({d["image_id"] for d in dts})
        subset = OcclusionSubset(UOAIS_OCCLUDED_THRESHOLD, strict=True)
        coco_gt = self.backend.coco(uoais_ground_truth(self.gt, name, subset))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.info(
                f"{key}: no instance {subset.describe()} in the {len(img_ids)} images with a "
                "detection predicted occluded; NaN."
            )
            return {m: float("nan") for m in METRICS}
        coco_eval = self.coco_eval(coco_gt, dts, "segm", img_ids)
        gt = {i: (a["area"], False) for i, a in coco_gt.anns.items()}
        dt_area = {i: a["area"] for i, a in coco_eval.cocoDt.anns.items()}
        self._run(coco_eval, COCO_AREA_RANGES, gt, dt_area)
        return self._metrics(key, coco_eval, "all", count)
