from .mask_head import (
    MultiMaskRCNNConvUpsampleHead,
    build_multi_mask_head,
    multi_mask_rcnn_inference,
    multi_mask_rcnn_loss,
)
from .meta_arch import MultiMaskRCNN, multimask_postprocess
from .roi_heads import MultiMaskROIHeads
from .relations import MaskRelation, parse_relations, relation_losses
