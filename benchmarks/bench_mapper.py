#!/usr/bin/env python
"""
Training-mapper throughput: MultiMaskDatasetMapper with K = 2 and 3 masks against detectron2's
DatasetMapper with one mask (issue 6, item 4), side by side in one run.

    python benchmarks/bench_mapper.py                 # synthetic train set at 128 px (quick config)
    python benchmarks/bench_mapper.py --min-size 512  # the same images upscaled: rasterising cost

Variants, all on the same dataset dicts, the same augmentations (ResizeShortestEdge + RandomFlip of
the quick config, re-seeded before every pass so the flips are the same) and in one process:
  d2_polygon   detectron2's DatasetMapper, INPUT.MASK_FORMAT "polygon" (its default): the primary
               (amodal) mask stays a PolygonMasks; rasterising is left to the model's loss
  d2_bitmask   detectron2's DatasetMapper, INPUT.MASK_FORMAT "bitmask": the primary mask as BitMasks
  mm_k2        MultiMaskDatasetMapper, masks [amodal, visible] (polygons and RLE),
               INPUT.MASK_FORMAT "polygon" (the default): polygons stay polygons, RLE is decoded
  mm_k3        the same with masks [amodal, visible, occluded]
  mm_k2_bitmask  mm_k2 with INPUT.MASK_FORMAT "bitmask": every mask rasterised to the image
One timed unit is one pass over --images dicts; images/s = images / median pass time.
"""

import os
import random
import sys

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (  # noqa: E402
    benchmark_parser,
    interleaved_medians,
    machine_info,
    print_table,
    set_threads,
)
from multimask import add_multimask_config  # noqa: E402
from multimask.data import MultiMaskDatasetMapper  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    REPO_ROOT, "configs", "quick_schedules", "multimask_R18_FPN_quick_synthetic.yaml"
)
K_NAMES = {2: ["amodal", "visible"], 3: ["amodal", "visible", "occluded"]}


def build_cfg(args, mask_format: str = "polygon", k: int = 2):
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_file(QUICK_CONFIG)
    cfg.DATASETS.TRAIN = (args.dataset,)
    cfg.INPUT.MASK_FORMAT = mask_format
    if args.min_size:
        cfg.INPUT.MIN_SIZE_TRAIN = (args.min_size,)
        cfg.INPUT.MAX_SIZE_TRAIN = max(args.min_size, cfg.INPUT.MAX_SIZE_TRAIN)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = k
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = K_NAMES[k]
    return cfg


def pass_fn(mapper, dicts):
    def run():
        # fvcore's RandomFlip draws from numpy's global generator: same flips in every pass
        np.random.seed(0)
        random.seed(0)
        torch.manual_seed(0)
        for d in dicts:
            mapper(d)

    return run


def main():
    parser = benchmark_parser(__doc__, repeats=5, warmup=1, threads=1)
    parser.add_argument("--dataset", default="multimask_synthetic_train")
    parser.add_argument("--images", type=int, default=200, help="dataset dicts per pass")
    parser.add_argument(
        "--min-size", type=int, default=0, help="INPUT.MIN_SIZE_TRAIN (0: config's)"
    )
    args = parser.parse_args()
    set_threads(args.threads)

    dicts = DatasetCatalog.get(args.dataset)[: args.images]
    mappers = {
        "d2_polygon": DatasetMapper(build_cfg(args, "polygon"), is_train=True),
        "d2_bitmask": DatasetMapper(build_cfg(args, "bitmask"), is_train=True),
        "mm_k2": MultiMaskDatasetMapper(build_cfg(args, k=2), is_train=True),
        "mm_k3": MultiMaskDatasetMapper(build_cfg(args, k=3), is_train=True),
        "mm_k2_bitmask": MultiMaskDatasetMapper(build_cfg(args, "bitmask", k=2), is_train=True),
    }
    # sanity: the mappers see the same instances
    sample = {n: m(dicts[0])["instances"] for n, m in mappers.items()}
    counts = {n: len(s) for n, s in sample.items()}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"mappers keep different instances: {counts}")
    num_inst = sum(len(d["annotations"]) for d in dicts)
    info = machine_info()
    print("machine:", info, flush=True)
    print(
        f"{len(dicts)} images of {args.dataset}, {num_inst} instances, image size after resize "
        f"{tuple(sample['mm_k2'].image_size)}",
        flush=True,
    )

    t = interleaved_medians(
        {n: pass_fn(m, dicts) for n, m in mappers.items()}, args.repeats, args.warmup
    )
    rows, ips = [], {}
    for n in mappers:
        ips[n] = {c: len(dicts) / t[n][c] for c in ("wall", "cpu")}
        rows.append([n, ips[n]["wall"], ips[n]["cpu"], 1e3 * t[n]["cpu"] / len(dicts)])
    print_table(
        ["mapper", "images/s (wall)", "images/s (CPU)", "CPU ms / image"],
        rows,
        f"training mapper throughput (medians of {args.repeats} passes):",
    )
    ratios = [
        [f"{a} / {b}", ips[a]["wall"] / ips[b]["wall"], ips[a]["cpu"] / ips[b]["cpu"], target]
        for a, b, target in (
            ("mm_k2", "d2_polygon", ">= 0.8"),
            ("mm_k2", "d2_bitmask", ""),
            ("mm_k3", "d2_polygon", ""),
            ("mm_k3", "d2_bitmask", ""),
            ("mm_k2_bitmask", "d2_polygon", ""),
            ("mm_k2_bitmask", "d2_bitmask", ""),
        )
    ]
    print_table(["throughput ratio", "wall", "CPU", "target"], ratios)
    print("load at end:", machine_info()["load_avg_1_5_15"])


if __name__ == "__main__":
    main()
