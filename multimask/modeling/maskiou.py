"""
MaskIoU branch (after Mask Scoring R-CNN, Huang et al. 2019): it predicts, for each scored mask of an
ROI, the IoU of the predicted mask with its ground truth, and at inference the detection score is
multiplied by it, so that a confident box with a poor mask ranks lower.

Input: the pooled ROI features concatenated with the scored masks' probabilities (of the ROI's class,
detached, max-pooled to the features' size); two 3x3 convs (the second of stride 2), two fc layers,
and one output per scored mask and class. Training target: the IoU of the binarised (> 0.5) predicted
M x M mask with the M x M target, detached; an L2 loss over the annotated (ROI, mask) pairs only.
"""
import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d

__all__ = ["MaskIoUHead", "maskiou_targets", "maskiou_loss"]


class MaskIoUHead(nn.Module):
    def __init__(
        self, in_channels: int, resolution: int, num_masks: int, num_classes: int, conv_dim: int
    ):
        """
        Args:
            in_channels, resolution: channels and side S of the pooled ROI features.
            num_masks: number of scored masks (Ks).
            num_classes: C, outputs per scored mask (1 if class-agnostic).
            conv_dim: channels of the convs; the fc layers have 4x as many.
        """
        super().__init__()
        self.num_masks, self.num_classes = num_masks, num_classes
        self.conv1 = Conv2d(in_channels + num_masks, conv_dim, 3, padding=1, activation=nn.ReLU())
        self.conv2 = Conv2d(conv_dim, conv_dim, 3, stride=2, padding=1, activation=nn.ReLU())
        side = (resolution + 1) // 2
        self.fc1 = nn.Linear(conv_dim * side * side, 4 * conv_dim)
        self.fc2 = nn.Linear(4 * conv_dim, 4 * conv_dim)
        self.predictor = nn.Linear(4 * conv_dim, num_masks * num_classes)
        for layer in (self.conv1, self.conv2):
            weight_init.c2_msra_fill(layer)
        for layer in (self.fc1, self.fc2):
            weight_init.c2_xavier_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: Tensor of shape (R, C_in, S, S), pooled ROI features.
            masks: Tensor of shape (R, Ks, M, M), probabilities of the scored masks.

        Returns:
            Tensor of shape (R, Ks, C), predicted IoU per scored mask and class.
        """
        # the sides are fixed by the config: plain ints, constants when traced for ONNX
        (mh, mw), (fh, fw) = (int(v) for v in masks.shape[-2:]), (int(v) for v in features.shape[-2:])
        if mh % fh == 0 and mw % fw == 0:
            # M = k S (28 = 2 x 14 with the stock heads): k x k windows, which is what adaptive
            # pooling computes then, in a form the ONNX exporter writes (adaptive pooling to a
            # size read from a tensor it does not)
            masks = F.max_pool2d(masks, (mh // fh, mw // fw))
        else:
            masks = F.adaptive_max_pool2d(masks, (fh, fw))
        y = self.conv2(self.conv1(torch.cat([features, masks.to(features.dtype)], dim=1)))
        y = F.relu(self.fc2(F.relu(self.fc1(y.flatten(1)))))
        return self.predictor(y).view(y.shape[0], self.num_masks, self.num_classes)


def maskiou_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Args:
        logits: Tensor of shape (R, Ks, M, M), predicted mask logits.
        targets: Tensor of shape (R, Ks, M, M), bool ground truth.

    Returns:
        Tensor of shape (R, Ks): IoU of (logits > 0) with the targets; 1 where both are empty.
    """
    pred = logits > 0
    inter = (pred & targets).sum(dim=(2, 3))
    union = (pred | targets).sum(dim=(2, 3))
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))


def maskiou_loss(pred: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the annotated pairs; (R, Ks) inputs. No pair gives a connected 0."""
    err = (pred - target.to(pred.dtype)) ** 2
    return torch.where(annotated, err, err.new_zeros(())).sum() / annotated.sum().clamp(min=1)
