#!/usr/bin/env python
"""
The mask branch alone: where bench_model.py's differences come from, measured with less noise.

    python benchmarks/bench_head.py           # R-50-FPN head dims, 84 fg ROIs, 200 detections
    python benchmarks/bench_head.py --fg 256 --detections 200

Every variant's mask head (built as in bench_model.py, with Mask R-CNN's head weights loaded) runs
on the same pooled ROI features (R, 256, 14, 14):
  train   head forward + mask loss + backward, on --fg foreground proposals (jittered ground-truth
          boxes of bench_model.py's 2 images, matched to their object), targets cropped from the
          full-image masks as in training (BitMasks for Mask R-CNN, MultiMasks for multimask)
  head    inference head forward + mask_rcnn_inference / multi_mask_rcnn_inference, --detections
  paste   pasting those masks (K per detection) to the 256 px images with detectron2's
          detector_postprocess (Mask R-CNN) or multimask_postprocess
"""

import argparse
import os
import sys
from typing import Dict, List

import torch

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_model import MASK_NAMES, VARIANTS, build, make_data  # noqa: E402
from benchmarks.bench_utils import (  # noqa: E402
    benchmark_parser,
    interleaved_medians,
    machine_info,
    print_table,
    set_threads,
)
from multimask import MultiMasks  # noqa: E402
from multimask.modeling import multimask_postprocess  # noqa: E402


def proposals(data: List[Dict], num: int, variant: str, seed: int = 0) -> List[Instances]:
    """`num` foreground proposals over the images, each a jittered copy of a ground-truth box."""
    g = torch.Generator().manual_seed(seed)
    spec, out = VARIANTS[variant], []
    for i, d in enumerate(data):
        n = num // len(data) + (i < num % len(data))
        idx = torch.randint(0, len(d["boxes"]), (n,), generator=g)
        boxes = d["boxes"][idx] + torch.randn(n, 4, generator=g) * 4
        inst = Instances(tuple(d["image"].shape[1:]))
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = d["classes"][idx]
        if "k" in spec:
            k = spec["k"]
            inst.gt_multimask = MultiMasks(d["masks"][:, :k], MASK_NAMES[:k])[idx]
        else:
            inst.gt_masks = BitMasks(d["masks"][:, 0])[idx]  # what matching does: a copy per ROI
        out.append(inst)
    return out


def detections(data: List[Dict], num: int, num_classes: int, seed: int = 1) -> List[Instances]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in data:
        s = d["image"].shape[1]
        xy = torch.rand(num, 2, generator=g) * (s - 40)
        wh = 16 + torch.rand(num, 2, generator=g) * (s * 0.5)
        inst = Instances((s, s))
        inst.pred_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=s)], dim=1))
        inst.pred_classes = torch.randint(0, num_classes, (num,), generator=g)
        inst.scores = torch.rand(num, generator=g)
        out.append(inst)
    return out


def main():
    parser = benchmark_parser(__doc__, repeats=7, warmup=1, threads=1)
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "faster_rcnn"))
    parser.add_argument("--fg", type=int, default=84, help="foreground ROIs per train step")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    set_threads(args.threads)
    ns = argparse.Namespace(
        depth=50, size=args.size, images=2, instances=16, num_classes=80, detections=args.detections
    )
    data = make_data(ns)
    variants = args.variants.split(",")
    ref = build("mask_rcnn", ns, data).state_dict()
    heads = {}
    for v in variants:
        m = build(v, ns, data)
        m.load_state_dict(ref, strict=False)
        heads[v] = m.roi_heads.mask_head
    g = torch.Generator().manual_seed(2)
    x_train = torch.randn(args.fg, 256, 14, 14, generator=g).relu()
    x_infer = torch.randn(2 * args.detections, 256, 14, 14, generator=g).relu()

    fns = {}
    for v, head in heads.items():
        props = proposals(data, args.fg, v)
        dets = detections(data, args.detections, ns.num_classes)

        def train(head=head, props=props):
            head.train()
            with EventStorage(0):
                losses = head(x_train, props)
            sum(losses.values()).backward()

        def infer(head=head, dets=dets, v=v):
            head.eval()
            with torch.no_grad():
                out = head(x_infer, [Instances(d.image_size, **d.get_fields()) for d in dets])
            return out

        results = infer()

        def paste(results=results, v=v):
            s = args.size
            for r in results:
                r = Instances(r.image_size, **r.get_fields())
                if "k" in VARIANTS[v]:
                    multimask_postprocess(r, s, s, 0)
                else:
                    detector_postprocess(r, s, s)

        fns[f"{v}/train"], fns[f"{v}/head"], fns[f"{v}/paste"] = train, infer, paste

    print("machine:", machine_info(), flush=True)
    t = interleaved_medians(fns, args.repeats, args.warmup)
    rows = []
    for v in variants:
        c = {p: t[f"{v}/{p}"]["cpu"] for p in ("train", "head", "paste")}
        ref_c = {p: t[f"mask_rcnn/{p}"]["cpu"] for p in ("train", "head", "paste")}
        rows.append(
            [v, c["train"], c["train"] / ref_c["train"], c["head"], c["paste"],
             (c["head"] + c["paste"]) / (ref_c["head"] + ref_c["paste"])]
        )  # fmt: skip
    print_table(
        ["variant", "train CPU s", "train / mask_rcnn", "infer head CPU s", "paste CPU s",
         "infer / mask_rcnn"],
        rows,
        f"mask branch only (batch of 2 images, {args.fg} fg ROIs, {args.detections} detections per "
        f"image, medians of {args.repeats}):",
    )  # fmt: skip


if __name__ == "__main__":
    main()
