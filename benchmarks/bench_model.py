#!/usr/bin/env python
"""
Model cost of multimask against detectron2's Mask R-CNN, side by side in one run (issue 6, 1-3).

    python benchmarks/bench_model.py --repeats 9 --threads 1 --json out.json   # BENCHMARKS.md
    python benchmarks/bench_model.py --only train --repeats 3 --warmup 1       # a quick look
    python benchmarks/bench_model.py --profile mm_k2 --phase infer             # where time goes

Variants (R-50-FPN at detectron2's default dims, 80 classes, the same 2 images of 256 px with the
same 16 objects each):
  faster_rcnn    GeneralizedRCNN + StandardROIHeads, MASK_ON False (gives the mask branch's share)
  mask_rcnn      GeneralizedRCNN + StandardROIHeads + MaskRCNNConvUpsampleHead (4 convs, 256 ch)
  mm_k{1,2,4,8}  MultiMaskRCNN, K masks, shared trunk (SHARED_CONVS -1, the default)
  mm_k2_towers   MultiMaskRCNN, K = 2, a separate tower per mask (SHARED_CONVS 0, ORCNN-style)
  mm_k8_allclass mm_k8 computing every class's mask logits (the head's layers() path)

Same work for every variant: all models are built with the same seed, their FrozenBN statistics are
calibrated on the images (a random R-50 otherwise detects nothing), and they receive Mask R-CNN's
state dict (multimask's head loads a single-mask head into every branch), so backbone, RPN, box head
and mask weights are identical. A train step re-seeds torch before the forward, so ROI sampling
picks the same proposals; inference keeps every detection (score threshold 0) up to --detections
per image.
The run checks that all variants train on the same foreground ROIs with the same box losses, and
return the same boxes and primary masks. A train step is forward + backward + an SGD step with lr 0
(the weights, hence the work, stay the same in every round). Inference time includes pasting every
predicted mask (K per detection) to image size.

Peak memory: each variant runs 3 steps in its own subprocess; reported are VmHWM (the process's
peak resident set) and its growth over the resident set once the model and inputs are built.
"""

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

import numpy as np
import torch

from detectron2.layers import FrozenBatchNorm2d as FrozenBN
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
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
from multimask import MultiMasks  # noqa: E402

MASK_NAMES = ["amodal", "visible", "occluded", "mask3", "mask4", "mask5", "mask6", "mask7"]
VARIANTS = {
    "faster_rcnn": {"d2": True, "mask": False},
    "mask_rcnn": {"d2": True, "mask": True},
    "mm_k1": {"k": 1, "shared": -1},
    "mm_k2": {"k": 2, "shared": -1},
    "mm_k4": {"k": 4, "shared": -1},
    "mm_k8": {"k": 8, "shared": -1},
    "mm_k2_towers": {"k": 2, "shared": 0},
    # the head's full layers() path, all C classes per mask (what forward ran before it computed
    # only each ROI's class): the saving measured in the same run
    "mm_k8_allclass": {"k": 8, "shared": -1, "all_classes": True},
}


def build_cfg(variant: str, args):
    spec = VARIANTS[variant]
    cfg = multimask_cfg("cpu")
    cfg.MODEL.RESNETS.DEPTH = args.depth
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = args.num_classes
    # keep every detection, so each variant pastes the same number of masks
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = args.detections
    if spec.get("d2"):
        cfg = as_mask_rcnn(cfg, mask_on=spec["mask"])
    else:
        head = cfg.MODEL.ROI_MULTI_MASK_HEAD
        head.NUM_MASK = spec["k"]
        head.MASK_NAMES = MASK_NAMES[: spec["k"]]
        head.SHARED_CONVS = spec["shared"]
    return cfg


def build(variant: str, args, data: List[Dict]) -> torch.nn.Module:
    """The variant's model, seeded, with FrozenBN statistics calibrated on the benchmark images."""
    torch.manual_seed(0)
    model = build_model(build_cfg(variant, args))
    calibrate_frozen_bn(model, infer_inputs(data))
    if VARIANTS[variant].get("all_classes"):
        model.roi_heads.mask_head.class_selective = False
    return model


