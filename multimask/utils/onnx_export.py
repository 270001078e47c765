"""
ONNX export of a multi-mask R-CNN, run by ``multimask_deploy.OnnxMultiMaskPredictor`` (onnxruntime,
no torch) or any ONNX runtime.

The graph is detectron2's own inference traced through torch's TorchScript-based ONNX exporter
(``torch.onnx.export(..., dynamo=False)``, detectron2's route; torchvision registers the ONNX forms of
``roi_align`` and ``nms``), with ``detector_postprocess`` inside it except for mask pasting:

* inputs ``image`` (3, h, w) float32 in the config's INPUT.FORMAT, resized by the test transform
  (``ResizeShortestEdge``, done outside the graph: ``multimask_deploy.resize_shortest_edge``), h and
  w dynamic; ``image_size`` (2,) int64, the (H, W) of the original image;
* outputs ``pred_boxes`` (N, 4) XYXY in original image pixels (scaled, clipped, empty boxes
  dropped), ``scores`` (N,), ``pred_classes`` (N,) int64 and ``pred_multimasks`` (N, K, M, M)
  probabilities in each box, K in MASK_NAMES order (paste them with
  ``multimask_deploy.paste_masks``, which does what detectron2's ``paste_masks_in_image`` does).

What the predictor needs besides the graph (mask names, the test transform, the score threshold,
class names) is written into the model's ``metadata_props`` (``METADATA_KEYS``), JSON-encoded.
"""

import json
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.layers import ROIAlign
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from multimask_deploy.predictor import (
    FORMAT_VERSION,
    INPUT_NAMES,
    OUTPUT_NAMES,
    REQUIRED_METADATA,
)

from ..config import primary_mask_name
from .export import TRACING_LEN_MODULES

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "METADATA_KEYS",
    "ONNX_INPUT_NAMES",
    "ONNX_OUTPUT_NAMES",
    "OnnxMultiMaskRCNN",
    "check_onnx_exportable",
    "export_onnx",
    "spec_from_cfg",
    "spec_from_values",
]

logger = logging.getLogger(__name__)

# the names and the metadata's keys are the predictor's (multimask_deploy: torch-free, one definition)
ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES = INPUT_NAMES, OUTPUT_NAMES
# RoiAlign with aligned=True (ROIAlignV2, the default pooler) needs opset 16; 17 is what
# onnxruntime and TensorRT 8.6+ support widely.
DEFAULT_OPSET = 17
MAX_OPSET = 20  # torch's TorchScript-based exporter's last opset
_MIN_OPSET = 11  # NonMaxSuppression, RoiAlign
_MIN_OPSET_ALIGNED = 16
# metadata_props written by export_onnx and read by multimask_deploy (its FORMAT_VERSION).
METADATA_KEYS = ("multimask_format", *REQUIRED_METADATA)
_FORMAT = FORMAT_VERSION


class OnnxMultiMaskRCNN(nn.Module):
    """
    A MultiMaskRCNN as the ONNX graph sees it: one resized image and the original size in, the
    postprocessed detections (masks not pasted) out. Runs eagerly too: that is the reference the
    exported graph is checked against.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(
        self, image: torch.Tensor, image_size: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            image: shape (3, h, w), float, in the model's input format, already resized.
            image_size: shape (2,), int64, (H, W) of the original image.

        Returns:
            pred_boxes (N, 4) XYXY at (H, W), scores (N,), pred_classes (N,) and pred_multimasks
            (N, K, M, M) probabilities, in ONNX_OUTPUT_NAMES order.
        """
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        raw = Instances(inst.image_size)
        raw.pred_boxes = inst.pred_boxes
        raw.scores = inst.scores
        raw.pred_classes = inst.pred_classes
        # not as "pred_masks": detector_postprocess would paste it
        raw.pred_multimasks = inst.pred_multimasks
        out = detector_postprocess(raw, image_size[0], image_size[1])
        return out.pred_boxes.tensor, out.scores, out.pred_classes, out.pred_multimasks


