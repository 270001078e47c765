"""
The LazyConfig twin of ``multimask_R18_FPN_quick_synthetic.yaml``: amodal + visible masks on the synthetic
dataset, R18-FPN with small heads trained from random init on a CPU in a few minutes. Both files build
the same model (tests/test_lazyconfig.py checks it). Run it with

    python train_net.py --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.py \
        train.max_iter=100 model.roi_heads.mask_head.loss_weights=[1,0.5]
"""
from ..common.data.multimask_synthetic import dataloader
from ..common.models.multimask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep_with_warmup
from ..common.train import custom_imports, train

# From random init FrozenBN diverges: train the BN statistics and every stage.
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "BN"
del model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock (R18/R34) has no such option
model.backbone.bottom_up.freeze_at = 0

model.pixel_std = [57.375, 57.120, 58.395]
model.backbone.out_channels = 64  # and the RPN, box and mask heads' inputs
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (600, 300)
model.proposal_generator.post_nms_topk = (300, 100)
model.proposal_generator.batch_size_per_image = 128

model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.box_predictor.test_topk_per_image = 20
model.roi_heads.mask_head.mask_names = ["amodal", "visible"]
model.roi_heads.mask_head.conv_dims = [64, 64, 64, 64, 64]
# the YAML's head: all convs shared (the towers with FC fusion: shared_convs = 2,
# fc_fusion = ["amodal", "visible"]; BENCHMARKS.md sections 7b and 7c)
model.roi_heads.mask_head.shared_convs = -1
model.roi_heads.mask_head.fc_fusion = []
# the YAML's hidden-part loss weight (BENCHMARKS.md section 7c)
model.roi_heads.mask_head.hidden_weights = [["amodal", "visible", 2.0]]
model.roi_heads.mask_head.maskiou_dim = 64  # CONV_DIM, as the YAML's MaskIoU branch takes it

optimizer.lr = 0.02
lr_multiplier = multistep_with_warmup(400, steps=(300, 370), warmup_iters=50)

train.max_iter = 400
train.clip_gradients.enabled = True  # as the YAML: value clipping at 1.0
train.checkpointer.period = 200
train.eval_period = 0
train.seed = 42
train.output_dir = "output/multimask_R18_FPN_quick_synthetic"
