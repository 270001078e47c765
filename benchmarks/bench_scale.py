#!/usr/bin/env python
"""
Real-scale costs of multimask against detectron2, side by side in one run (issue 12, item 8).

    python benchmarks/bench_scale.py                       # CPU, everything (R-50 steps: minutes)
    python benchmarks/bench_scale.py --quick --skip-train  # a smoke run in about a minute
    python benchmarks/bench_scale.py --device cuda         # on a GPU (tools/gpu_check.sh runs this)

Data: KINS-like (1242 x 375, 12 objects, amodal + visible polygons, format "kins_2019") and
COCOA-like (640 x 480, 8 regions, amodal polygons + visible RLE, format "cocoa") datasets written to
a temporary directory by benchmarks/scale_data.py and read through register_amodal_instances, as a
user's files would be. Both have the masks amodal, visible and occluded = amodal - visible (K = 3).

Measures (ours = multimask with K = 3; detectron2 = its own classes on the amodal polygons):
  mapper      CPU time per image of MultiMaskDatasetMapper vs detectron2's DatasetMapper, same
              augmentations (KINS: ResizeShortestEdge 604 / max 2000, i.e. 2000 x 604; COCOA: 800 /
              max 1333; RandomFlip), INPUT.MASK_FORMAT polygon, one thread, the same flips
  gt bytes    ground truth held per image: len(pickle.dumps(dataset_dict["instances"])) after the
              mapper (a tensor pickles its whole storage, so views of a larger buffer count in full)
  crop        gt_multimask[idx].crop_and_resize(boxes, 28) vs detectron2's
              gt_masks[idx].crop_and_resize(boxes, 28) (PolygonMasks, one mask): idx = 128 random
              instances of a mapped image, boxes = their gt boxes jittered by up to 10%; on --device
              (the masks and boxes are moved there first)
  eval        benchmarks/bench_eval.py's measure_eval on --eval-images images, if it has one:
              MultiMaskCOCOEvaluator.evaluate() with the config's default protocols (every key:
              bbox, per mask all instances, _occluded, _occ<t>, _occ<t>_strict, and
              segm_occluded_uoais) against one COCOEvaluator segm pass
  train       one R-50-FPN train step on 2 KINS-like images at 2000 x 604: multimask
              (MultiMaskRCNN, MultiMaskROIHeads, MultiMaskRCNNConvUpsampleHead, K = 3) vs Mask R-CNN
              (GeneralizedRCNN, StandardROIHeads, MaskRCNNConvUpsampleHead), the same config
              otherwise (configs/Base-MultiMask-RCNN-FPN.yaml, random init with BN, FREEZE_AT 0),
              the same weights (Mask R-CNN's state dict loaded into both), lr 0, so every round does
              the same work (checked: equal box losses); peak memory: CUDA max_memory_allocated, or
              on a CPU the peak resident set of each model in its own subprocess (one step)
Timings are medians over interleaved rounds (bench_utils.interleaved_medians); the mapper and crop
ratios use CPU time (one thread), the train ratio wall time. The last table lists every ratio with
its target.
"""

import argparse
import inspect
import json
import os
import pickle
import random
import statistics
import sys
import tempfile
import traceback
import uuid
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (  # noqa: E402
    as_mask_rcnn,
    benchmark_parser,
    interleaved_medians,
    machine_info,
    multimask_cfg,
    peak_rss_mib,
    peak_rss_of,
    print_table,
    rss_mib,
    set_threads,
)
from benchmarks.scale_data import KINS_CATEGORIES, make_cocoa_like, make_kins_like  # noqa: E402
from multimask.data import MultiMaskDatasetMapper, register_amodal_instances  # noqa: E402

MASK_NAMES = ["amodal", "visible", "occluded"]
# dataset -> (format, generator, INPUT.MIN_SIZE_TRAIN, INPUT.MAX_SIZE_TRAIN)
DATASETS = {
    "kins": ("kins_2019", make_kins_like, 604, 2000),
    "cocoa": ("cocoa", make_cocoa_like, 800, 1333),
}
TARGETS = {"mapper": 1.25, "gt_mib": 2.0, "crop": 1.5, "eval": 2.0, "train": 1.05}


