"""``MultiMaskROIHeads``: StandardROIHeads whose mask branch is built from ROI_MULTI_MASK_HEAD."""
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from ..config import check_multimask_config, multi_mask_head_cfg
from .base_head import build_multi_mask_head

__all__ = ["MultiMaskROIHeads"]


@ROI_HEADS_REGISTRY.register()
class MultiMaskROIHeads(StandardROIHeads):
    """
    detectron2's StandardROIHeads with a multi-mask head. Box and keypoint branches are unchanged; the mask
    pooler and head read ``MODEL.ROI_MULTI_MASK_HEAD`` (whose keys left at their defaults take
    ``MODEL.ROI_MASK_HEAD``'s values, see ``multi_mask_head_cfg``). The mask branch is built when
    ``MODEL.MASK_ON`` is true.
    """

    # detectron2's export patch marks these Final on StandardROIHeads only, and TorchScript reads a
    # class's own annotations: without them, scripting compiles the absent keypoint branch and fails.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        check_multimask_config(cfg)
        head_cfg = multi_mask_head_cfg(cfg)  # with the keys it inherits from ROI_MASK_HEAD
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = head_cfg.POOLER_RESOLUTION
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI_HEADS.IN_FEATURES {in_features} must have equal channels, got {channels}")
        ret = {"mask_in_features": in_features}
        ret["mask_pooler"] = (
            ROIPooler(
                output_size=resolution,
                scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
                pooler_type=head_cfg.POOLER_TYPE,
            )
            if head_cfg.POOLER_TYPE
            else None
        )
        shape = (
            ShapeSpec(channels=channels.pop(), width=resolution, height=resolution)
            if head_cfg.POOLER_TYPE
            else {f: input_shape[f] for f in in_features}
        )
        ret["mask_head"] = build_multi_mask_head(cfg, shape)
        return ret
