#!/usr/bin/env python
"""
Evaluation cost: MultiMaskCOCOEvaluator over K masks against one detectron2 COCOEvaluator segm run
(issue 6, item 5), side by side in one run.

    python benchmarks/bench_eval.py                   # synthetic val set (60 images), 20 detections
    python benchmarks/bench_eval.py --detections 100

Both evaluators get the same outputs: per image, --detections predictions made from the ground truth
(each object's amodal and visible masks, shifted by a few pixels, with a random score) padded with
random false positives, as (N, K, H, W) ``pred_multimasks`` and the amodal one as ``pred_masks``.
One timed unit is ``reset(); process(...) for every image; evaluate()``, segm only
(``tasks=("segm",)``). Ground-truth conversion happens once, before timing, for both: detectron2's
COCOEvaluator converts the dataset in its constructor, MultiMaskCOCOEvaluator in its first
``evaluate()`` (a warm-up round). MultiMaskCOCOEvaluator runs two COCOeval per mask name (all
instances, and the occluded subset).
"""

import contextlib
import io
import logging
import os
import sys
import tempfile

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (  # noqa: E402
    benchmark_parser,
    interleaved_medians,
    machine_info,
    print_table,
    set_threads,
)
from multimask import MultiMaskCOCOEvaluator  # noqa: E402
from multimask.structures import segmentation_to_bitmask  # noqa: E402

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


def main():
    parser = benchmark_parser(__doc__, repeats=5, warmup=1, threads=1)
    parser.add_argument("--dataset", default="multimask_synthetic_val")
    parser.add_argument("--detections", type=int, default=20, help="predictions per image")
    args = parser.parse_args()
    set_threads(args.threads)
    # COCOeval and both evaluators log a summary per run; keep the benchmark's output readable
    logging.disable(logging.INFO)

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