def base_cfg(dataset: str, name: str, device: str = "cpu"):
    """The multimask config at the dataset's training scale, K = 3, random init with BN."""
    _, _, min_size, max_size = DATASETS[dataset]
    cfg = multimask_cfg(device)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = max_size
    cfg.INPUT.MASK_FORMAT = "polygon"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = len(MASK_NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = list(MASK_NAMES)
    return cfg


def register(dataset: str, json_file: str, image_root: str) -> str:
    name = f"bench_scale_{dataset}_{uuid.uuid4().hex[:8]}"
    register_amodal_instances(name, DATASETS[dataset][0], json_file, image_root)
    return name


def mappers(dataset: str, name: str) -> Dict[str, Callable]:
    cfg = base_cfg(dataset, name)
    return {
        "detectron2": DatasetMapper(as_mask_rcnn(cfg), is_train=True),
        "ours_k3": MultiMaskDatasetMapper(cfg, is_train=True),
    }


def _seed() -> None:
    # RandomFlip draws from numpy's global generator: the same flips in every pass and mapper
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)


def map_all(mapper: Callable, dicts: List[Dict]) -> List[Dict]:
    _seed()
    return [mapper(d) for d in dicts]


def map_pass(mapper: Callable, dicts: List[Dict]) -> Callable[[], None]:
    """One timed pass; each output is dropped at once, as a data loader hands it on."""

    def run():
        _seed()
        for d in dicts:
            mapper(d)

    return run


def mapper_section(dataset: str, dicts: List[Dict], maps: Dict[str, Callable], args) -> Dict:
    """CPU time per image of each mapper, and ground-truth bytes per image."""
    gt_bytes: Dict[str, List[int]] = {n: [] for n in maps}
    kept: Dict[str, List[Dict]] = {n: [] for n in maps}  # the first --keep-mapped: crop, train
    for n, m in maps.items():
        _seed()
        for i, d in enumerate(dicts):
            out = m(d)
            gt_bytes[n].append(len(pickle.dumps(out["instances"], pickle.HIGHEST_PROTOCOL)))
            if i < args.keep_mapped:
                kept[n].append(out)
    for a, b in zip(kept["detectron2"], kept["ours_k3"]):
        if len(a["instances"]) != len(b["instances"]) or not torch.equal(a["image"], b["image"]):
            raise RuntimeError(f"{dataset}: the mappers disagree on the image or instances")
    t = interleaved_medians(
        {n: map_pass(m, dicts) for n, m in maps.items()}, args.repeats, args.warmup
    )
    out = {"images": len(dicts), "size": tuple(kept["ours_k3"][0]["instances"].image_size)}
    for n in maps:
        out[n] = {
            "cpu_ms": 1e3 * t[n]["cpu"] / len(dicts),
            "wall_ms": 1e3 * t[n]["wall"] / len(dicts),
            "gt_mib_mean": statistics.mean(gt_bytes[n]) / 2**20,
            "gt_mib_max": max(gt_bytes[n]) / 2**20,
        }
    out["ratio_cpu"] = _median_ratio(t, "ours_k3", "detectron2", "cpu")
    out["ratio_wall"] = _median_ratio(t, "ours_k3", "detectron2", "wall")
    return out, kept


