"""
The multi-mask R-CNN R-50-FPN model as a LazyConfig: detectron2's own model-zoo Mask R-CNN FPN
(``common/models/mask_rcnn_fpn.py``) with the multi-mask meta-architecture, ROI heads and mask head.
It builds the same modules (names, shapes, frozen stages) as ``configs/Base-MultiMask-RCNN-FPN.yaml``.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from multimask.modeling import MultiMaskRCNN, MultiMaskRCNNConvUpsampleHead, MultiMaskROIHeads

model = get_config("common/models/mask_rcnn_fpn.py").model
model._target_ = MultiMaskRCNN
model.backbone.bottom_up.freeze_at = 2  # the YAML default (MODEL.BACKBONE.FREEZE_AT)
# the heads' input channels follow the FPN's, so that changing model.backbone.out_channels is enough
model.proposal_generator.head.in_channels = "${...backbone.out_channels}"
model.roi_heads.box_head.input_shape.channels = "${....backbone.out_channels}"
model.roi_heads._target_ = MultiMaskROIHeads
model.roi_heads.mask_head = L(MultiMaskRCNNConvUpsampleHead)(
    input_shape=ShapeSpec(channels="${....backbone.out_channels}", width=14, height=14),
    # 0 = class-agnostic masks (CLS_AGNOSTIC_MASK)
    num_classes="${..num_classes}",
    mask_names=["primary", "secondary"],
    # NUM_CONV convs of CONV_DIM channels, then the deconv's channels
    conv_dims=[256, 256, 256, 256, 256],
    conv_norm="",
    shared_convs=-1,
    # [] = 1.0 for every mask
    loss_weights=[],
    # None = the first of mask_names
    primary=None,
    # e.g. [["containment", "visible", "amodal", 0.1]]; see multimask/modeling/relations.py
    relations=[],
    # [source, target] pairs: the source branch's features feed the target's (FLOW; needs
    # shared_convs in [0, NUM_CONV - 1]), e.g. [["visible", "amodal"]]; see multimask/modeling/conv_head.py
    flow=[],
    # mask names with PANet's fully-connected fusion (FC_FUSION; needs shared_convs in
    # [0, NUM_CONV - 1]), e.g. ["amodal"]; see multimask/modeling/conv_head.py
    fc_fusion=[],
    # channels of the fusion's conv; 0 = half of conv_dims[-2], as in PANet
    fc_fusion_dim=0,
    # inference constraints, e.g. [["contains", "amodal", "visible"]]; see multimask/modeling/constraints.py
    constraints=[],
    # loss weight of the hidden part: [whole, visible, weight] entries, e.g. [["amodal", "visible", 2]]
    hidden_weights=[],
    # Mask Scoring R-CNN's MaskIoU branch (MASKIOU_ON, MASKIOU_WEIGHT, MASKIOU_MASKS: [] = primary)
    maskiou_on=False,
    maskiou_weight=1.0,
    maskiou_masks=[],
    # channels of its convs (CONV_DIM in the YAML); its fc layers have 4x as many
    maskiou_dim=256,
)
