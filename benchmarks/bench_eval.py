#!/usr/bin/env python
"""
Evaluation cost: MultiMaskCOCOEvaluator over K masks against one detectron2 COCOEvaluator segm run
(issue 6, item 5; issue 12, item 6), side by side in one run.

    python benchmarks/bench_eval.py                   # synthetic val set (60 images), 20 detections
    python benchmarks/bench_eval.py --detections 100
    python benchmarks/bench_eval.py --images 1000 --repeats 1 --warmup 0   # KINS-size, 100 dets

Small mode: both evaluators get the same outputs: per image, --detections predictions made from the
ground truth (each object's amodal and visible masks, shifted by a few pixels, with a random score)
padded with random false positives, as (N, K, H, W) ``pred_multimasks`` and the amodal one as
``pred_masks``. One timed unit is ``reset(); process(...) for every image; evaluate()``, segm only
(``tasks=("segm",)``). Ground-truth conversion happens once, before timing, for both: detectron2's
COCOEvaluator converts the dataset in its constructor, MultiMaskCOCOEvaluator in its first
``evaluate()`` (a warm-up round). MultiMaskCOCOEvaluator runs one COCOeval per mask name, matched
twice (all instances, and the occluded subset ``_occluded``; no ``_occ<t>`` thresholds here).

KINS-size mode (--images, or ``measure_eval()`` from another script): ``evaluate()`` of
MultiMaskCOCOEvaluator with the config's default protocols (``MULTIMASK.OCCLUSION_THRESHOLDS``
0.15, 0.25, 0.4: bbox, and per mask name all instances, ``_occluded``, ``_occ<t>`` and
``_occ<t>_strict``, plus ``segm_occluded_uoais``: 5 COCOeval, 14 matchings, on the COCOeval
backend it picks) against one detectron2 COCOEvaluator segm pass with pycocotools, on
``kins_size_data``; see ``measure_eval``.
"""

import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (  # noqa: E402
    benchmark_parser,
    interleaved_medians,
    machine_info,
    print_table,
    set_threads,
)
from multimask import MultiMaskCOCOEvaluator, add_multimask_config  # noqa: E402
from multimask.structures import derived_mask, segmentation_to_bitmask  # noqa: E402

NAMES = ["amodal", "visible", "occluded"]


