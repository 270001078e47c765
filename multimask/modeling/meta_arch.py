"""``MultiMaskRCNN``: GeneralizedRCNN whose postprocessing pastes every predicted mask to image size."""
import copy
from typing import Any, Dict, List, Optional

import torch

from detectron2.layers import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.memory import retry_if_cuda_oom

__all__ = ["MultiMaskRCNN", "multimask_postprocess", "given_boxes_postprocess"]

# Key of a model input holding given boxes (see MultiMaskRCNN.inference)
GIVEN_INSTANCES = "given_instances"


def multimask_postprocess(
    results: Instances,
    output_height: int,
    output_width: int,
    primary_index: int = 0,
    mask_threshold: float = 0.5,
) -> Instances:
    """
    detectron2's ``detector_postprocess`` (rescale boxes, clip, drop empty boxes) plus the pasting of all K
    masks of every detection in one batched call.

    Args:
        results: detections at the network input size, with `pred_multimasks` (N, K, M, M) probabilities
            and `pred_masks` (N, 1, M, M) when the mask branch ran.
        output_height, output_width: the size to paste the masks at (the original image size).
        primary_index: which of the K masks `pred_masks` holds; it is pasted once, as part of the K.
        mask_threshold: probability threshold of a mask pixel.

    Returns:
        Instances at the output size; `pred_multimasks` is (N, K, H, W) bool and `pred_masks` (N, H, W) bool,
        the PRIMARY mask (the same pixels as `pred_multimasks[:, primary]`).
    """
    if not results.has("pred_multimasks"):
        return detector_postprocess(results, output_height, output_width, mask_threshold)
    # `pred_masks` is one of the K masks: drop it so detector_postprocess does not paste it a second time.
    if results.has("pred_masks"):
        results.remove("pred_masks")
    results = detector_postprocess(results, output_height, output_width, mask_threshold)
    multimasks = results.pred_multimasks  # filtered like the boxes
    n, k = multimasks.shape[:2]
    boxes = results.pred_boxes.tensor
    pasted = retry_if_cuda_oom(paste_masks_in_image)(
        multimasks.flatten(0, 1),
        boxes.repeat_interleave(k, dim=0),
        results.image_size,
        threshold=mask_threshold,
    )
    results.pred_multimasks = pasted.view(n, k, *pasted.shape[1:])
    results.pred_masks = results.pred_multimasks[:, primary_index]
    return results


def given_boxes_postprocess(
    results: Instances, given: Instances, primary_index: int = 0, mask_threshold: float = 0.5
) -> Instances:
    """
    The predictions for given boxes at the original image size: one per given box, in order,
    with the given boxes, classes and scores (a MaskIoU rescoring is not applied), and the K masks
    pasted on the given boxes. Unlike ``multimask_postprocess`` nothing is rescaled or dropped.

    Args:
        results: the raw results for `given` (same order), `pred_multimasks` (N, K, M, M).
        given: Instances at the original size with `pred_boxes`, `pred_classes` and `scores`.
        primary_index, mask_threshold: as in ``multimask_postprocess``.

    Returns:
        Instances at ``given.image_size``: `pred_boxes`, `pred_classes`, `scores`,
        `pred_multimasks` (N, K, H, W) bool and `pred_masks` (N, H, W) bool.
    """
    out = Instances(given.image_size)
    boxes = given.pred_boxes.tensor
    out.pred_boxes = Boxes(boxes.clone())
    out.pred_classes = given.pred_classes
    out.scores = given.scores
    multimasks = results.pred_multimasks
    n, k = multimasks.shape[:2]
    pasted = retry_if_cuda_oom(paste_masks_in_image)(
        multimasks.flatten(0, 1),
        boxes.repeat_interleave(k, dim=0),
        given.image_size,
        threshold=mask_threshold,
    )
    # detectron2 pastes no mask as uint8: bool, as the pasted ones
    out.pred_multimasks = pasted.to(torch.bool).view(n, k, *given.image_size)
    out.pred_masks = out.pred_multimasks[:, primary_index]
    return out


