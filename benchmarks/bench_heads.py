#!/usr/bin/env python
"""
Cost of the mask-head layouts of issue 21 (item 4) against detectron2's Mask R-CNN, with
bench_model.py's harness (R-50-FPN, 256 px, 2 images x 16 objects, identical weights, interleaved
rounds; ratios are medians of per-round ratios).

    python benchmarks/bench_heads.py --only train,infer --repeats 7 --warmup 2 --threads 1 \
        --json /work/scratch/heads/cost.json

Variants added to bench_model.py's (K = 2, amodal + visible):
  mm_k2          the all-shared head (SHARED_CONVS -1, FC_FUSION [])       (bench_model's own)
  mm_k2_t2       the plain towers: SHARED_CONVS 2, FC_FUSION []
  mm_k2_t2_fc2   towers with FC fusion: SHARED_CONVS 2, FC_FUSION ['amodal','visible']
  mm_k2_hidden2  the configs' head: all-shared, HIDDEN_WEIGHTS [['amodal','visible',2.0]] (a loss
                 weight: train cost only; bench_model's nested masks give every object a hidden part)
"""

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_model  # noqa: E402

HEADS = {
    "mm_k2_t2": {"k": 2, "shared": 2, "fc_fusion": []},
    "mm_k2_t2_fc2": {"k": 2, "shared": 2, "fc_fusion": ["amodal", "visible"]},
    "mm_k2_hidden2": {"k": 2, "shared": -1, "hidden_weights": [["amodal", "visible", 2.0]]},
}
bench_model.VARIANTS.update(HEADS)
_build_cfg = bench_model.build_cfg


def build_cfg(variant, args):
    cfg = _build_cfg(variant, args)
    spec = bench_model.VARIANTS[variant]
    if not spec.get("d2"):
        cfg.MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION = list(spec.get("fc_fusion", []))
        cfg.MODEL.ROI_MULTI_MASK_HEAD.HIDDEN_WEIGHTS = [list(e) for e in spec.get("hidden_weights", [])]
    return cfg


bench_model.build_cfg = build_cfg
_build = bench_model.build


def build(variant, args, data):
    """
    bench_model's build; the FC fusion's last Linear is zeroed (same FLOPs, a zero term), so the
    fused head returns Mask R-CNN's masks and passes bench_model's same-work check.
    """
    model = _build(variant, args, data)
    head = getattr(model.roi_heads, "mask_head", None)
    for fusion in getattr(head, "fc_fusion", {}).values():
        linears = [m for m in fusion.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()
    return model


bench_model.build = build
_ratio_rows = bench_model.ratio_rows


def ratio_rows(t, phase):
    """bench_model's rows, plus every head / mask_rcnn and the towers against the all-shared head."""
    rows = _ratio_rows(t, phase)
    target = "<= 1.05" if phase == "train" else "<= 1.15"

    def paired(a, b):
        return [
            statistics.median(x / y for x, y in zip(t[a][f"{c}_times"], t[b][f"{c}_times"]))
            for c in ("wall", "cpu")
        ]

    for v in HEADS:
        if v in t and "mask_rcnn" in t:
            rows.append([phase, f"{v} / mask_rcnn", *paired(v, "mask_rcnn"), target])
        if v in t and "mm_k2" in t:
            rows.append([phase, f"{v} / mm_k2", *paired(v, "mm_k2"), ""])
    if {"mm_k2_t2", "mm_k2_t2_fc2"} <= set(t):
        rows.append([phase, "mm_k2_t2_fc2 / mm_k2_t2", *paired("mm_k2_t2_fc2", "mm_k2_t2"), "<= 1.15 (train)"])
    return rows


bench_model.ratio_rows = ratio_rows

if __name__ == "__main__":
    if not any(a.startswith("--variants") for a in sys.argv[1:]):
        sys.argv += ["--variants", "mask_rcnn,mm_k2,mm_k2_t2,mm_k2_t2_fc2"]
    bench_model.main()