def _median_ratio(t: Dict, a: str, b: str, clock: str) -> float:
    """Median over rounds of the per-round ratio (the two ran back to back, under the same load)."""
    return statistics.median(x / y for x, y in zip(t[a][f"{clock}_times"], t[b][f"{clock}_times"]))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def crop_section(dataset: str, mapped: Dict[str, List[Dict]], args) -> Dict:
    """crop_and_resize of 128 ROIs per image: K = 3 of ours vs detectron2's PolygonMasks."""
    g = torch.Generator().manual_seed(0)
    ours, d2 = [], []
    for a, b in zip(mapped["ours_k3"], mapped["detectron2"]):
        inst, inst_d2 = a["instances"], b["instances"]
        n = len(inst)
        if n == 0:
            continue
        idx = torch.randint(0, n, (args.rois,), generator=g)
        boxes = inst.gt_boxes.tensor[idx]
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + wh * (torch.rand(boxes.shape, generator=g) * 0.2 - 0.1)
        boxes = boxes.to(args.device)
        ours.append((inst.gt_multimask.to(args.device), idx.to(args.device), boxes))
        d2.append((inst_d2.gt_masks, idx, boxes))

    def run(items):
        def fn():
            out = [m[i].crop_and_resize(bx, 28) for m, i, bx in items]
            _sync(args.device)
            return out

        return fn

    fns = {"detectron2": run(d2), "ours_k3": run(ours)}
    # the same work: our amodal crops are detectron2's (up to rasterisation rules)
    a, b = torch.cat(fns["ours_k3"]()), torch.cat(fns["detectron2"]())
    if a.shape[:2] != (b.shape[0], len(MASK_NAMES)) or a.shape[2:] != b.shape[1:]:
        raise RuntimeError(f"{dataset}: crop shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    agreement = (a[:, 0].bool() == b.bool()).float().mean().item()
    t = interleaved_medians(fns, args.repeats, args.warmup)
    per = len(ours)
    return {
        "images": per,
        "rois": args.rois,
        "amodal_agreement": agreement,
        **{n: {"cpu_ms": 1e3 * t[n]["cpu"] / per, "wall_ms": 1e3 * t[n]["wall"] / per}
           for n in fns},
        "ratio_cpu": _median_ratio(t, "ours_k3", "detectron2", "cpu"),
        "ratio_wall": _median_ratio(t, "ours_k3", "detectron2", "wall"),
    }


def eval_section(args) -> Dict:
    """benchmarks/bench_eval.py's measure_eval, if it exists (it is optional to this script)."""
    try:
        from benchmarks.bench_eval import measure_eval
    except Exception as e:  # absent, or bench_eval cannot import: report, do not fail the rest
        return {"skipped": f"bench_eval.measure_eval unavailable ({type(e).__name__}: {e})"}
    params = inspect.signature(measure_eval).parameters
    kwargs = {}
    for key in ("num_images", "images", "eval_images"):
        if key in params:
            kwargs[key] = args.eval_images
            break
    result = measure_eval(**kwargs)
    return result if isinstance(result, dict) else {"result": result}


def build_train_models(name: str, args) -> Dict[str, torch.nn.Module]:
    """Mask R-CNN and ours (K = 3), the same seed, Mask R-CNN's weights loaded into both."""
    from benchmarks.bench_model import load_reference

    cfg = base_cfg("kins", name, args.device)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(KINS_CATEGORIES)
    models = {}
    for variant, c in (("detectron2", as_mask_rcnn(cfg)), ("ours_k3", _with_head_opts(cfg, args))):
        torch.manual_seed(0)
        models[variant] = build_model(c).train()
    load_reference(models, models["detectron2"])
    return models


def _with_head_opts(cfg, args):
    """The multimask config with --head-opts (e.g. the Amodal/ configs' head) merged in."""
    if not args.head_opts:
        return cfg
    cfg = cfg.clone()
    cfg.merge_from_list(list(args.head_opts))
    return cfg


def train_step_fn(model: torch.nn.Module, inputs: List[Dict], device: str, seed: int = 1):
    """Forward + backward + an SGD step with lr 0: every round does the same work."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)

    def step():
        torch.manual_seed(seed)  # the same sampled proposals in every round and model
        with EventStorage(0):
            losses = model(inputs)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        _sync(device)
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def train_inputs(mapped: Dict[str, List[Dict]], batch: int) -> Dict[str, List[Dict]]:
    return {n: outs[:batch] for n, outs in mapped.items()}


def train_section(name: str, mapped: Dict[str, List[Dict]], args) -> Dict:
    set_threads(args.train_threads)
    models = build_train_models(name, args)
    inputs = train_inputs(mapped, args.train_batch)
    fns = {v: train_step_fn(m, inputs[v], args.device) for v, m in models.items()}
    # the same work: the same proposals give the same box losses
    losses = {v: fn() for v, fn in fns.items()}
    box = {v: (lo["loss_cls"], lo["loss_box_reg"]) for v, lo in losses.items()}
    if not np.allclose(box["detectron2"], box["ours_k3"], rtol=1e-3):
        msg = f"the models do different box work: {box}"
        if not args.device.startswith("cuda"):  # CUDA kernels may differ in the last bits
            raise RuntimeError(msg)
        print("warning:", msg, file=sys.stderr)
    for v, lo in losses.items():
        print(f"train step losses, {v}: " + ", ".join(f"{k}={x:.4f}" for k, x in lo.items()))
    t = interleaved_medians(fns, args.train_iters, 1)
    out = {v: {"wall_s": t[v]["wall"], "cpu_s": t[v]["cpu"]} for v in fns}
    out["ratio_wall"] = _median_ratio(t, "ours_k3", "detectron2", "wall")
    out["ratio_cpu"] = _median_ratio(t, "ours_k3", "detectron2", "cpu")
    if args.device.startswith("cuda"):
        for v, fn in fns.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            peak = torch.cuda.max_memory_allocated()
            out[v].update(peak_mib=peak / 2**20, peak_growth_mib=(peak - base) / 2**20)
        out["memory"] = "CUDA max_memory_allocated"
    del models, fns
    return out


def memory_worker(args) -> None:
    """Subprocess body on a CPU: one model, one train step, print its peak resident set as JSON."""
    set_threads(args.train_threads)
    name = register("kins", args.kins_json, args.kins_root)
    dicts = DatasetCatalog.get(name)[: args.train_batch]
    maps = mappers("kins", name)
    inputs = map_all(maps[args.memory_worker], dicts)
    torch.manual_seed(0)
    cfg = base_cfg("kins", name, args.device)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(KINS_CATEGORIES)
    ours = _with_head_opts(cfg, args)
    model = build_model(as_mask_rcnn(cfg) if args.memory_worker == "detectron2" else ours).train()
    fn = train_step_fn(model, inputs, args.device)
    base = rss_mib()
    fn()
    print(json.dumps({"baseline_mib": base, "peak_mib": peak_rss_mib()}))


def cpu_memory(args, kins_json: str, kins_root: str, out: Dict) -> None:
    script = os.path.abspath(__file__)
    for v in ("detectron2", "ours_k3"):
        worker = [
            "--memory-worker", v, "--kins-json", kins_json, "--kins-root", kins_root,
            "--train-threads", str(args.train_threads), "--train-batch", str(args.train_batch),
            "--device", args.device,
        ]  # fmt: skip
        if args.head_opts:
            worker += ["--head-opts", *args.head_opts]
        r = peak_rss_of(script, worker)
        out[v].update(peak_mib=r["peak_mib"], peak_growth_mib=r["peak_mib"] - r["baseline_mib"])
    out["memory"] = "CPU: peak RSS (VmHWM) of a subprocess per model, 1 step"


def _status(value: Optional[float], target: float) -> str:
    return "n/a" if value is None else ("PASS" if value <= target else "FAIL")


def summary_rows(results: Dict) -> List[List[Any]]:
    rows = []
    for ds in DATASETS:
        m = results.get(f"mapper_{ds}")
        if isinstance(m, dict) and "ratio_cpu" in m:
            t = TARGETS["mapper"]
            rows.append(
                [f"{ds}: mapper CPU / image, ours K=3 / detectron2", m["ours_k3"]["cpu_ms"],
                 m["detectron2"]["cpu_ms"], m["ratio_cpu"], f"<= {t}", _status(m["ratio_cpu"], t)]
            )  # fmt: skip
            t = TARGETS["gt_mib"]
            ours = m["ours_k3"]["gt_mib_mean"]
            rows.append(
                [f"{ds}: ground truth MiB / image (mean; max {m['ours_k3']['gt_mib_max']:.2f})",
                 ours, m["detectron2"]["gt_mib_mean"], ours / m["detectron2"]["gt_mib_mean"],
                 f"ours <= {t} MiB", _status(ours, t)]
            )  # fmt: skip
        c = results.get(f"crop_{ds}")
        if isinstance(c, dict) and "ratio_cpu" in c:
            t = TARGETS["crop"]
            rows.append(
                [f"{ds}: crop_and_resize {c['rois']} ROIs ms, ours K=3 / detectron2 1 mask",
                 c["ours_k3"]["cpu_ms"], c["detectron2"]["cpu_ms"], c["ratio_cpu"], f"<= {t}",
                 _status(c["ratio_cpu"], t)]
            )  # fmt: skip
    e = results.get("eval", {})
    # measure_eval's ratio_wall (evaluate() over detectron2's COCOEvaluator pass), else any ratio
    ratios = {k: v for k, v in e.items() if "ratio" in k and isinstance(v, (int, float))}
    ratio = ratios.get("ratio_wall", next(iter(ratios.values()), None))
    rows.append(
        ["eval time, ours / detectron2 COCOEvaluator", "", "",
         "skipped" if ratio is None else ratio, f"<= {TARGETS['eval']}",
         _status(ratio, TARGETS["eval"])]
    )  # fmt: skip
    tr = results.get("train")
    if isinstance(tr, dict) and "ratio_wall" in tr:
        t = TARGETS["train"]
        rows.append(
            ["train step s (wall), R-50-FPN 2000x604, ours K=3 / Mask R-CNN",
             tr["ours_k3"]["wall_s"], tr["detectron2"]["wall_s"], tr["ratio_wall"], f"<= {t}",
             _status(tr["ratio_wall"], t)]
        )  # fmt: skip
        if "peak_mib" in tr["ours_k3"]:
            rows.append(
                [f"train peak MiB ({tr['memory']})", tr["ours_k3"]["peak_mib"],
                 tr["detectron2"]["peak_mib"],
                 tr["ours_k3"]["peak_mib"] / tr["detectron2"]["peak_mib"], "", ""]
            )  # fmt: skip
    else:
        rows.append(["train step, ours K=3 / Mask R-CNN", "", "", str(tr or "skipped"), "<= 1.05",
                     "n/a"])  # fmt: skip
    for k, v in results.items():
        if isinstance(v, dict) and "error" in v:
            rows.append([f"{k}: ERROR", "", "", v["error"][:80], "", "FAIL"])
    return rows


def run_section(results: Dict, key: str, fn: Callable[[], Any]) -> Any:
    """Run one measure; an exception is recorded (and printed) so the other measures still run."""
    try:
        value = fn()
    except Exception as e:
        traceback.print_exc()
        results[key] = {"error": f"{type(e).__name__}: {e}"}
        return None
    if isinstance(value, tuple):
        results[key] = value[0]
        return value[1]
    results[key] = value
    return value


def main():
    parser = benchmark_parser(__doc__, repeats=5, warmup=1, threads=1)
    parser.add_argument("--quick", action="store_true", help="few images and rounds: a smoke run")
    parser.add_argument("--kins-images", type=int, default=40, help="KINS-like images per pass")
    parser.add_argument("--cocoa-images", type=int, default=40, help="COCOA-like images per pass")
    parser.add_argument(
        "--keep-mapped", type=int, default=8, help="mapped images kept for the crop and train parts"
    )
    parser.add_argument("--rois", type=int, default=128, help="ROIs per crop_and_resize call")
    parser.add_argument("--eval-images", type=int, default=1000, help="images of measure_eval")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: crop and train run there")
    parser.add_argument("--train-iters", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads when training")
    parser.add_argument("--train-batch", type=int, default=2, help="images per train step")
    parser.add_argument("--skip-train", action="store_true", help="no R-50 train steps")
    parser.add_argument("--skip-eval", action="store_true", help="no evaluation measure")
    parser.add_argument("--data-dir", help="write the generated data here (default: a temp dir)")
    parser.add_argument("--json", help="write all numbers to this file")
    parser.add_argument(
        "--head-opts",
        nargs="+",
        default=[],
        help="config overrides of multimask's model in the train step (last), e.g. the Amodal/ "
        "configs' head: --head-opts MODEL.ROI_MULTI_MASK_HEAD.SHARED_CONVS 2 "
        "MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION \"['amodal','visible']\"",
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--kins-json", help=argparse.SUPPRESS)
    parser.add_argument("--kins-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(args)
    if args.quick:
        args.kins_images, args.cocoa_images = min(args.kins_images, 6), min(args.cocoa_images, 6)
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
        args.eval_images = min(args.eval_images, 50)
        args.train_iters = min(args.train_iters, 1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    set_threads(args.threads)
    results: Dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    print("machine:", json.dumps(results["machine"]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or tmp
        mapped_kins, kins_files = None, None
        for ds, num in (("kins", args.kins_images), ("cocoa", args.cocoa_images)):
            set_threads(args.threads)
            files = DATASETS[ds][1](os.path.join(root, f"{ds}_like"), num, seed=0)
            name = register(ds, *files)
            dicts = DatasetCatalog.get(name)
            num_obj = sum(len(d["annotations"]) for d in dicts)
            print(f"{ds}-like: {len(dicts)} images, {num_obj} objects, under {root}", flush=True)
            maps = mappers(ds, name)
            mapped = run_section(
                results, f"mapper_{ds}", lambda: mapper_section(ds, dicts, maps, args)
            )
            if mapped is not None:
                run_section(results, f"crop_{ds}", lambda: crop_section(ds, mapped, args))
            if ds == "kins":
                mapped_kins, kins_files, kins_name = mapped, files, name
            print(json.dumps({k: results.get(k) for k in (f"mapper_{ds}", f"crop_{ds}")}))

        if args.skip_eval:
            results["eval"] = {"skipped": "--skip-eval"}
        else:
            run_section(results, "eval", lambda: eval_section(args))
        print("eval:", json.dumps(results["eval"], default=str), flush=True)

        if args.skip_train:
            results["train"] = "skipped (--skip-train)"
        elif mapped_kins is None:
            results["train"] = "skipped (the KINS-like mapping failed)"
        else:
            tr = run_section(results, "train", lambda: train_section(kins_name, mapped_kins, args))
            if tr is not None and not args.device.startswith("cuda"):
                run_section(results, "train_memory", lambda: cpu_memory(args, *kins_files, tr))
            print("train:", json.dumps(results["train"], default=str), flush=True)

    headers = ["measure", "ours", "detectron2", "ratio", "target", "status"]
    results["table"] = print_table(headers, summary_rows(results), "summary:")
    results["machine_end"] = machine_info()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    failed = [r for r in summary_rows(results) if r[-1] == "FAIL"]
    print(f"{len(failed)} of the measures miss their target or failed")


if __name__ == "__main__":
    main()
