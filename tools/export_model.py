#!/usr/bin/env python
"""
Export a multimask model to TorchScript or ONNX and check it against the eager model:

    python tools/export_model.py \\
        --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml \\
        --format torchscript --export-method scripting --output export/ \\
        MODEL.WEIGHTS output/multimask_R18_FPN_quick_synthetic/model_final.pth
    python tools/export_model.py --config-file <yaml> --export-method tracing \\
        --sample-image img.png --output export/ MODEL.WEIGHTS <model.pth>

    python tools/export_model.py --config-file <yaml or LazyConfig .py> --format onnx \\
        [--opset 17] [--sample-image img.png] --output export/ MODEL.WEIGHTS <model.pth>

ONNX: writes ``<output>/model.onnx`` (see ``multimask.utils.onnx_export``: postprocessed boxes,
scores, classes and the (N, K, M, M) masks; the test transform, mask and class names in its
metadata), checks it with ``onnx.checker``, runs it in onnxruntime on an image of another size
than the sample and compares it with the eager model; run it with ``demo/onnx_demo.py`` or
``multimask_deploy.OnnxMultiMaskPredictor``. A LazyConfig (``.py``) takes ``key=value`` overrides
and ``train.init_checkpoint=<model.pth>`` for the weights.

TorchScript: writes ``<output>/model.ts``. The exported model takes one image (3, h, w) in cfg.INPUT.FORMAT,
resized as DefaultPredictor resizes it (``multimask.utils.prepare_image``), and returns raw
detections; see ``multimask.utils.export`` for the output format and ``outputs_to_instances`` to
paste its masks. After export, the file is loaded back and compared with the eager model on an image
it was not traced on (--check-image, or the sample image flipped); the script fails if they differ.
"""

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multimask  # noqa: E402,F401  (registers MultiMaskRCNN and its heads)
from multimask.config import fall_back_to_cpu, get_multimask_cfg  # noqa: E402
from multimask.engine.lazy_train import lazy_train_classes  # noqa: E402
from multimask.utils.onnx_export import (  # noqa: E402
    DEFAULT_OPSET,
    OnnxMultiMaskRCNN,
    dataset_classes,
    export_onnx,
    spec_from_cfg,
    spec_from_values,
)
from multimask.utils.export import (  # noqa: E402
    TRACED_OUTPUT_NAMES,
    ExportableMultiMaskRCNN,
    export_scripting,
    export_tracing,
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
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument(
        "--export-method",
        choices=["scripting", "tracing"],
        default=None,
        help="TorchScript: scripting (default) or tracing; ONNX is always traced",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (16 to 20 with ROIAlignV2)"
    )
    parser.add_argument("--output", required=True, help="directory to write model.ts / model.onnx in")
    parser.add_argument(
        "--sample-image",
        help="image to trace on (default: a random image, which an untrained model detects "
        "objects in; a trained model may not, so give a real image for tracing)",
    )
    parser.add_argument("--check-image", help="image to compare exported and eager outputs on")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def _is_lazy(config_file: str) -> bool:
    return config_file.endswith(".py")


def _lazy_model_and_spec(args):
    """The model and export spec of a LazyConfig: its test loader's resize and image format."""
    from detectron2.config import instantiate
    from detectron2.data import transforms as T

    from multimask.engine.lazy_train import lazy_setup

    cfg = lazy_setup(args.config_file, args.opts)
    model = instantiate(cfg.model)
    model.to("cpu")
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    mapper = cfg.dataloader.test.mapper
    resize = [a for a in instantiate(mapper.augmentations) if isinstance(a, T.ResizeShortestEdge)]
    if len(resize) != 1:
        raise ValueError(
            "dataloader.test.mapper.augmentations must hold one ResizeShortestEdge (the test "
            "transform the exported model's predictor applies)"
        )
    names = cfg.dataloader.test.dataset.names
    train = lazy_train_classes(cfg)
    if train.mode == "same":
        classes, ids = dataset_classes(names if isinstance(names, str) else names[0])
    else:  # one "object" class or the union of the training sets' (no dataset's ids fit it)
        classes, ids = train.classes, None
    head = model.roi_heads.mask_head
    spec = spec_from_values(
        head.mask_names,
        head.mask_names[head.primary_index],
        mapper.image_format,
        resize[0].short_edge_length[0],
        resize[0].max_size,
        model.roi_heads.box_predictor.test_score_thresh,
        classes,
        ids,
    )
    return model, spec


def _input(spec, path, seed, size=None):
    """A resized input as DefaultPredictor makes it, from `path` or a random image."""
    if path:
        image = read_image(path, format="BGR")
    else:
        side = size or spec["min_size_test"] or 128
        image = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    if spec["input_format"] == "RGB":
        image = image[:, :, ::-1]
    resize = T.ResizeShortestEdge(
        [spec["min_size_test"], spec["min_size_test"]], spec["max_size_test"]
    )
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def check_onnx(path: str, model, image: torch.Tensor, image_size, atol: float = 1e-3) -> int:
    """
    Run the ONNX file in onnxruntime on a resized image and compare it with the eager model.

    Returns:
        the number of detections.

    Raises:
        RuntimeError: when the outputs differ (shapes, or values by more than `atol`).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    size = np.asarray(image_size, dtype=np.int64)
    outputs = session.run(None, {"image": image.numpy(), "image_size": size})
    with torch.no_grad():
        eager = OnnxMultiMaskRCNN(model)(image, torch.as_tensor(size))
    for name, out, ref in zip(("boxes", "scores", "classes", "masks"), outputs, eager):
        ref = ref.numpy()
        if out.shape != ref.shape:
            raise RuntimeError(f"ONNX {name} of shape {out.shape} != eager {ref.shape}")
        diff = np.abs(out.astype(np.float64) - ref).max() if ref.size else 0.0
        if diff > atol:
            raise RuntimeError(f"ONNX {name} differ from eager by {diff:.3g} ({len(ref)} detections)")
    return len(eager[1])


def main_onnx(args) -> str:
    if args.export_method == "scripting":
        raise ValueError("--export-method scripting is TorchScript's; ONNX export traces")
    if _is_lazy(args.config_file):
        model, spec = _lazy_model_and_spec(args)
    else:
        cfg = setup_cfg(args)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        spec = spec_from_cfg(cfg)
    model.to("cpu").eval()  # the graph is traced on the CPU and runs on any onnxruntime device
    sample = _input(spec, args.sample_image, seed=0)
    PathManager.mkdirs(args.output)
    path = os.path.join(args.output, "model.onnx")
    start = time.perf_counter()
    export_onnx(model, spec, path, sample, args.opset)
    logger.info(f"Exported in {time.perf_counter() - start:.1f}s: {path}")
    # another size than the sample's: the graph's height and width are dynamic
    if args.check_image:
        check = _input(spec, args.check_image, seed=1)
    else:
        side = max(spec["min_size_test"], 32)
        check = _input(spec, None, seed=1, size=side)[:, :, : side * 3 // 4]
    num = check_onnx(path, model, check, (check.shape[1] * 2, check.shape[2] * 2))
    logger.info(f"onnxruntime matches the eager model on a new input: {num} detections")
    return path


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
    if args.format == "onnx":
        return main_onnx(args)
    if _is_lazy(args.config_file):
        raise ValueError("--format torchscript takes YAML configs; export a LazyConfig as onnx")
    args.export_method = args.export_method or "scripting"
    cfg = setup_cfg(args)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    spec = {k: cfg.INPUT[k.upper()] for k in ("min_size_test", "max_size_test")}
    spec["input_format"] = cfg.INPUT.FORMAT
    sample = _input(spec, args.sample_image, seed=0)
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
        check = _input(spec, args.check_image, seed=1)
    elif args.sample_image:
        check = sample.flip(-1)
    else:
        check = _input(spec, None, seed=1)
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
