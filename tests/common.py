"""Helpers shared by the tests: tiny multi-mask configs and models, hand-made inputs."""
from typing import List, Sequence

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from multimask import MultiMasks, add_multimask_config

REPO_ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__file__))


def get_tiny_config(mask_names: Sequence[str] = ("amodal", "visible"), num_classes: int = 3):
    """A CPU multi-mask R-CNN small enough for unit tests (R18-FPN, 32-channel heads, 64 px inputs)."""
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_file(f"{REPO_ROOT}/configs/Base-MultiMask-RCNN-FPN.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = len(mask_names)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = list(mask_names)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_CONV = 2
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    return cfg


def get_tiny_model(cfg=None):
    torch.manual_seed(0)
    return build_model(cfg or get_tiny_config())


def random_boxes(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) XYXY boxes of at least 8 px inside a size x size image."""
    xy = torch.rand(n, 2, generator=generator) * (size - 16)
    wh = 8 + torch.rand(n, 2, generator=generator) * (size / 2)
    return torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)


def make_training_input(
    size: int, num_instances: int, mask_names: Sequence[str], seed: int, annotated=None
) -> dict:
    """A random image with box-shaped masks: the K masks of each instance are nested sub-boxes."""
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(num_instances, size, g)
    masks = torch.zeros(num_instances, len(mask_names), size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        for k in range(len(mask_names)):
            shrink = k * (x1 - x0) // 4
            masks[i, k, y0 : y1 + 1, x0 + shrink : x1 + 1] = True
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 3, (num_instances,), generator=g)
    inst.gt_multimask = MultiMasks(masks, mask_names, annotated)
    image = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
    return {"image": image, "instances": inst, "height": size, "width": size}


def polygon_of_box(x0: float, y0: float, x1: float, y1: float) -> List[List[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
