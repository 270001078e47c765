#!/usr/bin/env python
"""
Export a multimask model to TorchScript and check it against the eager model:

    python tools/export_model.py \\
        --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml \\
        --format torchscript --export-method scripting --output export/ \\
        MODEL.WEIGHTS output/multimask_R18_FPN_quick_synthetic/model_final.pth
    python tools/export_model.py --config-file <yaml> --export-method tracing \\
        --sample-image img.png --output export/ MODEL.WEIGHTS <model.pth>

Writes ``<output>/model.ts``. The exported model takes one image (3, h, w) in cfg.INPUT.FORMAT,
resized as DefaultPredictor resizes it (``multimask.utils.prepare_image``), and returns raw
detections; see ``multimask.utils.export`` for the output format and ``outputs_to_instances`` to
paste its masks. After export, the file is loaded back and compared with the eager model on an image
it was not traced on (--check-image, or the sample image flipped); the script fails if they differ.
"""

import argparse
import logging
import os
import sys

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multimask  # noqa: E402,F401  (registers MultiMaskRCNN and its heads)
from multimask.config import fall_back_to_cpu, get_multimask_cfg  # noqa: E402
from multimask.utils.export import (  # noqa: E402
    TRACED_OUTPUT_NAMES,
    ExportableMultiMaskRCNN,
    export_scripting,
    export_tracing,
    prepare_image,
)

logger = logging.getLogger("multimask.export_model")


def setup_cfg(args):
    # as train_net.py: MULTIMASK.CUSTOM_IMPORTS (a user's head) imported before the file is merged
    cfg = get_multimask_cfg(args.config_file, args.opts)
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description="Export a multimask model to TorchScript")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=["torchscript"], default="torchscript")
    parser.add_argument("--export-method", choices=["scripting", "tracing"], default="scripting")
    parser.add_argument("--output", required=True, help="directory to write model.ts in")
    parser.add_argument(
        "--sample-image",
        help="image to trace on (default: a random image, which an untrained model detects "
        "objects in; a trained model may not, so give a real image for tracing)",
    )
    parser.add_argument("--check-image", help="image to compare exported and eager outputs on")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def _input(cfg, path, seed):
    if path:
        return prepare_image(cfg, read_image(path, format="BGR"))
    size = cfg.INPUT.MIN_SIZE_TEST
    rng = np.random.RandomState(seed)
    return prepare_image(cfg, rng.randint(0, 256, (size, size, 3), dtype=np.uint8))


def compare_outputs(eager: dict, exported, atol: float = 1e-4) -> float:
    """
    Max absolute difference over all raw outputs; raises ValueError on differing shapes.

    Args:
        eager: ExportableMultiMaskRCNN's dict.
        exported: a scripted model's dict or a traced model's tuple (TRACED_OUTPUT_NAMES order).
    """
    if not isinstance(exported, dict):
        exported = dict(zip(TRACED_OUTPUT_NAMES, exported))
    worst = 0.0
    for key, ref in eager.items():
        out = exported[key]
        if out.shape != ref.shape:
            raise ValueError(
                f"{key}: exported shape {tuple(out.shape)} != eager {tuple(ref.shape)}"
            )
        if ref.numel():
            worst = max(worst, (out.double() - ref.double()).abs().max().item())
    return worst


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    setup_logger(name="multimask")
    cfg = setup_cfg(args)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    sample = _input(cfg, args.sample_image, seed=0)
    with torch.no_grad():
        if args.export_method == "scripting":
            exported = export_scripting(model)
        else:
            exported = export_tracing(model, sample.to(model.device))
    PathManager.mkdirs(args.output)
    path = os.path.join(args.output, "model.ts")
    with PathManager.open(path, "wb") as f:
        torch.jit.save(exported, f)
    logger.info(f"Wrote the {args.export_method} TorchScript model to {path}")

    # Check the file, not the in-memory module, on an input the export has not seen.
    if args.check_image:
        check = _input(cfg, args.check_image, seed=1)
    elif args.sample_image:
        check = sample.flip(-1)
    else:
        check = _input(cfg, None, seed=1)
    loaded = torch.jit.load(path, map_location=model.device)
    with torch.no_grad():
        eager = ExportableMultiMaskRCNN(model)(check.to(model.device))
        diff = compare_outputs(eager, loaded(check.to(model.device)))
    num = len(eager["scores"])
    if diff > 1e-4:
        raise RuntimeError(f"exported model differs from eager by {diff:.3g} ({num} detections)")
    logger.info(
        f"Exported model matches eager on a new input: {num} detections, max diff {diff:.2g}"
    )
    return path


if __name__ == "__main__":
    main()