def make_data(args) -> List[Dict]:
    """Per image: a uint8 image (3, S, S), boxes, classes and 8 nested masks (N, 8, S, S) bool."""
    rng = np.random.default_rng(0)
    s, data = args.size, []
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    for _ in range(args.images):
        wh = rng.uniform(32, s * 0.6, (args.instances, 2))
        xy = rng.uniform(0, 1, (args.instances, 2)) * (s - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        masks = np.zeros((args.instances, len(MASK_NAMES), s, s), dtype=bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            ellipse = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            masks[i, 0] = ellipse  # "amodal"
            masks[i, 1] = ellipse & (xx < cx + rx * rng.uniform(-0.3, 0.7))  # "visible"
            masks[i, 2] = masks[i, 0] & ~masks[i, 1]  # "occluded"
            for k in range(3, len(MASK_NAMES)):
                masks[i, k] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1 - 0.1 * k
        data.append(
            {
                "image": torch.from_numpy(rng.integers(0, 256, (3, s, s), dtype=np.uint8)),
                "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                "classes": torch.as_tensor(rng.integers(0, args.num_classes, args.instances)),
                "masks": torch.from_numpy(masks),
            }
        )
    return data


def train_inputs(variant: str, data: List[Dict]) -> List[Dict]:
    """What the mappers give: gt_masks (the primary mask), and gt_multimask for multimask."""
    spec, out = VARIANTS[variant], []
    for d in data:
        s = d["image"].shape[1:]
        inst = Instances(tuple(s))
        inst.gt_boxes = Boxes(d["boxes"].clone())
        inst.gt_classes = d["classes"].clone()
        if spec.get("mask", True):
            inst.gt_masks = BitMasks(d["masks"][:, 0].clone())
        if "k" in spec:
            k = spec["k"]
            inst.gt_multimask = MultiMasks(d["masks"][:, :k].clone(), MASK_NAMES[:k])
        out.append({"image": d["image"], "instances": inst, "height": s[0], "width": s[1]})
    return out


def infer_inputs(data: List[Dict]) -> List[Dict]:
    s = data[0]["image"].shape[1:]
    return [{"image": d["image"], "height": s[0], "width": s[1]} for d in data]


def train_step_fn(model: torch.nn.Module, inputs: List[Dict], seed: int = 1):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)

    def step():
        torch.manual_seed(seed)  # same sampled proposals in every round and every variant
        with EventStorage(0):
            losses = model(inputs)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        return losses

    return step


def infer_fn(model: torch.nn.Module, inputs: List[Dict]):
    def run():
        with torch.no_grad():
            return model(inputs)

    return run


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, inputs: List[Dict]) -> None:
    """
    Set every FrozenBatchNorm2d's statistics to those of its input on the benchmark images.

    A randomly initialised R-50 with identity FrozenBN blows activations up through 50 layers, so
    the box scores underflow to 0 and almost nothing is detected; with calibrated statistics the
    network behaves like a trained one in scale, and every variant keeps --detections boxes per
    image. The hooks run before each layer, in forward order, so one pass calibrates the backbone.
    """

    def pre_hook(mod, inp):
        x = inp[0]
        mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [
        m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, FrozenBN)
    ]
    was_training = model.training
    model.eval()
    model.backbone(model.preprocess_image(inputs).tensor)
    model.train(was_training)
    for h in hooks:
        h.remove()


# multi-mask head layers that a single-mask (Mask R-CNN) checkpoint has nothing for
_OWN_LAYERS = (".fc_fusion.", ".maskiou_head.")


def load_reference(models: Dict[str, torch.nn.Module], ref: torch.nn.Module) -> None:
    """Give every model the reference's weights; check that only mask-head keys can differ."""
    ref_sd = ref.state_dict()
    for name, m in models.items():
        if m is ref:
            continue
        res = m.load_state_dict(ref_sd, strict=False)
        bad = [
            k for k in list(res.missing_keys) + list(res.unexpected_keys) if "mask_head" not in k
        ]
        if bad:
            raise RuntimeError(f"{name}: weights not shared with mask_rcnn: {bad[:5]}")
        # layers Mask R-CNN's head has no counterpart of keep their (seeded) initialisation
        missing = [k for k in res.missing_keys if not any(p in k for p in _OWN_LAYERS)]
        if missing:
            raise RuntimeError(f"{name}: mask head keys not initialised: {missing[:5]}")


