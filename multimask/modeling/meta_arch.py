"""``MultiMaskRCNN``: GeneralizedRCNN whose postprocessing pastes every predicted mask to image size."""
import copy
from typing import Dict, List, Optional

import torch

from detectron2.layers import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances
from detectron2.utils.memory import retry_if_cuda_oom

__all__ = ["MultiMaskRCNN", "multimask_postprocess"]


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


@META_ARCH_REGISTRY.register()
class MultiMaskRCNN(GeneralizedRCNN):
    """
    GeneralizedRCNN for multi-mask heads. ``GeneralizedRCNN.inference`` calls its own ``_postprocess`` by
    class name, so inference is overridden: it runs without postprocessing, then applies
    ``multimask_postprocess`` so `pred_multimasks` come out at each input's "height" x "width".
    """

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        primary_index = getattr(getattr(self.roi_heads, "mask_head", None), "primary_index", 0)
        processed = []
        for res, inp in zip(results, batched_inputs):
            height = inp.get("height", res.image_size[0])
            width = inp.get("width", res.image_size[1])
            processed.append({"instances": multimask_postprocess(res, height, width, primary_index)})
        return processed

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


class _ScriptableMultiMaskRCNN(GeneralizedRCNN):
    """GeneralizedRCNN's own forward/inference, as scripted for a MultiMaskRCNN (never run eagerly)."""

    # scripting_with_instances marks `training` Final on the classes it finds before this one is
    # swapped in; without it the training branch would be compiled and fail.
    training: torch.jit.Final[bool]
