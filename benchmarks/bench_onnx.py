#!/usr/bin/env python
"""
ONNX Runtime vs eager PyTorch on the CPU: images/s of the same graph input (one resized image,
postprocessing included, masks not pasted), at one thread and at all threads; export time; file
size. Random weights (the speed does not depend on them; the detections per image are reported).

    python benchmarks/bench_onnx.py [--models quick,r50_kins] [--images 6] [--json out.json]

Models: ``quick`` = configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml on 128 px
images; ``r50_kins`` = configs/Amodal/multimask_R_50_FPN_1x_kins2020.yaml (R-50-FPN, K = 3) on
KINS-size 1242 x 375 images resized by its test transform.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multimask  # noqa: E402,F401
from benchmarks.bench_utils import REPO_ROOT, machine_info  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from multimask.config import get_multimask_cfg  # noqa: E402
from multimask.utils.onnx_export import OnnxMultiMaskRCNN, export_onnx, spec_from_cfg  # noqa: E402
from multimask_deploy import preprocess  # noqa: E402

MODELS = {
    "quick": ("configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml", (128, 128)),
    "r50_kins": ("configs/Amodal/multimask_R_50_FPN_1x_kins2020.yaml", (375, 1242)),
}


def _median_rate(fn, inputs, rounds: int) -> float:
    """Images/s: the median over rounds of one pass over `inputs` (after one warm-up call)."""
    fn(inputs[0])
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for x in inputs:
            fn(x)
        times.append(time.perf_counter() - start)
    return len(inputs) / float(np.median(times))


def bench(name: str, args) -> dict:
    import onnxruntime as ort

    config, (h, w) = MODELS[name]
    cfg = get_multimask_cfg(os.path.join(REPO_ROOT, config), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    spec = spec_from_cfg(cfg)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
    inputs = [
        preprocess(im, spec["input_format"], spec["min_size_test"], spec["max_size_test"])
        for im in images
    ]
    size = np.array([h, w], dtype=np.int64)
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    start = time.perf_counter()
    export_onnx(model, spec, path, torch.from_numpy(inputs[0]))
    export_s = time.perf_counter() - start
    wrapper = OnnxMultiMaskRCNN(model)
    row = {
        "model": name,
        "image": f"{w}x{h}",
        "input": f"{inputs[0].shape[2]}x{inputs[0].shape[1]}",
        "export_s": round(export_s, 1),
        "file_mib": round(os.path.getsize(path) / 2**20, 1),
    }
    with torch.no_grad():
        row["detections"] = int(np.mean([len(wrapper(torch.from_numpy(x), torch.from_numpy(size))[1])
                                         for x in inputs]))  # fmt: skip
    for threads in (1, os.cpu_count()):
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def eager(x):
            with torch.no_grad():
                wrapper(torch.from_numpy(x), torch.from_numpy(size))

        def onnx(x):
            session.run(None, {"image": x, "image_size": size})

        row[f"eager_{threads}t"] = round(_median_rate(eager, inputs, args.rounds), 2)
        row[f"ort_{threads}t"] = round(_median_rate(onnx, inputs, args.rounds), 2)
        row[f"ratio_{threads}t"] = round(row[f"ort_{threads}t"] / row[f"eager_{threads}t"], 2)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="quick,r50_kins")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the rows and the machine to this file")
    args = parser.parse_args()
    rows = [bench(name, args) for name in args.models.split(",")]
    info = machine_info()
    print(json.dumps(info))
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