def make_outputs(dicts, num_dets: int, seed: int = 0):
    """Per image: inputs {image_id, height, width} and outputs {instances} with all 3 masks."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for d in dicts:
        h, w = d["height"], d["width"]
        masks, boxes = [], []
        for a in d["annotations"][:num_dets]:
            per = [segmentation_to_bitmask(a["multimask"][n], h, w) for n in NAMES]
            dx, dy = rng.integers(-3, 4, 2)
            per = [np.roll(m, (dy, dx), axis=(0, 1)) for m in per]
            masks.append(np.stack(per))
            ys, xs = np.nonzero(per[0])
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        while len(masks) < num_dets:  # false positives: random boxes filled
            x0, y0 = rng.integers(0, w - 16), rng.integers(0, h - 16)
            x1, y1 = x0 + rng.integers(8, 48), y0 + rng.integers(8, 48)
            m = np.zeros((len(NAMES), h, w), dtype=bool)
            m[:, y0:y1, x0:x1] = True
            m[1, y0:y1, x0 : (x0 + x1) // 2] = False
            m[2] = m[0] & ~m[1]
            masks.append(m)
            boxes.append([x0, y0, min(x1, w), min(y1, h)])
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.scores = torch.as_tensor(rng.uniform(0.05, 1.0, len(masks)), dtype=torch.float32)
        inst.pred_classes = torch.as_tensor(
            [a["category_id"] for a in d["annotations"][:num_dets]]
            + list(rng.integers(0, 3, num_dets - min(num_dets, len(d["annotations"])))),
            dtype=torch.int64,
        )
        inst.pred_multimasks = torch.from_numpy(np.stack(masks))
        inst.pred_masks = inst.pred_multimasks[:, 0]
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def coco_json_twin(dataset: str, tmp: str) -> str:
    """
    Register `dataset` again with a COCO json file, which detectron2's COCOEvaluator needs
    (generated datasets have ``json_file`` None); return the twin's name. The json holds the
    primary mask.
    """
    twin = f"{dataset}_bench_coco_json"
    if twin not in DatasetCatalog.list():
        meta = MetadataCatalog.get(dataset)
        DatasetCatalog.register(twin, lambda: DatasetCatalog.get(dataset))
        MetadataCatalog.get(twin).set(
            thing_classes=list(meta.thing_classes),
            thing_dataset_id_to_contiguous_id=dict(meta.thing_dataset_id_to_contiguous_id),
        )
        json_file = os.path.join(tmp, f"{twin}.json")
        convert_to_coco_json(twin, json_file, allow_cached=False)
        MetadataCatalog.get(twin).set(json_file=json_file)
    return twin


def eval_fn(evaluator, inputs, outputs, k=None, sink=None):
    def run():
        evaluator.reset()
        for inp, out in zip(inputs, outputs):
            o = out
            if k is not None:  # the first K of the 3 masks
                inst = out["instances"]
                sub = Instances(inst.image_size, **{f: inst.get(f) for f in inst.get_fields()})
                sub.pred_multimasks = inst.pred_multimasks[:, :k]
                o = {"instances": sub}
            evaluator.process([inp], [o])
        with contextlib.redirect_stdout(io.StringIO()):
            res = evaluator.evaluate()
        if sink is not None:
            sink.append(res)

    return run


# ---------------------------------------------------------------- KINS-size mode
KINS_CLASSES = ["cyclist", "pedestrian", "car", "tram", "truck", "van", "misc"]
KINS_IDS = {1: 0, 2: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6}  # KINS's category ids -> contiguous
# contiguous class -> (frequency, box height / width): about KINS's mix, mostly cars
KINS_SHAPES = [
    (0.07, 1.5),
    (0.15, 2.4),
    (0.55, 0.6),
    (0.03, 0.7),
    (0.05, 0.9),
    (0.08, 0.8),
    (0.07, 1.0),
]


def clip_polygon(xy: np.ndarray, normal: np.ndarray, offset: float) -> Optional[List[float]]:
    """
    The part of polygon `xy` (n, 2) where ``xy @ normal <= offset`` (Sutherland-Hodgman against one
    half-plane, vectorised), flat [x0, y0, ...]; None when fewer than 3 vertices are left.
    """
    d = xy @ normal - offset
    prev, d_prev = np.roll(xy, 1, axis=0), np.roll(d, 1)
    cross = (d_prev > 0) != (d > 0)
    t = d_prev / np.where(cross, d_prev - d, 1.0)
    points = np.stack([prev + (xy - prev) * t[:, None], xy], axis=1).reshape(-1, 2)
    kept = points[np.stack([cross, d <= 0], axis=1).ravel()]
    return kept.ravel().tolist() if len(kept) >= 3 else None


def random_object(rng, h: int, w: int, occluded_fraction: float) -> Dict[str, Any]:
    """
    A class, a star-shaped amodal polygon ``xy`` (n, 2) of 20-60 vertices (KINS's polygon lengths)
    and, for `occluded_fraction` of the objects, an occluder's edge ``cut`` = (normal, offset): the
    visible part is where ``xy @ normal <= offset``.
    """
    cls = int(rng.choice(len(KINS_SHAPES), p=[f for f, _ in KINS_SHAPES]))
    rx = float(np.clip(rng.lognormal(np.log(0.022 * w), 0.6), 6, 0.15 * w))
    ry = min(rx * KINS_SHAPES[cls][1], 0.45 * h)
    cx, cy = rng.uniform(0, w), rng.uniform(0.3 * h, 0.9 * h)
    n = int(rng.integers(20, 61))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.8, 1.0, n)
    xs, ys = np.clip(cx + rx * r * np.cos(t), 0, w), np.clip(cy + ry * r * np.sin(t), 0, h)
    xy = np.stack([xs, ys], axis=1)
    cut = None
    if rng.uniform() < occluded_fraction:
        angle = rng.uniform(0, 2 * np.pi)
        normal = np.array([np.cos(angle), np.sin(angle)])
        reach = abs(rx * normal[0]) + abs(ry * normal[1])
        cut = (normal, float(normal @ (cx, cy) + rng.uniform(-0.6, 0.9) * reach))
    return {"cls": cls, "xy": xy, "cut": cut, "radius": max(rx, ry)}


def _masks_of(xy: np.ndarray, cut) -> List[Optional[List[float]]]:
    """amodal, visible and occluded polygons (flat; None: empty) of an object."""
    flat = xy.ravel().tolist()
    if cut is None:
        return [flat, flat, None]
    return [flat, clip_polygon(xy, *cut), clip_polygon(xy, -cut[0], -cut[1])]


def kins_size_data(num_images: int, h: int, w: int, objects: int, num_dets: int, seed: int):
    """
    A KINS-like test set and predictions on it.

    Ground truth: about `objects` objects per image, with amodal polygons, visible polygons (the
    amodal polygon cut by an occluder's edge, for 65 % of them) and ``occluded = derived_mask("-",
    amodal, visible)``, as the KINS loader writes them. Predictions: `num_dets` per image with K = 3
    masks: a noisy copy of 90 % of the objects (vertices, position and occluder edge jittered, 10 %
    with the wrong class), then random false positives; random scores. Their RLEs are encoded from
    polygons in one pycocotools call per image: full-image bitmasks of 100k detections would take
    minutes and gigabytes to build.

    Returns:
        (dataset dicts, multimask records, d2 records): per image, the records that
        ``MultiMaskCOCOEvaluator.process`` and ``COCOEvaluator.process`` store.
    """
    rng = np.random.default_rng(seed)
    empty = mask_util.encode(np.zeros((h, w, 1), dtype=np.uint8, order="F"))[0]
    empty["counts"] = empty["counts"].decode("utf-8")
    dicts, mm_records, d2_records = [], [], []
    for i in range(num_images):
        anns, dets = [], []  # dets: (class, amodal (n, 2), cut, score)
        for _ in range(max(1, rng.poisson(objects))):
            o = random_object(rng, h, w, occluded_fraction=0.65)
            amodal, visible, _ = _masks_of(o["xy"], o["cut"])
            visible = visible or amodal  # nothing left visible: call it unoccluded
            (x0, y0), (x1, y1) = o["xy"].min(0), o["xy"].max(0)
            multimask = {"amodal": [amodal], "visible": [visible]}
            multimask["occluded"] = derived_mask("-", [amodal], [visible])
            box = [float(x0), float(y0), float(x1), float(y1)]
            anns.append({"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": o["cls"]})
            anns[-1].update(segmentation=[amodal], multimask=multimask)
            if rng.uniform() < 0.9 and len(dets) < num_dets:
                r = o["radius"]
                xy = o["xy"] + rng.normal(0, 0.03 * r, o["xy"].shape) + rng.normal(0, 0.04 * r, 2)
                cut = o["cut"] and (o["cut"][0], o["cut"][1] + rng.normal(0, 0.05 * r))
                cls = o["cls"] if rng.uniform() > 0.1 else int(rng.integers(len(KINS_SHAPES)))
                dets.append((cls, xy, cut, rng.uniform(0.2, 1.0)))
        while len(dets) < num_dets:
            o = random_object(rng, h, w, occluded_fraction=0.5)
            dets.append((o["cls"], o["xy"], o["cut"], rng.uniform(0.0, 0.7)))
        dicts.append({"file_name": f"kins_size_{i}.png", "image_id": i, "height": h, "width": w})
        dicts[-1]["annotations"] = anns

        # the non-empty polygons, and for each det and mask its position there (-1: empty)
        polys, index = [], []
        for _, xy, cut, _ in dets:
            for p in _masks_of(xy, cut):
                index.append(len(polys) if p else -1)
                polys += [p] if p else []
        rles = mask_util.frPyObjects(polys, h, w)
        for r in rles:
            r["counts"] = r["counts"].decode("utf-8")
        rles = [rles[j] if j >= 0 else empty for j in index]
        mm, d2 = [], []
        for j, (cls, xy, _, score) in enumerate(dets):
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            rec = {"bbox": [x0, y0, x1 - x0, y1 - y0], "score": score, "category_id": cls}
            mm.append({**rec, "multimask": dict(zip(NAMES, rles[3 * j : 3 * j + 3]))})
            d2.append({**rec, "image_id": i, "segmentation": rles[3 * j]})
        mm_records.append({"image_id": i, "instances": mm})
        d2_records.append({"image_id": i, "instances": d2})
    return dicts, mm_records, d2_records


def _instances(records: Dict[str, Any], h: int, w: int, multimask: bool) -> Instances:
    """Model outputs (full-image masks) holding `records`' detections, for timing process()."""
    dets, names = records["instances"], NAMES if multimask else NAMES[:1]
    masks = mask_util.decode([r["multimask"][k] for r in dets for k in names]).transpose(2, 0, 1)
    masks = torch.from_numpy(masks.astype(bool)).reshape(len(dets), len(names), h, w)
    inst = Instances((h, w))
    boxes = torch.tensor([r["bbox"] for r in dets], dtype=torch.float32)
    inst.pred_boxes = Boxes(torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1))
    inst.scores = torch.tensor([r["score"] for r in dets], dtype=torch.float32)
    inst.pred_classes = torch.tensor([r["category_id"] for r in dets])
    inst.set("pred_multimasks" if multimask else "pred_masks", masks if multimask else masks[:, 0])
    return inst


