"""``MultiMaskCOCOEvaluator``: COCO AP per mask name, and on occluded subsets of the instances."""

import contextlib
import gc
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..config import primary_mask_name
from ..utils.results_json import coco_records, encode_instances, multimask_records
from .coco_metrics import (
    METRICS,
    SUBSET_METRICS,
    per_category_ap,
    per_category_table,
    range_metrics,
    summary_metrics,
)
from .cocoeval_backend import PROTOCOL_IGNORE, coco_eval_backend
from .ground_truth import (
    VISIBLE_FRACTION,
    build_ground_truth,
    coco_ground_truth,
    uoais_ground_truth,
)
from .occlusion import (
    UOAIS_OCCLUDED_THRESHOLD,
    OcclusionSubset,
    check_occluded_threshold,
    check_occlusion_masks,
    check_occlusion_thresholds,
    predicted_occluded,
    predicted_visible_fraction,
)

__all__ = ["MultiMaskCOCOEvaluator"]

logger = logging.getLogger(__name__)

# pycocotools' area ranges (Params.setDetParams), by label
COCO_AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


@contextlib.contextmanager
def _gc_paused():
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


class MultiMaskCOCOEvaluator(DatasetEvaluator):
    """
    COCO box AP, mask AP per mask name, and mask AP per mask name on occluded subsets, by the rules
    of the papers' evaluators.

    Results (an OrderedDict, detectron2's format): ``bbox``, and for every mask name:

    - ``segm_<name>``: COCO AP on every instance (AP, AP50, AP75, APs, APm, APl, ``AP-<class>``).
      For the PRIMARY mask with a COCO ground truth it is detectron2's ``COCOEvaluator`` segm AP
      on the same predictions: every detection counts, an empty predicted mask too (a false
      positive);
    - ``segm_<name>_occluded``: the instances occluded >= ``occluded_threshold`` (multimask's own
      subset; same metrics), every detection that matches nothing a false positive;
    - ``segm_<name>_occ<t>`` for each occlusion threshold t (default 0.15, 0.25, 0.4): the rule of
      the VRSP / AISFormer / MAS-Net evaluator (one forked pycocotools): the instances occluded
      >= t, and a detection that matches nothing counts only when its own predicted visible
      fraction (from the prediction's whole and visible masks) is <= 1 - t. AP, AP50, AP75 and
      ``AP-<class>``: the forks report these subsets where COCO has APs, APm, APl;
    - ``segm_<name>_occ<t>_strict``: the same instances, every unmatched detection a false
      positive (the same metrics as ``_occ<t>``);
    - ``segm_<occluded>_uoais``, for the occluded-region mask only (``occlusion_masks[2]``, by
      default the mask named ``occluded``): UOAIS's ``occlusion_segm`` task: the occluded masks of
      the instances occluded > 0.05 (the others removed), against the detections predicted less
      than 95 % visible, on the images with such a detection. Same metrics as ``segm_<name>``.

    The rules, in detail: :mod:`multimask.evaluation.occlusion`.

    Ground truth is read from the registered dataset dicts (``annotations[i]["multimask"]``), one
    COCO object per mask name, built in memory. For a mask name:

    - an instance whose mask is None (not annotated) becomes a crowd region covering its box:
      detections on it are ignored, and it is never counted as missed;
    - an instance whose mask is annotated but empty (e.g. the ``occluded`` mask of a fully visible
      object) is not an object of that mask: it is left out;
    - in an occluded subset, the instances outside it, and those whose occlusion is unknown, are
      ignored (a detection matched to one is neither a true nor a false positive); they are never
      counted as missed. A key without evaluable ground truth is NaN, with a log line.

    AP counts at most ``max_dets_per_image`` detections per image and class (COCOeval's
    ``maxDets`` are [1, 10, max_dets_per_image]), as in detectron2's ``COCOEvaluator``; below 10
    they are [1, m, m] (pycocotools sorts [1, 10, m], so COCOEvaluator counts 10 there).

    Cost: one COCOeval per mask name computes the IoUs once; the subsets are further runs of its
    matching (``cocoeval_backend._Rerunnable``), on the backend ``coco_eval_backend`` picks:
    detectron2's C++ ``COCOeval_opt`` if ``detectron2._C`` is built, else ``faster-coco-eval``,
    else pycocotools.

    With an ``output_dir`` it writes ``multimask_instances_results.json`` (one record per instance
    and mask name) and ``coco_instances_results.json`` (the PRIMARY masks, as ``COCOEvaluator``
    writes it); see :mod:`multimask.utils.results_json`.

    train_net builds it as ``MultiMaskCOCOEvaluator(dataset_name, cfg=cfg, output_dir=...)``.
    """

    def __init__(
        self,
        dataset_name: str,
        mask_names: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        occluded_threshold: Optional[float] = None,
        tasks: Optional[Sequence[str]] = None,
        *,
        cfg: Optional[CfgNode] = None,
        eval_backend: str = "auto",
        occlusion_thresholds: Optional[Sequence[float]] = None,
        occlusion_masks: Optional[Sequence[str]] = None,
        max_dets_per_image: Optional[int] = None,
        primary_mask: Optional[str] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``thing_classes``.
            mask_names: names of the K channels of ``pred_multimasks``, in order. None: the config's
                ``MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES`` if ``cfg`` is given, else the metadata's
                ``mask_names``.
            distributed: gather predictions from all processes; only the main process evaluates.
            output_dir: where the results files are written; None = nowhere.
            occluded_threshold: minimum occlusion rate of the ``_occluded`` subset. None: the
                config's ``MULTIMASK.OCCLUDED_THRESHOLD`` if ``cfg`` is given, else 0.1.
            tasks: subset of ("bbox", "segm"); None = both. "segm" covers every mask name.
            cfg: a config with multimask's keys, read only for the defaults here.
            eval_backend: the COCOeval implementation: "auto", "detectron2", "faster_coco_eval" or
                "pycocotools" (see ``coco_eval_backend``); the metrics agree within 0.05 AP.
            occlusion_thresholds: one ``_occ<t>`` and one ``_occ<t>_strict`` subset (occluded >= t)
                each, e.g. (0.15, 0.25, 0.4). None: the config's ``MULTIMASK.OCCLUSION_THRESHOLDS``
                if ``cfg`` is given, else none.
            occlusion_masks: ``[whole, visible]`` or ``[whole, visible, occluded]`` mask names: the
                visible fraction of an annotation without ``occlude_rate`` is area(visible) /
                area(whole); the predictions' whole and visible masks give the detections'; the
                occluded one gets the ``_uoais`` key (None: the mask named ``occluded``, if any).
                None: the config's ``MULTIMASK.OCCLUSION_MASKS`` if ``cfg`` is given, else
                ("amodal", "visible").
            max_dets_per_image: detections per image that AP counts (the highest scored). None:
                the config's ``TEST.DETECTIONS_PER_IMAGE`` if ``cfg`` is given, else 100.
            primary_mask: the mask written to ``coco_instances_results.json``. None: the config's
                PRIMARY (``MODEL.ROI_MULTI_MASK_HEAD.PRIMARY``, else the first name) if ``cfg`` is
                given, else the first of ``mask_names``.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "thing_classes"):
            raise ValueError(f"dataset '{dataset_name}' has no thing_classes in its metadata")
        if mask_names is None and cfg is not None:
            mask_names = cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES
        if mask_names is None:
            mask_names = getattr(self._metadata, "mask_names", None)
        if not mask_names:
            raise ValueError(
                f"MultiMaskCOCOEvaluator('{dataset_name}'): no mask_names given, in cfg or in "
                "metadata"
            )
        self._mask_names = tuple(mask_names)
        self._primary = self._primary_mask(primary_mask, cfg)
        if occluded_threshold is None:
            occluded_threshold = cfg.MULTIMASK.OCCLUDED_THRESHOLD if cfg is not None else 0.1
        self._occluded = OcclusionSubset(check_occluded_threshold(occluded_threshold))
        if occlusion_thresholds is None:
            occlusion_thresholds = cfg.MULTIMASK.OCCLUSION_THRESHOLDS if cfg is not None else ()
        self._subsets = [
            OcclusionSubset(t) for t in check_occlusion_thresholds(occlusion_thresholds)
        ]
        if occlusion_masks is None:
            occlusion_masks = cfg.MULTIMASK.OCCLUSION_MASKS if cfg is not None else None
        whole, visible, occluded = check_occlusion_masks(occlusion_masks or ("amodal", "visible"))
        self._occlusion_masks = (whole, visible) + ((occluded,) if occluded else ())
        if (
            occluded is None
            and "occluded" in self._mask_names
            and "occluded" not in (whole, visible)
        ):
            occluded = "occluded"
        self._uoais_mask = occluded if occluded in self._mask_names else None
        if occluded and self._uoais_mask is None:
            logger.warning(
                f"occlusion mask '{occluded}' is not one of the mask names "
                f"{list(self._mask_names)}: no segm_{occluded}_uoais"
            )
        # the detections' occlusion needs the predicted whole and visible masks
        self._predicts_occlusion = whole in self._mask_names and visible in self._mask_names
        if max_dets_per_image is None:
            max_dets_per_image = cfg.TEST.DETECTIONS_PER_IMAGE if cfg is not None else 100
        if int(max_dets_per_image) < 1:
            raise ValueError(f"max_dets_per_image must be >= 1, got {max_dets_per_image}")
        # COCOeval needs 3 maxDets, sorts them and reports AP at the last: [1, 10, m] as
        # detectron2's COCOEvaluator, but [1, m, m] below 10, where [1, 10, m] would count 10
        m = int(max_dets_per_image)
        self._max_dets = [1, min(10, m), m]
        self._tasks = tuple(tasks) if tasks is not None else ("bbox", "segm")
        unknown = set(self._tasks) - {"bbox", "segm"}
        if unknown:
            raise ValueError(f"unknown evaluation tasks {sorted(unknown)}; known: bbox, segm")
        known = getattr(self._metadata, "mask_names", None)
        if known is not None and set(self._mask_names) - set(known):
            logger.warning(
                f"Dataset '{dataset_name}' provides masks {list(known)}; "
                f"{sorted(set(self._mask_names) - set(known))} have no ground truth and will be "
                "NaN."
            )
        self._distributed = distributed
        self._output_dir = output_dir
        id_map = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        num_classes = len(self._metadata.thing_classes)
        # contiguous id -> the dataset's own id, so saved results match the original json file
        self._dataset_ids = (
            {v: k for k, v in id_map.items()} if id_map else {i: i for i in range(num_classes)}
        )
        self._backend = coco_eval_backend(eval_backend)
        self._gt = None  # built on the first evaluate(), in the main process only
        self.reset()

    def _primary_mask(self, primary: Optional[str], cfg: Optional[CfgNode]) -> str:
        if primary is None and cfg is not None:
            primary = primary_mask_name(cfg)
        primary = primary or self._mask_names[0]
        if primary not in self._mask_names:
            raise ValueError(f"primary mask {primary!r} is not one of {list(self._mask_names)}")
        return primary

    def reset(self):
        self._predictions: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ process
    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]):
        """
        Args:
            inputs: the model inputs, each with ``image_id``.
            outputs: the model outputs, each with ``instances``: ``pred_boxes``, ``scores``,
                ``pred_classes`` and ``pred_multimasks`` (N, K, H, W) bool, on any device.
        """
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                raise ValueError(f"output for image_id {inp['image_id']} has no 'instances'")
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "instances": encode_instances(
                        out["instances"], self._mask_names, inp["image_id"]
                    ),
                }
            )

    # ------------------------------------------------------------------ evaluate
    def keys(self) -> List[str]:
        """The result keys ``evaluate()`` returns, in order."""
        keys = ["bbox"] if "bbox" in self._tasks else []
        if "segm" in self._tasks:
            for name in self._mask_names:
                keys += list(self._mask_keys(name))
        return keys

    def _mask_keys(self, name: str) -> Dict[str, Tuple[str, ...]]:
        """The keys of mask `name`, in order, and the metrics of each (without ``AP-<class>``)."""
        keys = {f"segm_{name}": METRICS, f"segm_{name}_occluded": METRICS}
        for rule in ("", "_strict"):
            keys.update(
                {f"segm_{name}_occ{s.threshold:g}{rule}": SUBSET_METRICS for s in self._subsets}
            )
        if name == self._uoais_mask:
            keys[f"segm_{name}_uoais"] = METRICS
        return keys

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """
        Returns:
            on the main process, {"bbox": {...}, then per mask name "segm_<name>",
            "segm_<name>_occluded", "segm_<name>_occ<t>" and "segm_<name>_occ<t>_strict" per
            threshold t, and "segm_<occluded>_uoais"} (the order of ``keys()``); {} on the other
            processes or when no image was processed.
        """
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[MultiMaskCOCOEvaluator] Did not receive valid predictions.")
            return {}
        with _gc_paused():
            return self._evaluate(predictions)

    def _evaluate(self, predictions: List[Dict[str, Any]]) -> "OrderedDict[str, Dict[str, float]]":
        self._ground_truth()
        by_image = {}
        for p in predictions:
            by_image.setdefault(p["image_id"], p["instances"])  # first copy of a repeated image
        images, coco_ids = self._gt["images"], self._gt["coco_ids"]
        sizes = {i: (images[c - 1]["height"], images[c - 1]["width"]) for i, c in coco_ids.items()}
        self._check_predictions(by_image, sizes)
        if self._output_dir:
            self._save(by_image)
        by_coco_id = {coco_ids[i]: insts for i, insts in by_image.items()}
        img_ids = list(by_coco_id)

        results = OrderedDict()
        if "bbox" in self._tasks:
            dts = [
                self._result(i, d, bbox=d["bbox"], area=d["bbox"][2] * d["bbox"][3])
                for i, insts in by_coco_id.items()
                for d in insts
            ]
            results["bbox"] = self._evaluate_boxes(img_ids, dts)
        if "segm" in self._tasks:
            extra = self._detection_areas(by_coco_id)
            for name in self._mask_names:
                # every detection counts, an empty mask too, as in COCOEvaluator
                dts = [
                    self._result(
                        i,
                        d,
                        segmentation=d["multimask"][name],
                        area=e["areas"][name],
                        **{VISIBLE_FRACTION: e["fraction"]},
                    )
                    for i, insts in by_coco_id.items()
                    for d, e in zip(insts, extra[i])
                ]
                if name == self._uoais_mask:
                    # the occluded-region mask: an empty prediction says "not occluded", it is
                    # no detection of an occluded region (COCOEvaluator has no such mask); every
                    # other mask, the primary included, scores empty predictions as it does
                    results.update(
                        self._evaluate_mask(name, img_ids, [d for d in dts if d["area"] > 0])
                    )
                else:
                    results.update(self._evaluate_mask(name, img_ids, dts))
                if name == self._uoais_mask:
                    key = f"segm_{name}_uoais"
                    flags = [e["occluded"] for i in by_coco_id for e in extra[i]]
                    kept = [d for d, occluded in zip(dts, flags) if occluded]
                    results[key] = self._evaluate_uoais(key, name, kept)
        return results

    def _detection_areas(self, by_coco_id: Dict[int, list]) -> Dict[int, List[Dict[str, Any]]]:
        """
        Per image (COCO id), per detection: the pixel area of each predicted mask (``areas``),
        its predicted visible fraction (``fraction``, the VRSP rule) and whether UOAIS calls it
        occluded (``occluded``); NaN and False when the model does not predict both occlusion
        masks.
        """
        whole, visible = self._occlusion_masks[:2]
        names = list(self._mask_names)
        out = {}
        for i, insts in by_coco_id.items():
            # (N, K + 1): the K masks' areas, then whole & visible's; one area() call per
            # detection (pycocotools' area() of more than 255 RLEs overflows a uint8 in numpy 2)
            areas = np.zeros((len(insts), len(names) + 1))
            for j, d in enumerate(insts):
                rles = [d["multimask"][n] for n in names]
                if self._predicts_occlusion:
                    pair = [d["multimask"][whole], d["multimask"][visible]]
                    rles.append(mask_util.merge(pair, intersect=True))
                areas[j, : len(rles)] = mask_util.area(rles)
            if self._predicts_occlusion:
                w, v = areas[:, names.index(whole)], areas[:, names.index(visible)]
                fractions = predicted_visible_fraction(areas[:, -1], w).tolist()
                occluded = predicted_occluded(v, w).tolist()
            else:
                fractions, occluded = [float("nan")] * len(insts), [False] * len(insts)
            out[i] = [
                {"areas": dict(zip(names, a[:-1].tolist())), "fraction": f, "occluded": o}
                for a, f, o in zip(areas, fractions, occluded)
            ]
        return out

    def _ground_truth(self) -> Dict[str, Any]:
        """The COCO ground truth of every mask name, built from the dataset dicts on first use."""
        if self._gt is None:
            self._gt = build_ground_truth(
                self._dataset_name,
                DatasetCatalog.get(self._dataset_name),
                self._metadata.thing_classes,
                self._dataset_ids,
                set(self._mask_names) | set(self._occlusion_masks[:2]),
                self._occlusion_masks,
            )
        return self._gt

    def _check_predictions(self, by_image: Dict[Any, list], sizes: Dict[Any, tuple]):
        for img_id, insts in by_image.items():
            if img_id not in sizes:
                raise ValueError(f"prediction for image_id {img_id}, not in '{self._dataset_name}'")
            for d in insts:
                if d["category_id"] not in self._dataset_ids:
                    raise ValueError(
                        f"image_id {img_id}: predicted class {d['category_id']} is not in "
                        f"[0, {len(self._dataset_ids) - 1}]"
                    )
                for name, rle in d["multimask"].items():
                    if tuple(rle["size"]) != sizes[img_id]:
                        raise ValueError(
                            f"image_id {img_id}: predicted '{name}' mask has size "
                            f"{rle['size']}, the image is {list(sizes[img_id])} "
                            "(pred_multimasks must be pasted)"
                        )

    def _result(self, img_id: Any, d: Dict[str, Any], **fields) -> Dict[str, Any]:
        """A COCO result record of prediction ``d``, with the dataset's own category id."""
        cat = self._dataset_ids[d["category_id"]]
        return {"image_id": img_id, "category_id": cat, "score": d["score"], **fields}

    def _save(self, by_image: Dict[Any, list]):
        """Both results files, with the dataset's image and category ids."""
        ids = self._dataset_ids
        files = {
            "multimask_instances_results.json": [
                r
                for i, insts in by_image.items()
                for r in multimask_records(insts, i, dataset_ids=ids)
            ],
            # detectron2's file: the PRIMARY masks, what COCOEvaluator saves for pred_masks
            "coco_instances_results.json": [
                r
                for i, insts in by_image.items()
                for r in coco_records(insts, i, self._primary, dataset_ids=ids)
            ],
        }
        PathManager.mkdirs(self._output_dir)
        for file_name, records in files.items():
            path = os.path.join(self._output_dir, file_name)
            logger.info(f"Saving {len(records)} results to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(records, f)

    def _coco_eval(self, coco_gt: Any, dts: List[Dict[str, Any]], iou_type: str, img_ids) -> Any:
        """A rerunnable COCOeval of `dts` on `coco_gt`, restricted to `img_ids`."""
        coco_dt = self._backend.load_results(coco_gt, dts)
        coco_eval = self._backend.cocoeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.imgIds = list(img_ids)
        coco_eval.params.maxDets = list(self._max_dets)
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
            f"COCOeval ({self._backend.name}) of {key}: {count} instances, at most "
            f"{self._max_dets[-1]} detections per image:\n" + create_small_table(results)
        )
        names = {c["id"]: c["name"] for c in self._gt["categories"]}
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

    def _evaluate_boxes(self, img_ids: List[int], dts: List[Dict[str, Any]]) -> Dict[str, float]:
        coco_gt = self._backend.coco(coco_ground_truth(self._gt, "bbox"))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.warning("bbox: no annotated ground truth in the evaluated images; NaN.")
            return {m: float("nan") for m in METRICS}
        coco_eval = self._coco_eval(coco_gt, dts, "bbox", img_ids)
        gt = {i: (a["area"], False) for i, a in coco_gt.anns.items()}
        dt_area = {i: a["area"] for i, a in coco_eval.cocoDt.anns.items()}
        self._run(coco_eval, COCO_AREA_RANGES, gt, dt_area)
        return self._metrics("bbox", coco_eval, "all", count)

    def _evaluate_mask(
        self, name: str, img_ids: List[int], dts: List[Dict[str, Any]]
    ) -> Dict[str, Dict[str, float]]:
        """
        Every key of mask `name` but ``_uoais``: one COCOeval, run on all instances (pixel areas,
        COCO's area ranges), on ``_occluded`` (the others flagged ignored), then once with the
        visible fraction as the area and one range per threshold: detections at area 0 (every
        one counts: ``_strict``), then at their predicted visible fraction (``_occ<t>``).
        """
        keys = self._mask_keys(name)
        keys.pop(f"segm_{name}_uoais", None)
        coco_gt = self._backend.coco(coco_ground_truth(self._gt, "segm", name))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.warning(f"segm_{name}: no annotated ground truth in the evaluated images; NaN.")
            return {key: {m: float("nan") for m in metrics} for key, metrics in keys.items()}
        coco_eval = self._coco_eval(coco_gt, dts, "segm", img_ids)
        gts, dets = coco_gt.anns, coco_eval.cocoDt.anns
        pixels = {i: (a["area"], False) for i, a in gts.items()}
        dt_pixels = {i: a["area"] for i, a in dets.items()}
        results = {}
        self._run(coco_eval, COCO_AREA_RANGES, pixels, dt_pixels)
        results[f"segm_{name}"] = self._metrics(f"segm_{name}", coco_eval, "all", count)

        subsets = {"_occluded": self._occluded}
        subsets.update({f"_occ{s.threshold:g}": s for s in self._subsets})
        counts = {k: self._evaluable(coco_gt, img_ids, s) for k, s in subsets.items()}
        for suffix, subset in subsets.items():
            if counts[suffix] == 0:
                logger.info(f"segm_{name}{suffix}: no instance {subset.describe()}; NaN.")

        occluded = {
            i: (pixels[i][0], not self._occluded.contains(a[VISIBLE_FRACTION]))
            for i, a in gts.items()
        }
        self._run(coco_eval, COCO_AREA_RANGES, occluded, dt_pixels)
        key = f"segm_{name}_occluded"
        results[key] = self._metrics(key, coco_eval, "all", counts["_occluded"])
        if not self._subsets:
            return results

        # the forks' trick: the visible fraction is the area, each subset an area range
        # [0, 1 - t]; an unknown fraction is out of every range
        ranges = {f"_occ{s.threshold:g}": (0.0, s.bound) for s in self._subsets}
        fractions = {}
        for i, a in gts.items():
            f = a[VISIBLE_FRACTION]
            fractions[i] = (float("inf") if f is None else f, False)
        for rule, dt_area in (
            ("_strict", {i: 0.0 for i in dets}),
            ("", {i: a[VISIBLE_FRACTION] for i, a in dets.items()}),
        ):
            if rule == "" and not self._predicts_occlusion:
                whole, visible = self._occlusion_masks[:2]
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

    def _evaluate_uoais(self, key: str, name: str, dts: List[Dict[str, Any]]) -> Dict[str, float]:
        """UOAIS's ``occlusion_segm``: see ``uoais_ground_truth``, on the images of `dts`."""
        if not self._predicts_occlusion:
            whole, visible = self._occlusion_masks[:2]
            logger.warning(
                f"{key}: the model does not predict both '{whole}' and '{visible}', which select "
                "the occluded detections; NaN."
            )
            return {m: float("nan") for m in METRICS}
        # UOAIS evaluates only the images with a detection ("eval only forwarded data")
        img_ids = sorted({d["image_id"] for d in dts})
        subset = OcclusionSubset(UOAIS_OCCLUDED_THRESHOLD, strict=True)
        coco_gt = self._backend.coco(uoais_ground_truth(self._gt, name, subset))
        count = self._evaluable(coco_gt, img_ids)
        if count == 0:
            logger.info(
                f"{key}: no instance {subset.describe()} in the {len(img_ids)} images with a "
                "detection predicted occluded; NaN."
            )
            return {m: float("nan") for m in METRICS}
        coco_eval = self._coco_eval(coco_gt, dts, "segm", img_ids)
        gt = {i: (a["area"], False) for i, a in coco_gt.anns.items()}
        dt_area = {i: a["area"] for i, a in coco_eval.cocoDt.anns.items()}
        self._run(coco_eval, COCO_AREA_RANGES, gt, dt_area)
        return self._metrics(key, coco_eval, "all", count)