def _aligned_poolers(model: nn.Module) -> Dict[str, bool]:
    """Pooler name ("box" / "mask") -> whether it uses aligned ROIAlign (ROIAlignV2)."""
    found = {}
    roi_heads = getattr(model, "roi_heads", None)
    for name in ("box", "mask"):
        pooler = getattr(roi_heads, f"{name}_pooler", None)
        levels = getattr(pooler, "level_poolers", [])
        if any(isinstance(p, ROIAlign) for p in levels):
            found[name] = any(isinstance(p, ROIAlign) and p.aligned for p in levels)
    return found


def check_onnx_exportable(model: nn.Module, opset: int) -> None:
    """
    Raise a ValueError naming the option when `model` has no ONNX form at `opset`.

    Args:
        model: an eval-mode MultiMaskRCNN (or another GeneralizedRCNN with a multi-mask head).
        opset: the ONNX opset to export to.
    """
    if not _MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"--opset {opset}: torch's ONNX exporter (TorchScript-based, the one that traces "
            f"detectron2) writes opsets {_MIN_OPSET} to {MAX_OPSET}"
        )
    if model.training:
        raise ValueError("export an eval-mode model: call model.eval() first")
    mask_head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
    if mask_head is None or not hasattr(mask_head, "mask_names"):
        raise ValueError(
            f"{type(model).__name__} has no multi-mask head (roi_heads.mask_head with mask_names): "
            "set MODEL.META_ARCHITECTURE 'MultiMaskRCNN', MODEL.ROI_HEADS.NAME 'MultiMaskROIHeads'"
        )
    if getattr(model, "proposal_generator", None) is None:
        raise ValueError(
            "the model has no proposal generator (MODEL.PROPOSAL_GENERATOR.NAME 'PrecomputedProposals'"
            "): the exported graph would need proposals as an input, which it does not take"
        )
    keys = {"box": "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "mask": "MODEL.ROI_MULTI_MASK_HEAD.POOLER_TYPE"}
    for name, aligned in _aligned_poolers(model).items():
        if aligned and opset < _MIN_OPSET_ALIGNED:
            raise ValueError(
                f"{keys[name]} is ROIAlignV2 (aligned RoiAlign), which ONNX has from opset "
                f"{_MIN_OPSET_ALIGNED}: use --opset {_MIN_OPSET_ALIGNED} or more (default "
                f"{DEFAULT_OPSET}), or a model trained with POOLER_TYPE 'ROIAlign'"
            )


def _metadata(spec: Dict[str, Any]) -> Dict[str, str]:
    missing = [k for k in METADATA_KEYS[1:] if k not in spec]
    if missing:
        raise ValueError(f"export spec lacks {missing}")
    return {"multimask_format": _FORMAT, **{k: json.dumps(spec[k]) for k in METADATA_KEYS[1:]}}


def export_onnx(
    model: nn.Module,
    spec: Dict[str, Any],
    path: str,
    sample_image: torch.Tensor,
    opset: int = DEFAULT_OPSET,
) -> Any:
    """
    Export `model` to an ONNX file, check it with ``onnx.checker`` and write `spec` into its
    metadata.

    Args:
        model: an eval-mode MultiMaskRCNN on the CPU.
        spec: the predictor's settings, a value for each of METADATA_KEYS but the first:
            mask_names (K names), primary, input_format ("BGR" / "RGB"), min_size_test,
            max_size_test, score_thresh_test, mask_threshold, thing_classes (list or None),
            dataset_ids (contiguous class -> dataset category id, list or None).
        path: the .onnx file to write.
        sample_image: shape (3, h, w), a resized input to trace on; it should give detections so
            that every branch of the mask head is traced.
        opset: the ONNX opset.

    Returns:
        The onnx.ModelProto written.

    Raises:
        ValueError: from ``check_onnx_exportable``, or naming the head when tracing fails.
    """
    import onnx  # the optional "onnx" extra: only export needs it

    check_onnx_exportable(model, opset)
    mask_names = list(model.roi_heads.mask_head.mask_names)
    if list(spec["mask_names"]) != mask_names:
        raise ValueError(f"spec mask_names {spec['mask_names']} != the model's {mask_names}")
    wrapper = OnnxMultiMaskRCNN(model)
    size = torch.tensor(sample_image.shape[1:], dtype=torch.int64)
    with torch.no_grad():
        num = len(wrapper(sample_image, size)[1])
    if num == 0:
        logger.warning(
            "The sample image gave no detection: the traced mask branch may not generalise. "
            "Export with an image the model detects objects in (--sample-image)."
        )
    dynamic = {"image": {1: "height", 2: "width"}}
    dynamic.update({name: {0: "num_detections"} for name in ONNX_OUTPUT_NAMES})
    head = model.roi_heads.mask_head
    selective = getattr(head, "class_selective", False)
    try:
        # The class-selective path (`_class_logits`, the same logits as `layers()` for each ROI's
        # class) flattens with a -1 size, which onnxruntime cannot infer on zero detections
        # (Reshape {0, C, -1}); `layers()` gives every size explicitly.
        head.class_selective = False
        # `len(instances)` in the heads must stay a traced value (see export_tracing)
        with torch.no_grad(), patch_builtin_len(TRACING_LEN_MODULES):
            torch.onnx.export(
                wrapper,
                (sample_image, size),
                path,
                dynamo=False,
                opset_version=opset,
                input_names=list(ONNX_INPUT_NAMES),
                output_names=list(ONNX_OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    except Exception as e:  # torch raises several types (SymbolicValueError, RuntimeError, ...)
        # the exporter appends the whole graph to some messages: keep the first lines
        message = "\n".join(str(e).splitlines()[:3])[:1000]
        raise ValueError(
            f"torch.onnx.export failed on this model (mask head {type(head).__name__}, opset "
            f"{opset}): {message}"
        ) from e
    finally:
        if hasattr(head, "class_selective"):
            head.class_selective = selective
    proto = onnx.load(path)
    for key, value in _metadata(spec).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "multimask"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    logger.info(f"Wrote {path}: opset {opset}, {num} detections on the sample image")
    return proto


def spec_from_values(
    mask_names: Sequence[str],
    primary: str,
    input_format: str,
    min_size_test: int,
    max_size_test: int,
    score_thresh_test: float,
    thing_classes: Optional[Sequence[str]] = None,
    dataset_ids: Optional[Sequence[int]] = None,
    mask_threshold: float = 0.5,
) -> Dict[str, Any]:
    """The ``export_onnx`` spec, checked: what the predictor needs to reproduce the test path."""
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"INPUT.FORMAT must be BGR or RGB for ONNX export, got {input_format!r}")
    if primary not in mask_names:
        raise ValueError(f"PRIMARY {primary!r} is not in MASK_NAMES {list(mask_names)}")
    return {
        "mask_names": list(mask_names),
        "primary": primary,
        "input_format": input_format,
        "min_size_test": int(min_size_test),
        "max_size_test": int(max_size_test),
        "score_thresh_test": float(score_thresh_test),
        "mask_threshold": float(mask_threshold),
        "thing_classes": list(thing_classes) if thing_classes is not None else None,
        "dataset_ids": [int(i) for i in dataset_ids] if dataset_ids is not None else None,
    }


def dataset_classes(dataset_name: Optional[str]) -> Tuple[Optional[list], Optional[list]]:
    """
    (thing_classes, dataset ids) of a registered dataset, as the demo names classes; loads the
    dataset when its classes are only in its annotation file; (None, None) when unknown.
    """
    if not dataset_name:
        return None, None
    from ..data.model_classes import dataset_ids, dataset_metadata_with_classes

    metadata = dataset_metadata_with_classes(dataset_name)
    return metadata.get("thing_classes", None), dataset_ids(metadata)


def spec_from_cfg(cfg) -> Dict[str, Any]:
    """The ``export_onnx`` spec of a YAML config (INPUT.*, the head's names, DATASETS.TEST[0])."""
    from ..data.model_classes import dataset_ids, model_metadata

    # the model's classes: a test set's (with its ids), or "object" / the union of several sets
    metadata = model_metadata(cfg)
    classes, ids = metadata.get("thing_classes", None), dataset_ids(metadata)
    return spec_from_values(
        cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES,
        primary_mask_name(cfg),
        cfg.INPUT.FORMAT,
        cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST,
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        classes,
        ids,
    )