@META_ARCH_REGISTRY.register()
class MultiMaskRCNN(GeneralizedRCNN):
    """
    GeneralizedRCNN for multi-mask heads. ``GeneralizedRCNN.inference`` calls its own ``_postprocess`` by
    class name, so inference is overridden: it runs without postprocessing, then applies
    ``multimask_postprocess`` so `pred_multimasks` come out at each input's "height" x "width".

    Given boxes: when every input has ``given_instances`` (Instances at the input's "height" x
    "width" with `pred_boxes` XYXY in those original coordinates, `pred_classes` and `scores`,
    as ``multimask.evaluation.make_given_instances`` builds them), the boxes are scaled to the
    network input and run through ``GeneralizedRCNN.inference(..., detected_instances=...)``, and
    each output has exactly one prediction per given box, in order (``given_boxes_postprocess``).
    """

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        given = None
        if detected_instances is None and not torch.jit.is_scripting():
            given = self._given_instances(batched_inputs)
            if given is not None:
                detected_instances = [
                    _to_input_size(g, inp["image"].shape[-2:])
                    for g, inp in zip(given, batched_inputs)
                ]
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        primary_index = getattr(getattr(self.roi_heads, "mask_head", None), "primary_index", 0)
        if given is not None:
            return [
                {"instances": given_boxes_postprocess(res, g.to(self.device), primary_index)}
                for res, g in zip(results, given)
            ]
        processed = []
        for res, inp in zip(results, batched_inputs):
            height = inp.get("height", res.image_size[0])
            width = inp.get("width", res.image_size[1])
            processed.append({"instances": multimask_postprocess(res, height, width, primary_index)})
        return processed

    @staticmethod
    def _given_instances(batched_inputs: List[Dict[str, Any]]) -> Optional[List[Instances]]:
        """The inputs' ``given_instances``: all of them, or None when no input has any."""
        has = [GIVEN_INSTANCES in inp for inp in batched_inputs]
        if not any(has):
            return None
        if not all(has):
            raise ValueError(
                f"{sum(has)} of {len(has)} inputs have '{GIVEN_INSTANCES}': give boxes for every "
                "image of a batch (an empty Instances for none) or for none"
            )
        given = [inp[GIVEN_INSTANCES] for inp in batched_inputs]
        for g, inp in zip(given, batched_inputs):
            h, w = inp["image"].shape[-2:]
            size = (inp.get("height", h), inp.get("width", w))
            if tuple(g.image_size) != tuple(size):
                raise ValueError(
                    f"image_id {inp.get('image_id')}: {GIVEN_INSTANCES} are of a {g.image_size} "
                    f"image, the input's height x width is {size}"
                )
        return given

    def __prepare_scriptable__(self) -> GeneralizedRCNN:
        """
        What ``torch.jit.script`` compiles: this model as a plain GeneralizedRCNN. TorchScript cannot
        compile ``super()``, and a scripted detectron2 model only runs ``inference(...,
        do_postprocess=False)``, where this class adds nothing; paste its masks with
        ``multimask_postprocess``.
        """
        ret = copy.copy(self)
        # Its own dict of (the same) submodules: scripting puts prepared copies of submodules into
        # the dict, which must not reach this eager model.
        ret._modules = self._modules.copy()
        ret.__class__ = _ScriptableMultiMaskRCNN
        return ret


def _to_input_size(given: Instances, input_size) -> Instances:
    """Given instances (original image coordinates) at the network input size, as detectron2's
    ``detected_instances`` are: the inverse of ``detector_postprocess``'s rescaling."""
    h, w = given.image_size
    ih, iw = int(input_size[0]), int(input_size[1])
    scale = given.pred_boxes.tensor.new_tensor([iw / w, ih / h, iw / w, ih / h])
    out = Instances((ih, iw))
    out.pred_boxes = Boxes(given.pred_boxes.tensor * scale)
    out.pred_classes = given.pred_classes
    out.scores = given.scores
    return out


class _ScriptableMultiMaskRCNN(GeneralizedRCNN):
    """GeneralizedRCNN's own forward/inference, as scripted for a MultiMaskRCNN (never run eagerly)."""

    # scripting_with_instances marks `training` Final on the classes it finds before this one is
    # swapped in; without it the training branch would be compiled and fail.
    training: torch.jit.Final[bool]