def check_same_work(models, train_fns, infer_fns) -> Dict[str, int]:
    """
    One pass per variant: same foreground ROIs and box losses in training, same boxes and primary
    masks in inference. Returns the foreground ROI count and detections of the batch.
    """
    fg, box_losses = {}, {}
    for name, m in models.items():
        rec = []
        hook = None
        if hasattr(m.roi_heads, "mask_head"):
            hook = m.roi_heads.mask_head.register_forward_hook(
                lambda mod, i, o: rec.append(len(i[0]))
            )
        m.train()
        losses = train_fns[name]()
        if hook is not None:
            hook.remove()
            fg[name] = rec[0]
        if not all(torch.isfinite(v) for v in losses.values()):
            raise RuntimeError(f"{name}: non-finite losses {losses}")
        box_losses[name] = (losses["loss_cls"].item(), losses["loss_box_reg"].item())
    if len(set(fg.values())) != 1 or len(set(box_losses.values())) != 1:
        raise RuntimeError(f"variants do different training work: fg={fg}, box losses={box_losses}")
    outs = {}
    for name, m in models.items():
        m.eval()
        outs[name] = [o["instances"] for o in infer_fns[name]()]
    ref = outs["mask_rcnn"] if "mask_rcnn" in outs else next(iter(outs.values()))
    for name, res in outs.items():
        for a, b in zip(res, ref):
            if not torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor):
                raise RuntimeError(f"{name}: detections differ from the reference")
            if a.has("pred_masks") and b.has("pred_masks"):
                # multimask applies only the class's predictor row (a matrix product instead of a
                # 1x1 conv): probabilities agree to ~1e-7, so a pixel at 0.5 may rarely flip
                differ = (a.pred_masks != b.pred_masks).float().mean().item()
                if differ > 1e-5:
                    raise RuntimeError(
                        f"{name}: {differ:.2%} of mask pixels differ from mask_rcnn's"
                    )
            if a.has("pred_multimasks"):
                k = VARIANTS[name]["k"]
                if (
                    a.pred_multimasks.shape[:2] != (len(a), k)
                    or a.pred_multimasks.shape[2:] != a.image_size
                ):
                    raise RuntimeError(
                        f"{name}: pred_multimasks of shape {a.pred_multimasks.shape}"
                    )
    return {"fg_rois": next(iter(fg.values()), 0), "detections": sum(len(r) for r in ref)}


def memory_worker(args) -> None:
    """Subprocess body of --memory: build one variant, run a few steps, print peak RSS as JSON."""
    set_threads(args.threads)
    data = make_data(args)
    model = build(args.memory_worker, args, data)
    if args.phase == "train":
        fn = train_step_fn(model.train(), train_inputs(args.memory_worker, data))
    else:
        fn = infer_fn(model.eval(), infer_inputs(data))
    base, base_peak = rss_mib(), peak_rss_mib()
    for _ in range(3):
        fn()
    peak = peak_rss_mib()
    print(json.dumps({"baseline_mib": base, "build_peak_mib": base_peak, "peak_mib": peak}))


def profile(args, data) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    set_threads(args.threads)
    model = build(args.profile, args, data)
    if args.phase == "train":
        fn = train_step_fn(model.train(), train_inputs(args.profile, data))
    else:
        fn = infer_fn(model.eval(), infer_inputs(data))
    fn()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(args.repeats):
            fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def ratio_rows(t: Dict[str, Dict], phase: str) -> List[List]:
    """
    Ratios with their targets (issue 6), only for the variants that were run.

    Each ratio is computed within every round (the variants of a round run back to back, under about
    the same load) and the median over rounds is reported, for both clocks. The separate-tower
    target compares with Mask R-CNN plus one more mask branch, where the mask branch is what Mask
    R-CNN costs over Faster R-CNN in the same round (pooler, head and loss, or head and pasting).
    """
    rows = []

    def paired(fn, needed):
        if not set(needed) <= set(t):
            return None
        out = []
        for clock in ("wall", "cpu"):
            per_round = zip(*[t[v][f"{clock}_times"] for v in needed])
            out.append(statistics.median(fn(*r) for r in per_round))
        return out

    def add(what, fn, needed, target=""):
        values = paired(fn, needed)
        if values is not None:
            rows.append([phase, what, *values, target])

    target = "<= 1.05" if phase == "train" else "<= 1.15"
    add("mm_k2 / mask_rcnn", lambda a, b: a / b, ["mm_k2", "mask_rcnn"], target)
    add("mm_k1 / mask_rcnn", lambda a, b: a / b, ["mm_k1", "mask_rcnn"])
    add("mm_k2_towers / mask_rcnn", lambda a, b: a / b, ["mm_k2_towers", "mask_rcnn"])
    add("mask branch share of mask_rcnn", lambda f, m: 1 - f / m, ["faster_rcnn", "mask_rcnn"])
    add(
        "mm_k2_towers / (mask_rcnn + 1 extra mask branch)",
        lambda tw, m, f: tw / (2 * m - f),
        ["mm_k2_towers", "mask_rcnn", "faster_rcnn"],
        "<= 1.05",
    )
    for k in (2, 4, 8):
        target = "<= 1.15" if k == 8 and phase == "train" else ""
        add(f"mm_k{k} / mm_k1", lambda a, b: a / b, [f"mm_k{k}", "mm_k1"], target)
    add("mm_k8_allclass / mm_k1", lambda a, b: a / b, ["mm_k8_allclass", "mm_k1"])
    add("mm_k8 / mm_k8_allclass", lambda a, b: a / b, ["mm_k8", "mm_k8_allclass"])
    return rows


