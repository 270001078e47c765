"""``MultiMaskCOCOEvaluator``: COCO AP per mask name, and on the occluded instances only."""

import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode, Instances
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..structures import segmentation_to_rle
from .cocoeval_backend import SUBSET_IGNORE, SubsetCOCOeval, coco_eval_backend

__all__ = ["MultiMaskCOCOEvaluator", "SubsetCOCOeval"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _to_rle(segm: Any, height: int, width: int, where: str) -> dict:
    """``segmentation_to_rle``, with errors that name the annotation (`where`)."""
    try:
        return segmentation_to_rle(segm, height, width)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


class MultiMaskCOCOEvaluator(DatasetEvaluator):
    """
    COCO box AP, mask AP per mask name, and mask AP per mask name on the occluded instances only.

    Results (an OrderedDict, detectron2's format): ``bbox``, and for every mask name ``segm_<name>`` and
    ``segm_<name>_occluded``, each a dict with AP, AP50, AP75, APs, APm, APl and ``AP-<class>``.

    Ground truth is read from the registered dataset dicts (``annotations[i]["multimask"]``), one
    COCO object per mask name, built in memory. For a mask name:

    - an instance whose mask is None (not annotated) becomes a crowd region covering its box: detections
      on it are ignored, and it is never counted as missed;
    - an instance whose mask is annotated but empty (e.g. the ``occluded`` mask of a fully visible object)
      is not an object of that mask; likewise a predicted empty mask is not a detection, so neither
      enters COCOeval (a non-empty prediction there is a false positive);
    - ``segm_<name>_occluded`` keeps as evaluated ground truth only instances whose occlusion rate
      (annotation ``occlude_rate``, else 1 - area(visible) / area(amodal)) is >= ``occluded_threshold``;
      the others, and those whose rate is unknown, are flagged ignored (see ``SubsetCOCOeval``). It is NaN
      (with a log line) when no such instance exists, as is any key without evaluable ground truth.

    The 2K+1 COCOeval passes run on the backend ``coco_eval_backend`` picks: detectron2's C++
    ``COCOeval_opt`` if ``detectron2._C`` is built, else ``faster-coco-eval``, else pycocotools.

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
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``thing_classes``.
            mask_names: names of the K channels of ``pred_multimasks``, in order. None: the config's
                ``MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES`` if ``cfg`` is given, else the metadata's
                ``mask_names``.
            distributed: gather predictions from all processes; only the main process evaluates.
            output_dir: where ``multimask_instances_results.json`` is written; None = nowhere.
            occluded_threshold: minimum occlusion rate of the occluded subset. None: the config's
                ``MULTIMASK.OCCLUDED_THRESHOLD`` if ``cfg`` is given, else 0.1.
            tasks: subset of ("bbox", "segm"); None = both. "segm" covers every mask name.
            cfg: a config with multimask's keys, read only for the defaults above.
            eval_backend: the COCOeval implementation: "auto", "detectron2", "faster_coco_eval" or
                "pycocotools" (see ``coco_eval_backend``); the metrics agree within 0.05 AP.
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
                f"MultiMaskCOCOEvaluator('{dataset_name}'): no mask_names given, in cfg or in metadata"
            )
        self._mask_names = tuple(mask_names)
        if occluded_threshold is None:
            occluded_threshold = cfg.MULTIMASK.OCCLUDED_THRESHOLD if cfg is not None else 0.1
        self._occluded_threshold = float(occluded_threshold)
        self._tasks = tuple(tasks) if tasks is not None else ("bbox", "segm")
        unknown = set(self._tasks) - {"bbox", "segm"}
        if unknown:
            raise ValueError(f"unknown evaluation tasks {sorted(unknown)}; known: bbox, segm")
        known = getattr(self._metadata, "mask_names", None)
        if known is not None and set(self._mask_names) - set(known):
            logger.warning(
                f"Dataset '{dataset_name}' provides masks {list(known)}; "
                f"{sorted(set(self._mask_names) - set(known))} have no ground truth and will be NaN."
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
                {"image_id": inp["image_id"], "instances": self._encode(out["instances"], inp)}
            )

    def _encode(self, instances: Instances, inp: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One dict per instance: XYWH box, score, contiguous class, and {mask name: RLE}."""
        if len(instances) == 0:
            return []
        if not instances.has("pred_multimasks"):
            raise ValueError(f"instances of image_id {inp['image_id']} have no pred_multimasks")
        masks = instances.pred_multimasks
        if masks.dim() != 4 or masks.shape[1] != len(self._mask_names):
            raise ValueError(
                f"image_id {inp['image_id']}: pred_multimasks has shape {tuple(masks.shape)}, expected "
                f"(N, {len(self._mask_names)}, H, W) for mask names {list(self._mask_names)}"
            )
        # bool is one byte of 0 or 1: the uint8 view pycocotools needs, without a copy
        masks = (masks if masks.dtype == torch.bool else masks >= 0.5).cpu().numpy().view(np.uint8)
        boxes = instances.pred_boxes.tensor.cpu().numpy()
        boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
        scores = instances.scores.cpu().tolist()
        classes = instances.pred_classes.cpu().tolist()
        rles = []
        for k in range(len(self._mask_names)):
            # one Fortran (H, W, 1) copy per mask: gathering the N masks into one (H, W, N) stack
            # first is about 1.4x slower at 2000 x 604
            per_name = [mask_util.encode(np.asfortranarray(m[:, :, None]))[0] for m in masks[:, k]]
            for r in per_name:
                r["counts"] = r["counts"].decode("utf-8")  # str, for json and pickling
            rles.append(per_name)
        per_instance = [dict(zip(self._mask_names, r)) for r in zip(*rles)]
        keys = ("bbox", "score", "category_id", "multimask")
        return [dict(zip(keys, v)) for v in zip(boxes, scores, classes, per_instance)]

    # ------------------------------------------------------------------ ground truth
    def _build_gt(self) -> Dict[str, Any]:
        """
        Images, categories and, per annotation, box, RLE of each mask name and occlusion rate.

        The COCO records number the images 1..N (``coco_ids`` maps the dataset's image_id to them):
        the C++ backends need integer image ids, datasets may use strings.
        """
        dicts = DatasetCatalog.get(self._dataset_name)
        classes = self._metadata.thing_classes
        categories = [{"id": self._dataset_ids[i], "name": c} for i, c in enumerate(classes)]
        needed = set(self._mask_names) | {"amodal", "visible"}
        images, anns, coco_ids = [], [], {}
        for d in dicts:
            file_name = d.get("file_name", "<no file_name>")
            if "image_id" not in d or "height" not in d or "width" not in d:
                raise ValueError(f"dataset dict of {file_name} lacks image_id, height or width")
            img_id, h, w = d["image_id"], int(d["height"]), int(d["width"])
            if img_id in coco_ids:
                raise ValueError(f"{file_name}: image_id {img_id} appears twice in the dataset")
            coco_ids[img_id] = len(images) + 1
            images.append({"id": coco_ids[img_id], "height": h, "width": w, "file_name": file_name})
            for j, a in enumerate(d.get("annotations", [])):
                where = f"{file_name} (image_id {img_id}, annotation {j})"
                anns.append(self._gt_annotation(a, coco_ids[img_id], h, w, needed, where))
        return {
            "images": images,
            "categories": categories,
            "annotations": anns,
            "coco_ids": coco_ids,
        }

    def _gt_annotation(self, a, img_id, h, w, needed, where) -> Dict[str, Any]:
        if "bbox" not in a or "bbox_mode" not in a or "category_id" not in a:
            raise ValueError(f"{where}: annotation lacks bbox, bbox_mode or category_id")
        if a["category_id"] not in self._dataset_ids:
            raise ValueError(f"{where}: category_id {a['category_id']} is not a contiguous id")
        box = [float(v) for v in BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)]
        multimask = a.get("multimask") or {}
        rles = {
            n: _to_rle(multimask[n], h, w, f"{where}, mask '{n}'")
            for n in needed
            if multimask.get(n) is not None
        }
        areas = {n: float(mask_util.area(r)) for n, r in rles.items()}
        rate = a.get("occlude_rate")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"{where}: occlude_rate {rate} is not in [0, 1]")
        if rate is None and areas.get("amodal", 0.0) > 0 and "visible" in areas:
            rate = 1.0 - areas["visible"] / areas["amodal"]
        segm = a.get("segmentation")  # COCO's box area ranges use the mask area when there is one
        box_area = mask_util.area(_to_rle(segm, h, w, where)) if segm else box[2] * box[3]
        return {
            "image_id": img_id,
            "category_id": self._dataset_ids[a["category_id"]],
            "bbox": box,
            "iscrowd": int(a.get("iscrowd", 0)),
            "box_area": float(box_area),
            "rles": rles,
            "areas": areas,
            "occlusion": None if rate is None else float(rate),
            "size": (h, w),
        }

    def _gt_coco(self, task: str, name: Optional[str] = None, occluded: bool = False) -> Any:
        """The COCO ground truth of ``bbox`` or of mask ``name`` (of its occluded subset)."""
        gt, anns = self._gt, []
        for a in gt["annotations"]:
            rec = {k: a[k] for k in ("image_id", "category_id", "bbox", "iscrowd")}
            if task == "bbox":
                rec["area"] = a["box_area"]
            elif name not in a["rles"]:
                # not annotated: a crowd region over the box absorbs every detection inside it
                x, y, bw, bh = a["bbox"]
                poly = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                rec.update(iscrowd=1, area=bw * bh, segmentation=_to_rle(poly, *a["size"], ""))
            elif a["areas"][name] == 0:
                continue  # annotated as empty: no object of this mask here
            else:
                rec.update(area=a["areas"][name], segmentation=a["rles"][name])
                if occluded and not rec["iscrowd"]:
                    occ = a["occlusion"]
                    rec[SUBSET_IGNORE] = occ is None or occ < self._occluded_threshold
            rec["id"] = len(anns) + 1  # ids must be > 0: COCOeval uses 0 for "unmatched"
            anns.append(rec)
        return self._backend.coco(
            {"images": gt["images"], "categories": gt["categories"], "annotations": anns}
        )

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """
        Returns:
            on the main process, {"bbox": {...}, "segm_<name>": {...}, "segm_<name>_occluded": {...}};
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
        if self._gt is None:
            self._gt = self._build_gt()
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
                loaded = {}  # the results COCO of this mask, loaded once for both passes
                for occluded in (False, True):
                    key = f"segm_{name}" + ("_occluded" if occluded else "")
                    results[key] = self._evaluate_one(
                        key, img_ids, dts, "segm", name, occluded, loaded
                    )
        return results

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
                            f"image_id {img_id}: predicted '{name}' mask has size {rle['size']}, the "
                            f"image is {list(sizes[img_id])} (pred_multimasks must be pasted)"
                        )

    def _result(self, img_id: Any, d: Dict[str, Any], **fields) -> Dict[str, Any]:
        """A COCO result record of prediction ``d``, with the dataset's own category id."""
        cat = self._dataset_ids[d["category_id"]]
        return {"image_id": img_id, "category_id": cat, "score": d["score"], **fields}

    def _save(self, by_image: Dict[Any, list]):
        records = [
            self._result(img_id, d, bbox=d["bbox"], mask_name=name, segmentation=rle)
            for img_id, insts in by_image.items()
            for d in insts
            for name, rle in d["multimask"].items()
        ]
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "multimask_instances_results.json")
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
        occluded: bool = False,
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
        coco_gt = self._gt_coco(iou_type, name, occluded)
        ids = set(img_ids)
        anns = coco_gt.dataset["annotations"]
        evaluated = sum(
            a["image_id"] in ids and not (a["iscrowd"] or a.get(SUBSET_IGNORE, False)) for a in anns
        )
        if evaluated == 0:
            if occluded:
                logger.info(f"{key}: no instance occluded >= {self._occluded_threshold}; NaN.")
            else:
                logger.warning(f"{key}: no annotated ground truth in the evaluated images; NaN.")
            return {m: float("nan") for m in _METRICS}
        loaded = {} if loaded is None else loaded
        if "coco_dt" not in loaded:
            loaded["coco_dt"] = self._backend.load_results(coco_gt, dts)
        coco_eval = self._backend.cocoeval(coco_gt, loaded["coco_dt"], iou_type)
        coco_eval.params.imgIds = img_ids
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        lines = [ln for ln in summary.getvalue().splitlines() if ln.lstrip().startswith("Average")]
        logger.info(
            f"COCOeval ({self._backend.name}) of {key} ({evaluated} instances):\n"
            + "\n".join(lines)
        )
        return self._derive(coco_eval, key)

    def _derive(self, coco_eval: Any, key: str) -> Dict[str, float]:
        """The six standard metrics and AP per category, in percent (NaN when undefined)."""
        results = {
            m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for i, m in enumerate(_METRICS)
        }
        logger.info(f"Evaluation results for {key}:\n" + create_small_table(results))
        # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets)
        precisions = coco_eval.eval["precision"]
        names = {c["id"]: c["name"] for c in self._gt["categories"]}
        per_category = []
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precisions[:, :, k, 0, -1]
            p = p[p > -1]
            per_category.append((names[cat_id], float(p.mean() * 100) if p.size else float("nan")))
        if len(per_category) > 1:
            flat = list(itertools.chain(*per_category))
            cols = min(6, len(flat))
            rows = itertools.zip_longest(*[flat[i::cols] for i in range(cols)])
            table = tabulate(
                rows, headers=["category", "AP"] * (cols // 2), tablefmt="pipe", floatfmt=".3f"
            )
            logger.info(f"Per-category {key} AP:\n" + table)
        results.update({f"AP-{n}": ap for n, ap in per_category})
        return results
