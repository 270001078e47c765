"""
TorchScript export (results JSON: :mod:`multimask.utils.results_json`).

Exported models (scripting or tracing) take one image, shape (3, h, w) in ``cfg.INPUT.FORMAT``,
already resized as ``DefaultPredictor`` resizes it (``prepare_image``), and return the raw
detections at that size:

* ``pred_boxes`` (N, 4) XYXY, ``scores`` (N,), ``pred_classes`` (N,);
* ``pred_masks`` (N, 1, M, M) and ``pred_multimasks`` (N, K, M, M): mask probabilities in each box.

A scripted model returns them as a dict; a traced one as a tuple in ``TRACED_OUTPUT_NAMES`` order.
``outputs_to_instances`` pastes the masks at the original image size, giving what the eager model
returns.
"""

import copy
import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from detectron2.data import transforms as T
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.structures import Boxes, Instances

from ..modeling.meta_arch import multimask_postprocess

__all__ = [
    "prepare_image",
    "ExportableMultiMaskRCNN",
    "SCRIPTING_FIELDS",
    "TRACED_OUTPUT_NAMES",
    "TRACING_LEN_MODULES",
    "export_scripting",
    "export_tracing",
    "outputs_to_instances",
]

logger = logging.getLogger(__name__)

# Every Instances field the model sets at inference, for detectron2's scripting_with_instances.
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
    "pred_multimasks": torch.Tensor,
}
# Modules whose `len()` calls are patched while tracing (see export_tracing).
TRACING_LEN_MODULES = ["multimask.modeling.base_head", "multimask.modeling.conv_head"]
# TracingAdapter flattens the output dict in sorted key order.
TRACED_OUTPUT_NAMES = ("pred_boxes", "pred_classes", "pred_masks", "pred_multimasks", "scores")


def prepare_image(cfg, image_bgr: np.ndarray) -> torch.Tensor:
    """
    Resize and convert an image as ``DefaultPredictor`` does, giving an exported model's input.

    Args:
        cfg: the model's config (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST, FORMAT).
        image_bgr: shape (H, W, 3), uint8 BGR (as cv2 reads it).

    Returns:
        Tensor of shape (3, h, w), float32, in cfg.INPUT.FORMAT.
    """
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {cfg.INPUT.FORMAT}")
    image = image_bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image_bgr
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


class ExportableMultiMaskRCNN(nn.Module):
    """
    A MultiMaskRCNN with a plain tensor interface: one image in, a dict of raw detections out.
    Scripted as is, and traced through detectron2's TracingAdapter.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: shape (3, h, w), float, in the model's input format, already resized.

        Returns:
            dict with "pred_boxes" (N, 4), "scores" (N,), "pred_classes" (N,), "pred_masks"
            (N, 1, M, M) and "pred_multimasks" (N, K, M, M), at the (h, w) input size.
        """
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return {
            "pred_boxes": inst.pred_boxes.tensor,
            "scores": inst.scores,
            "pred_classes": inst.pred_classes,
            "pred_masks": inst.pred_masks,
            "pred_multimasks": inst.pred_multimasks,
        }


def export_scripting(model: nn.Module) -> torch.jit.ScriptModule:
    """Script an eval-mode MultiMaskRCNN with ``scripting_with_instances``; see the module doc."""
    if model.training:
        raise ValueError("export an eval-mode model: call model.eval() first")
    # On a copy: scripting swaps prepared copies of some submodules (detectron2's ResNet, FPN) into
    # the module tree it is given, which would leave `model` unscriptable a second time.
    return scripting_with_instances(ExportableMultiMaskRCNN(copy.deepcopy(model)), SCRIPTING_FIELDS)


def export_tracing(model: nn.Module, image: torch.Tensor) -> torch.jit.ScriptModule:
    """
    Trace an eval-mode MultiMaskRCNN through ``TracingAdapter`` on a sample image. (To trace it
    another way, do it under ``patch_builtin_len(TRACING_LEN_MODULES)``.)

    Args:
        model: the model, in eval mode.
        image: a sample input, shape (3, h, w) (see ``prepare_image``). It should give detections,
            so that the traced graph runs every branch of the mask head.

    Returns:
        A traced module: image -> tuple of tensors in TRACED_OUTPUT_NAMES order.
    """
    if model.training:
        raise ValueError("export an eval-mode model: call model.eval() first")
    adapter = TracingAdapter(ExportableMultiMaskRCNN(model), (image,))
    # As detectron2 does for its own heads: `len(instances)` in the mask head must stay a traced
    # value, or the split of masks per image is frozen to the sample's number of detections.
    with torch.no_grad(), patch_builtin_len(TRACING_LEN_MODULES):
        # check_trace would trace a second time on the same input; check on new inputs instead
        # (tools/export_model.py does).
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        num = len(traced(image)[TRACED_OUTPUT_NAMES.index("scores")])
    if num == 0:
        logger.warning(
            "The sample image gave no detection while tracing; the traced mask branch may not "
            "generalise. Trace on an image the model detects objects in."
        )
    return traced


def outputs_to_instances(
    outputs: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
    input_size: Tuple[int, int],
    output_size: Optional[Tuple[int, int]] = None,
    primary_index: int = 0,
) -> Instances:
    """
    Turn an exported model's raw outputs into what the eager model returns, masks pasted.

    Args:
        outputs: a scripted model's dict, or a traced model's tuple (TRACED_OUTPUT_NAMES order).
        input_size: (h, w) of the image given to the exported model.
        output_size: (H, W) to paste at, usually the original image size; None = input_size.
        primary_index: index of the PRIMARY mask name (cfg MASK_NAMES.index(PRIMARY)).

    Returns:
        Instances of image size output_size with `pred_boxes`, `scores`, `pred_classes`,
        `pred_multimasks` (N, K, H, W) bool and `pred_masks` (N, H, W) bool.
    """
    if not isinstance(outputs, Mapping):
        if len(outputs) != len(TRACED_OUTPUT_NAMES):
            raise ValueError(
                f"expected {len(TRACED_OUTPUT_NAMES)} traced outputs, got {len(outputs)}"
            )
        outputs = dict(zip(TRACED_OUTPUT_NAMES, outputs))
    inst = Instances(tuple(input_size))
    inst.pred_boxes = Boxes(outputs["pred_boxes"])
    inst.scores = outputs["scores"]
    inst.pred_classes = outputs["pred_classes"]
    inst.pred_multimasks = outputs["pred_multimasks"]
    inst.pred_masks = outputs["pred_masks"]
    height, width = output_size if output_size is not None else input_size
    return multimask_postprocess(inst, height, width, primary_index)
