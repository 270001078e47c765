"""``MultiMaskCOCOEvaluator``: COCO AP per mask name, and on occluded subsets of the instances."""

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from ..config import primary_mask_name
from ..utils.results_json import coco_records, encode_instances, multimask_records
from .coco_tasks import COCO_AREA_RANGES, COCOTasks, gc_paused  # noqa: F401 (re-export)
from .cocoeval_backend import coco_eval_backend
from .completion import completion_miou, miou_keys
from .detection_areas import detection_areas
from .given_boxes import GIVEN_INSTANCES, check_eval_boxes
from .occlusion_order import check_order_gt, evaluate_occlusion_order
from .ground_truth import AGNOSTIC_ID, VISIBLE_FRACTION, build_ground_truth, class_agnostic
from .occlusion import (
    OcclusionSubset,
    check_occluded_threshold,
    check_occlusion_masks,
    check_occlusion_thresholds,
)

__all__ = ["MultiMaskCOCOEvaluator"]

logger = logging.getLogger(__name__)

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

    Given boxes (``eval_boxes``, ``MULTIMASK.EVAL_BOXES``): with "gt" the inputs carry every
    non-crowd ground-truth object as a box (``given_boxes.attach_given_boxes``) and the results add
    the completion protocol, ``miou_<name>`` and ``miou_<whole>_occ`` (:mod:`.completion`); with
    a detections file the usual keys score the masks predicted for those detections.
    ``class_agnostic`` scores every key with one class (SAMEO's class-agnostic AP).

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
        eval_boxes: Optional[str] = None,
        class_agnostic: Optional[bool] = None,
        order_eval: Optional[bool] = None,
        order_gt: Optional[str] = None,
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
            eval_boxes: where the inputs' boxes come from: "" (the model's own detections), "gt"
                (adds the ``miou_*`` keys) or a detections file. None: the config's
                ``MULTIMASK.EVAL_BOXES`` if ``cfg`` is given, else "".
            class_agnostic: score every key with one class. None: the config's
                ``MULTIMASK.CLASS_AGNOSTIC_EVAL`` if ``cfg`` is given, else False.
            order_eval, order_gt: add the key ``order``, uoais-v2's occlusion-order accuracy
                (:mod:`.occlusion_order`), its ground truth "auto" or "masks". None: the config's
                ``MULTIMASK.ORDER_EVAL`` / ``ORDER_GT``, else False / "auto".
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
        if eval_boxes is None:
            eval_boxes = cfg.MULTIMASK.EVAL_BOXES if cfg is not None else ""
        self._eval_boxes = check_eval_boxes(eval_boxes)
        if class_agnostic is None:
            class_agnostic = cfg.MULTIMASK.CLASS_AGNOSTIC_EVAL if cfg is not None else False
        self._class_agnostic = bool(class_agnostic)
        if order_eval is None:
            order_eval = cfg.MULTIMASK.ORDER_EVAL if cfg is not None else False
        self._order_eval = bool(order_eval)
        self._order_score = cfg.MULTIMASK.ORDER_SCORE_THRESHOLD if cfg is not None else 0.5
        if order_gt is None:
            order_gt = cfg.MULTIMASK.ORDER_GT if cfg is not None else "auto"
        self._order_gt = check_order_gt(order_gt)
        if self._order_eval and not self._predicts_occlusion:
            raise ValueError(f"order_eval needs the masks {self._occlusion_masks[:2]} predicted")
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
            if self._eval_boxes and GIVEN_INSTANCES not in inp:
                raise ValueError(
                    f"image_id {inp['image_id']}: the evaluator scores masks for given boxes "
                    f"(eval_boxes {self._eval_boxes!r}) but the input has no {GIVEN_INSTANCES}; "
                    "build the test loader with MultiMaskTrainer.build_test_loader (it attaches "
                    "them, see multimask.evaluation.given_boxes)"
                )
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
            if self._eval_boxes == "gt":
                keys += miou_keys(self._mask_names, self._occlusion_masks[0])
        return keys + (["order"] if self._order_eval else [])

    def _mask_keys(self, name: str) -> Dict[str, Tuple[str, ...]]:
        """The keys of mask `name`, in order, and the metrics of each (without ``AP-<class>``)."""
        return self._tasks_for(self._gt).mask_keys(name)

    def _tasks_for(self, gt: Optional[Dict[str, Any]]) -> COCOTasks:
        """The COCOeval runs on ground truth `gt` (None before the first evaluate: keys only)."""
        return COCOTasks(
            self._backend,
            gt,
            self._max_dets,
            self._occluded,
            self._subsets,
            self._occlusion_masks,
            self._predicts_occlusion,
            self._uoais_mask,
        )

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
        with gc_paused():
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

        # one class for every object and detection: SAMEO's class-agnostic protocol
        tasks = self._tasks_for(class_agnostic(self._gt) if self._class_agnostic else self._gt)
        results = OrderedDict()
        if "bbox" in self._tasks:
            dts = [
                self._result(i, d, bbox=d["bbox"], area=d["bbox"][2] * d["bbox"][3])
                for i, insts in by_coco_id.items()
                for d in insts
            ]
            results["bbox"] = tasks.evaluate_boxes(img_ids, dts)
        if "segm" in self._tasks:
            extra = detection_areas(
                by_coco_id, self._mask_names, self._occlusion_masks, self._predicts_occlusion
            )
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
                        tasks.evaluate_mask(name, img_ids, [d for d in dts if d["area"] > 0])
                    )
                else:
                    results.update(tasks.evaluate_mask(name, img_ids, dts))
                if name == self._uoais_mask:
                    key = f"segm_{name}_uoais"
                    flags = [e["occluded"] for i in by_coco_id for e in extra[i]]
                    kept = [d for d, occluded in zip(dts, flags) if occluded]
                    results[key] = tasks.evaluate_uoais(key, name, kept)
            if self._eval_boxes == "gt":
                results.update(
                    completion_miou(self._gt, by_coco_id, self._mask_names, self._occlusion_masks)
                )
        if self._order_eval:
            dicts, masks = DatasetCatalog.get(self._dataset_name), self._occlusion_masks
            results["order"] = evaluate_occlusion_order(
                dicts, by_image, masks, self._order_score, self._order_gt
            )
            logger.info(f"[MultiMaskCOCOEvaluator] occlusion order: {results['order']}")
        return results

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
        cat = AGNOSTIC_ID if self._class_agnostic else self._dataset_ids[d["category_id"]]
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