def measure_eval(
    num_images: int = 1000,
    height: int = 604,
    width: int = 2000,
    dets_per_image: int = 100,
    seed: int = 0,
    objects_per_image: int = 12,
    eval_backend: str = "auto",
    process_images: int = 2,
    repeats: int = 1,
    warmup: int = 0,
    occlusion_thresholds: Optional[Sequence[float]] = None,
) -> Dict[str, Any]:
    """
    MultiMaskCOCOEvaluator.evaluate() (bbox, and every key of amodal, visible and occluded, on its
    `eval_backend`; `occlusion_thresholds` None: the config's default
    ``MULTIMASK.OCCLUSION_THRESHOLDS``) against one detectron2 COCOEvaluator segm pass with
    pycocotools (``use_fast_impl=False``) on the amodal masks, on ``kins_size_data``.

    Both evaluators get their stored prediction records directly (see ``kins_size_data``); process()
    is timed apart, on the first `process_images` images with full-image masks (median per image).
    Ground-truth preparation is timed once: MultiMaskCOCOEvaluator builds it in its first
    evaluate(); detectron2's COCOEvaluator loads its json file (written before, untimed: KINS ships
    one) in its constructor.

    Returns:
        a dict of the settings, ``backend``, times in seconds (``*_wall``, ``*_cpu``: medians of
        `repeats` after `warmup` rounds), ``ratio_wall`` / ``ratio_cpu`` (evaluate() over the
        detectron2 pass), ``process_ratio`` and the amodal segm AP of both (they must agree).
    """
    t0 = time.perf_counter()
    dicts, mm_records, d2_records = kins_size_data(
        num_images, height, width, objects_per_image, dets_per_image, seed
    )
    dataset = f"multimask_kins_size_{num_images}_{height}x{width}_{objects_per_image}_{seed}"
    if dataset not in DatasetCatalog.list():
        DatasetCatalog.register(dataset, lambda: dicts)
        MetadataCatalog.get(dataset).set(
            thing_classes=KINS_CLASSES, thing_dataset_id_to_contiguous_id=KINS_IDS, mask_names=NAMES
        )
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    with contextlib.redirect_stdout(io.StringIO()):
        twin = coco_json_twin(dataset, tmp)
    out = {"images": num_images, "size": f"{width}x{height}", "dets_per_image": dets_per_image}
    out["gt_objects"] = sum(len(d["annotations"]) for d in dicts)
    out["generate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        d2 = COCOEvaluator(twin, tasks=("segm",), distributed=False, use_fast_impl=False)
    out["d2_gt_s"] = time.perf_counter() - t0
    if occlusion_thresholds is None:
        cfg = get_cfg()
        add_multimask_config(cfg)
        occlusion_thresholds = cfg.MULTIMASK.OCCLUSION_THRESHOLDS
    mm = MultiMaskCOCOEvaluator(
        dataset,
        NAMES,
        distributed=False,
        eval_backend=eval_backend,
        occlusion_thresholds=list(occlusion_thresholds),
    )
    out["occlusion_thresholds"] = list(occlusion_thresholds)
    out["keys"] = len(mm.keys())
    out["backend"] = mm._backend.name
    t0 = time.perf_counter()
    mm._ground_truth()  # what its first evaluate() does before the passes
    out["mm_gt_s"] = time.perf_counter() - t0

    process_t = {"mm": [], "d2": []}
    mm.reset()
    d2.reset()
    for rec in mm_records[:process_images]:
        inputs = [{"image_id": rec["image_id"], "height": height, "width": width}]
        for key, ev in (("mm", mm), ("d2", d2)):
            outputs = [{"instances": _instances(rec, height, width, multimask=key == "mm")}]
            t0 = time.perf_counter()
            ev.process(inputs, outputs)
            process_t[key].append(time.perf_counter() - t0)
    for key in ("mm", "d2"):
        out[f"{key}_process_s_per_image"] = statistics.median(process_t[key])
    out["process_ratio"] = out["mm_process_s_per_image"] / out["d2_process_s_per_image"]

    # COCOEvaluator maps the class ids of its records in place: each run gets its own copy
    d2_runs = [d2_records] + [
        [{**r, "instances": list(map(dict, r["instances"]))} for r in d2_records]
        for _ in range(warmup + repeats - 1)
    ]
    results = {}

    def run_d2():
        d2._predictions = d2_runs.pop()
        with contextlib.redirect_stdout(io.StringIO()):
            results["d2"] = d2.evaluate()

    def run_mm():
        mm._predictions = mm_records  # evaluate() does not modify them
        with contextlib.redirect_stdout(io.StringIO()):
            results["mm"] = mm.evaluate()

    t = interleaved_medians({"mm": run_mm, "d2": run_d2}, repeats, warmup)
    for key in ("mm", "d2"):
        out[f"{key}_evaluate_wall"], out[f"{key}_evaluate_cpu"] = t[key]["wall"], t[key]["cpu"]
    out["ratio_wall"] = t["mm"]["wall"] / t["d2"]["wall"]
    out["ratio_cpu"] = t["mm"]["cpu"] / t["d2"]["cpu"]
    out["ap_amodal_mm"] = results["mm"]["segm_amodal"]["AP"]
    out["ap_segm_d2"] = results["d2"]["segm"]["AP"]
    return out


def print_scale(r: Dict[str, Any]) -> None:
    """Print ``measure_eval``'s result as a table: each cost of both evaluators, and their ratio."""
    print(
        f"{r['images']} images of {r['size']}, {r['gt_objects']} objects, {r['dets_per_image']} "
        f"detections per image with K = 3 masks; generated in {r['generate_s']:.1f} s\n"
        f"MultiMaskCOCOEvaluator: {r['keys']} result keys (occlusion thresholds "
        f"{r['occlusion_thresholds']})\n"
        f"segm AP of the amodal mask: COCOEvaluator {r['ap_segm_d2']:.2f}, "
        f"MultiMaskCOCOEvaluator {r['ap_amodal_mm']:.2f}",
        flush=True,
    )
    costs = [
        ("evaluate(), wall s (all passes / 1 pass)", "evaluate_wall"),
        ("evaluate(), CPU s", "evaluate_cpu"),
        ("ground truth, s (first evaluate() / constructor)", "gt_s"),
        ("process() per image, s (K = 3 masks / 1 mask)", "process_s_per_image"),
    ]
    rows = [[label, r[f"mm_{k}"], r[f"d2_{k}"], r[f"mm_{k}"] / r[f"d2_{k}"]] for label, k in costs]
    mm = f"MultiMaskCOCOEvaluator ({r['backend']})"
    print_table(["cost", mm, "COCOEvaluator (pycocotools)", "ratio"], rows)


def main():
    parser = benchmark_parser(__doc__, repeats=5, warmup=1, threads=1)
    parser.add_argument("--dataset", default="multimask_synthetic_val")
    parser.add_argument(
        "--detections", type=int, help="predictions per image (default 20; 100 with --images)"
    )
    parser.add_argument("--images", type=int, help="generate a KINS-size test set of this many")
    parser.add_argument("--height", type=int, default=604, help="with --images")
    parser.add_argument("--width", type=int, default=2000, help="with --images")
    parser.add_argument("--backend", default="auto", help="MultiMaskCOCOEvaluator's eval_backend")
    parser.add_argument(
        "--occlusion-thresholds",
        type=float,
        nargs="*",
        default=None,
        help="with --images: MULTIMASK.OCCLUSION_THRESHOLDS of the evaluation (default: the "
        "config's, 0.15 0.25 0.4; none: no _occ<t> keys)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    # COCOeval and both evaluators log a summary per run; keep the benchmark's output readable
    logging.disable(logging.INFO)
    if args.images:
        print("machine:", machine_info(), flush=True)
        size, dets = (args.images, args.height, args.width), args.detections or 100
        runs = {"repeats": args.repeats, "warmup": args.warmup}
        runs["occlusion_thresholds"] = args.occlusion_thresholds
        print_scale(measure_eval(*size, dets, eval_backend=args.backend, **runs))
        print("load at end:", machine_info()["load_avg_1_5_15"])
        return
    args.detections = args.detections or 20

    dicts = DatasetCatalog.get(args.dataset)
    inputs, outputs = make_outputs(dicts, args.detections)
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    with contextlib.redirect_stdout(io.StringIO()):
        twin = coco_json_twin(args.dataset, tmp)
        d2 = COCOEvaluator(twin, tasks=("segm",), distributed=False, output_dir=tmp)
    results = {}
    fns = {"d2_coco_segm": eval_fn(d2, inputs, outputs, sink=results.setdefault("d2", []))}
    for k in (1, 2, 3):
        ev = MultiMaskCOCOEvaluator(
            args.dataset, mask_names=NAMES[:k], distributed=False, tasks=("segm",)
        )
        fns[f"mm_k{k}"] = eval_fn(ev, inputs, outputs, k=k, sink=results.setdefault(k, []))
    info = machine_info()
    print("machine:", info, flush=True)
    print(f"{len(dicts)} images, {args.detections} predictions per image", flush=True)
    t = interleaved_medians(fns, args.repeats, args.warmup)

    d2_ap, mm_ap = results["d2"][-1]["segm"]["AP"], results[1][-1]["segm_amodal"]["AP"]
    print(
        f"segm AP of the amodal mask: COCOEvaluator {d2_ap:.2f}, MultiMaskCOCOEvaluator {mm_ap:.2f}"
    )
    rows = []
    for name, k in [("d2_coco_segm", 1)] + [(f"mm_k{k}", k) for k in (1, 2, 3)]:
        wall, cpu = t[name]["wall"], t[name]["cpu"]
        rows.append([name, k, wall, cpu, cpu / k, cpu / k / t["d2_coco_segm"]["cpu"]])
    print_table(
        ["evaluator", "masks", "wall s", "CPU s", "CPU s per mask", "per mask / d2 segm (CPU)"],
        rows,
        f"evaluation time, process + evaluate, segm only (medians of {args.repeats}):",
    )
    print("load at end:", machine_info()["load_avg_1_5_15"])


if __name__ == "__main__":
    main()