def time_phases(args, data, variants, phases, results) -> List[str]:
    """Build the variants, check they do the same work, time the phases; return the tables."""
    models = {v: build(v, args, data) for v in variants}
    if "mask_rcnn" in models:
        load_reference(models, models["mask_rcnn"])
    train_fns = {v: train_step_fn(m, train_inputs(v, data)) for v, m in models.items()}
    infer_fns = {v: infer_fn(m, infer_inputs(data)) for v, m in models.items()}
    results["work"] = check_same_work(models, train_fns, infer_fns)
    print(f"same work checked: {results['work']}", flush=True)
    tables = []
    for phase in [p for p in ("train", "infer") if p in phases]:
        for m in models.values():
            m.train(phase == "train")
        t = interleaved_medians(
            train_fns if phase == "train" else infer_fns, args.repeats, args.warmup
        )
        results[phase] = t
        per = args.images if phase == "infer" else 1
        unit = "s / image" if phase == "infer" else "s / step"
        rows = [
            [v, t[v]["wall"] / per, t[v]["cpu"] / per, t[v]["cpu_min"] / per, t[v]["cpu_max"] / per]
            for v in variants
        ]
        head = ["variant", f"wall {unit}", f"CPU {unit}", "CPU min", "CPU max"]
        tables.append(print_table(head, rows, f"{phase} (medians of {args.repeats}):"))
        head = ["phase", "ratio (median of per-round ratios)", "wall", "CPU", "target"]
        tables.append(print_table(head, ratio_rows(t, phase)))
    return tables


def memory_table(args, variants, results) -> str:
    """Peak memory of every variant and phase, each in its own subprocess (see memory_worker)."""
    rows, script = [], os.path.abspath(__file__)
    for phase in ("train", "infer"):
        for v in variants:
            worker = ["--memory-worker", v, "--phase", phase, "--threads", str(args.threads)]
            worker += [
                f"--{k}={getattr(args, k.replace('-', '_'))}"
                for k in ("depth", "size", "images", "instances", "num-classes", "detections")
            ]
            r = peak_rss_of(script, worker)
            results.setdefault("memory", {}).setdefault(phase, {})[v] = r
            rows.append([phase, v, r["peak_mib"], r["peak_mib"] - r["baseline_mib"]])
    head = ["phase", "variant", "peak RSS MiB", "growth over built MiB"]
    return print_table(head, rows, "peak memory (VmHWM, one subprocess per variant, 3 steps):")


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--only", default="train,infer,memory", help="phases: train,infer,memory")
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth of the backbone")
    parser.add_argument("--size", type=int, default=256, help="image side, px")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--instances", type=int, default=16, help="ground-truth objects per image")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--json", help="write all numbers to this file")
    parser.add_argument("--profile", help="profile this variant instead of benchmarking")
    parser.add_argument("--phase", default="train", choices=["train", "infer"])
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker:
        return memory_worker(args)
    data = make_data(args)
    if args.profile:
        return profile(args, data)
    set_threads(args.threads)
    variants, phases = args.variants.split(","), args.only.split(",")
    results = {"machine": machine_info(), "args": vars(args)}
    print("machine:", json.dumps(results["machine"]), flush=True)
    # memory first, while this process is small
    tables = [memory_table(args, variants, results)] if "memory" in phases else []
    if {"train", "infer"} & set(phases):
        tables += time_phases(args, data, variants, phases, results)
    results["tables"] = tables
    results["machine_end"] = machine_info()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
