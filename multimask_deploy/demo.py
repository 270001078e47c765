"""
``demo/onnx_demo.py``: ``demo/demo.py``'s image mode with an exported ONNX model, without torch or
detectron2. Same arguments and outputs for images: drawings (``--output``), COCO-style results
(``--json-output``, the records ``demo.py`` writes) and LabelMe files (``--labelme-output``, the
files ``demo.py`` writes); the drawings are opencv's (``multimask_deploy.render``).
"""

import argparse
import glob
import json
import logging
import os
import time
from typing import List, Optional

import cv2

from .predictor import OnnxMultiMaskPredictor
from .render import draw_predictions

__all__ = ["get_parser", "main"]

logger = logging.getLogger("multimask_deploy.demo")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="multimask ONNX demo (onnxruntime, no torch)")
    parser.add_argument("--model", required=True, help="model.onnx from tools/export_model.py")
    parser.add_argument("--input", nargs="+", required=True, help="image files, or one glob")
    parser.add_argument("--output", help="a file (one image) or a directory for the drawings")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of an instance"
    )
    parser.add_argument("--masks", default="", help="comma-separated mask names to draw / write")
    parser.add_argument("--panels", action="store_true", help="one panel per mask name")
    parser.add_argument("--scale", type=float, default=None, help="drawing size (default: auto)")
    parser.add_argument("--json-output", metavar="FILE", help="COCO-style results of all inputs")
    parser.add_argument("--labelme-output", metavar="DIR", help="DIR/<image name>.json per image")
    parser.add_argument("--labelme-epsilon", type=float, default=1.0, metavar="PIXELS")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all)")
    return parser


def expand_inputs(inputs: List[str]) -> List[str]:
    """--input: files, or one glob pattern; every file must exist."""
    if len(inputs) == 1 and not os.path.exists(inputs[0]):
        inputs = sorted(glob.glob(os.path.expanduser(inputs[0])))
    if not inputs:
        raise FileNotFoundError("--input matched no file")
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--input files not found: {missing}")
    return inputs


def labelme_paths(paths: List[str], folder: str) -> List[str]:
    """DIR/<image name>.json per image; two images of one name would overwrite each other."""
    json_paths = [
        os.path.join(folder, os.path.splitext(os.path.basename(p))[0] + ".json") for p in paths
    ]
    seen = {}
    for path, json_path in zip(paths, json_paths):
        if json_path in seen:
            raise ValueError(
                f"--labelme-output: {seen[json_path]} and {path} would both be written to "
                f"{json_path}; give images of different names"
            )
        seen[json_path] = path
    return json_paths


def main(argv: Optional[List[str]] = None) -> list:
    """Run the demo; returns the --json-output records (empty without it)."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.output or args.json_output or args.labelme_output):
        raise ValueError("give --output, --json-output or --labelme-output (no window is shown)")
    if args.labelme_epsilon < 0:
        raise ValueError(f"--labelme-epsilon must be >= 0 pixels, got {args.labelme_epsilon}")
    predictor = OnnxMultiMaskPredictor(
        args.model, num_threads=args.threads, confidence_threshold=args.confidence_threshold
    )
    masks = [m.strip() for m in args.masks.split(",") if m.strip()] or predictor.mask_names
    unknown = [n for n in masks if n not in predictor.mask_names]
    if unknown:
        raise ValueError(
            f"--masks {unknown} not predicted by this model, whose mask names are "
            f"{predictor.mask_names}"
        )
    paths = expand_inputs(args.input)
    as_dir = args.output and (
        os.path.isdir(args.output) or args.output.endswith(os.sep) or len(paths) > 1
    )
    if as_dir:
        os.makedirs(args.output, exist_ok=True)
    json_paths = labelme_paths(paths, args.labelme_output) if args.labelme_output else None
    records = []
    for idx, path in enumerate(paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        start = time.time()
        pred = predictor(image)
        logger.info(f"{path}: detected {len(pred)} instances in {time.time() - start:.2f}s")
        if args.json_output:
            from .results import encode_arrays, multimask_records  # pycocotools

            encoded = encode_arrays(
                pred.boxes, pred.scores, pred.classes, pred.masks, pred.mask_names, idx
            )
            records += multimask_records(
                encoded, idx, dataset_ids=predictor.dataset_ids, file_name=path
            )
        if json_paths:
            from .labelme import labelme_content  # pycocotools

            labelme_content(
                pred.masks,
                pred.classes,
                pred.scores,
                pred.image_size,
                path,
                json_paths[idx],
                predictor.class_names,
                masks,
                pred_mask_names=pred.mask_names,
                epsilon=args.labelme_epsilon,
            )
        if args.output:
            h, w = image.shape[:2]
            scale = args.scale if args.scale is not None else max(1.0, 512 / max(h, w))
            drawing = draw_predictions(
                image[:, :, ::-1], pred, masks, predictor.class_names, scale, args.panels
            )
            out = os.path.join(args.output, os.path.basename(path)) if as_dir else args.output
            if os.path.splitext(out)[1].lower() not in _IMAGE_EXTENSIONS:
                out += ".png"
            cv2.imwrite(out, drawing[:, :, ::-1])
    if args.json_output:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_output)), exist_ok=True)
        with open(args.json_output, "w") as f:
            json.dump(records, f)
        logger.info(f"wrote {len(records)} results to {args.json_output}")
    return records
