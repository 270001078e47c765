"""
Multi-mask R-CNN R-50-FPN, 1x schedule (90k iterations of 16 images), amodal + visible masks on the
synthetic dataset: the LazyConfig counterpart of ``Base-MultiMask-RCNN-FPN.yaml`` with a dataset, meant
to be imported and changed by other configs, e.g.

    from ..multimask_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train, custom_imports

Like detectron2's, it starts from ImageNet weights with frozen BN; without them (offline machines) use
BN and train every stage, as the quick config does.
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .common.data.multimask_synthetic import dataloader
from .common.models.multimask_rcnn_fpn import model
from .common.optim import SGD as optimizer
from .common.schedule import multistep_with_warmup
from .common.train import custom_imports, train

model.roi_heads.num_classes = 3
model.roi_heads.mask_head.mask_names = ["amodal", "visible"]
# The hidden part of the amodal mask weighs 2 in its loss, as in the quick and Amodal/ configs
# (BENCHMARKS.md section 7c; [] turns it off):
model.roi_heads.mask_head.hidden_weights = [["amodal", "visible", 2.0]]
# The occlusion-aware options (see README), e.g. towers after 2 shared convs with PANet's FC fusion
# (more accurate, 1.33x Mask R-CNN's train step), or visible features feeding the amodal branch:
# model.roi_heads.mask_head.shared_convs = 2; model.roi_heads.mask_head.fc_fusion = ["amodal", "visible"]
# model.roi_heads.mask_head.flow = [["visible", "amodal"]]
# model.roi_heads.mask_head.constraints = [["contains", "amodal", "visible"]]
# model.roi_heads.mask_head.maskiou_on = True

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)
]
dataloader.train.total_batch_size = 16

optimizer.lr = 0.02
lr_multiplier = multistep_with_warmup(90000, steps=(60000, 80000), warmup_iters=1000)

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
train.output_dir = "output/multimask_R_50_FPN_1x"
