from .base_head import (
    BaseMultiMaskHead,
    build_multi_mask_head,
    multi_mask_rcnn_inference,
    multi_mask_rcnn_loss,
)
from .conv_head import MultiMaskRCNNConvUpsampleHead, parse_fc_fusion, parse_flow  # registers the head
from .constraints import apply_constraints, parse_constraints
from .meta_arch import MultiMaskRCNN, multimask_postprocess
from .roi_heads import MultiMaskROIHeads
from .relations import MaskRelation, parse_relations, relation_losses
