"""``MultiMaskCOCOEvaluator``: COCO AP per mask name, and on occluded subsets of the instances."""

import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import pycocotools.mask as mask_util

import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..config import primary_mask_name
from ..utils.results_json import coco_records, encode_instances, multimask_records
from .coco_metrics import METRICS, per_category_ap, per_category_table, summary_metrics
from .cocoeval_backend import SUBSET_IGNORE, SubsetCOCOeval, coco_eval_backend
from .ground_truth import build_ground_truth, coco_ground_truth
from .occlusion import OcclusionSubset, check_occlusion_masks, occlusion_subsets

__all__ = ["MultiMaskCOCOEvaluator", "SubsetCOCOeval"]

logger = logging.getLogger(__name__)


class MultiMaskCOCOEvaluator(DatasetEvaluator):
    """
    COCO box AP, mask AP per mask name, and mask AP per mask name on occluded subsets.

    Results (an OrderedDict, detectron2's format): ``bbox``, and for every mask name
    ``segm_<name>``, ``segm_<name>_occluded`` and ``segm_<name>_occ<t>`` for each occlusion
    threshold t, each a dict with AP, AP50, AP75, APs, APm, APl and ``AP-<class>``.

    Ground truth is read from the registered dataset dicts (``annotations[i]["multimask"]``), one
    COCO object per mask name, built in memory. For a mask name:

    - an instance whose mask is None (not annotated) becomes a crowd region covering its box:
      detections on it are ignored, and it is never counted as missed;
    - an instance whose mask is annotated but empty (e.g. the ``occluded`` mask of a fully visible
      object) is not an object of that mask; likewise a predicted empty mask is not a detection,
      so neither enters COCOeval (a non-empty prediction there is a false positive);
    - the occluded subsets (see :mod:`multimask.evaluation.occlusion`): ``segm_<name>_occluded``
      keeps as evaluated ground truth the instances whose occlusion rate is >=
      ``occluded_threshold``, ``segm_<name>_occ<t>`` those whose rate is > t (the papers'
      protocols); the others, and those whose rate is unknown, are flagged ignored (see
      ``SubsetCOCOeval``). A subset without instances is NaN with a log line, as is any key
      without evaluable ground truth.

    AP counts at most ``max_dets_per_image`` detections per image and class (COCOeval's
    ``maxDets`` are [1, 10, max_dets_per_image]), as in detectron2's ``COCOEvaluator``; below 10
    they are [1, m, m] (pycocotools sorts [1, 10, m], so COCOEvaluator counts 10 there).

    The 1 + K * (2 + T) COCOeval passes (K mask names, T thresholds) run on the backend
    ``coco_eval_backend`` picks: detectron2's C++ ``COCOeval_opt`` if ``detectron2._C`` is built,
    else ``faster-coco-eval``, else pycocotools.

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
            occlusion_thresholds: one ``_occ<t>`` subset (occlusion rate > t) each, e.g.
                (0.05, 0.15, 0.25, 0.4). None: the config's ``MULTIMASK.OCCLUSION_THRESHOLDS`` if
                ``cfg`` is given, else none.
            occlusion_masks: (whole, visible) mask names the occlusion rate is computed from when an
                annotation has no ``occlude_rate``. None: the config's ``MULTIMASK.OCCLUSION_MASKS``
                if ``cfg`` is given, else ("amodal", "visible").
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
        if occlusion_thresholds is None:
            occlusion_thresholds = cfg.MULTIMASK.OCCLUSION_THRESHOLDS if cfg is not None else ()
        self._subsets = occlusion_subsets(occluded_threshold, occlusion_thresholds)
        if occlusion_masks is None:
            occlusion_masks = cfg.MULTIMASK.OCCLUSION_MASKS if cfg is not None else None
        self._occlusion_masks = check_occlusion_masks(occlusion_masks or ("amodal", "visible"))
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
    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """
        Returns:
            on the main process, {"bbox": {...}, then per mask name "segm_<name>": {...},
            "segm_<name>_occluded": {...} and "segm_<name>_occ<t>": {...} per threshold t};
            {} on the other processes or when no image was processed.
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
                self._result(i, d, bbox=d["bbox"]) for i, insts in by_coco_id.items() for d in insts
            ]
            results["bbox"] = self._evaluate_one("bbox", img_ids, dts, "bbox")
        if "segm" in self._tasks:
            for name in self._mask_names:
                # an empty predicted mask claims no object of this mask: not a detection
                dts = [
                    self._result(i, d, segmentation=d["multimask"][name])
                    for i, insts in by_coco_id.items()
                    for d in insts
                    if mask_util.area(d["multimask"][name]) > 0
                ]
                loaded = {}  # the results COCO of this mask, loaded once for all its passes
                for subset in [None, *self._subsets]:
                    key = f"segm_{name}" + (subset.suffix if subset else "")
                    results[key] = self._evaluate_one(
                        key, img_ids, dts, "segm", name, subset, loaded
                    )
        return results

    def _ground_truth(self) -> Dict[str, Any]:
        """The COCO ground truth of every mask name, built from the dataset dicts on first use."""
        if self._gt is None:
            self._gt = build_ground_truth(
                self._dataset_name,
                DatasetCatalog.get(self._dataset_name),
                self._metadata.thing_classes,
                self._dataset_ids,
                set(self._mask_names) | set(self._occlusion_masks),
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

    def _evaluate_one(
        self,
        key: str,
        img_ids: List[Any],
        dts: List[Dict[str, Any]],
        iou_type: str,
        name: Optional[str] = None,
        subset: Optional[OcclusionSubset] = None,
        loaded: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, float]:
        """
        Run the backend's subset-aware COCOeval on the processed images; NaN metrics when nothing
        can be evaluated.

        Args:
            img_ids: COCO ids of the processed images.
            dts: COCO result records (COCO image ids, dataset category ids).
            loaded: a dict shared by the passes over the same `dts`, which keeps their results COCO
                (loadRes costs a Python loop over the detections).
        """
        coco_gt = self._backend.coco(coco_ground_truth(self._gt, iou_type, name, subset))
        ids = set(img_ids)
        anns = coco_gt.dataset["annotations"]
        evaluated = sum(
            a["image_id"] in ids and not (a["iscrowd"] or a.get(SUBSET_IGNORE, False)) for a in anns
        )
        if evaluated == 0:
            if subset is not None:
                logger.info(f"{key}: no instance {subset.describe()} in the evaluated images; NaN.")
            else:
                logger.warning(f"{key}: no annotated ground truth in the evaluated images; NaN.")
            return {m: float("nan") for m in METRICS}
        loaded = {} if loaded is None else loaded
        if "coco_dt" not in loaded:
            loaded["coco_dt"] = self._backend.load_results(coco_gt, dts)
        coco_eval = self._backend.cocoeval(coco_gt, loaded["coco_dt"], iou_type)
        coco_eval.params.imgIds = img_ids
        coco_eval.params.maxDets = list(self._max_dets)
        with contextlib.redirect_stdout(io.StringIO()):  # the backends print their progress
            coco_eval.evaluate()
            coco_eval.accumulate()
        results = summary_metrics(coco_eval)
        logger.info(
            f"COCOeval ({self._backend.name}) of {key}: {evaluated} instances, at most "
            f"{self._max_dets[-1]} detections per image:\n" + create_small_table(results)
        )
        names = {c["id"]: c["name"] for c in self._gt["categories"]}
        per_category = per_category_ap(coco_eval, names)
        if len(per_category) > 1:
            logger.info(f"Per-category {key} AP:\n" + per_category_table(per_category))
        results.update({f"AP-{n}": ap for n, ap in per_category})
        return results
