"""``MultiMaskRCNNConvUpsampleHead``: K named masks per ROI, with its loss and inference helpers."""
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..config import check_multimask_config, multi_mask_head_cfg, primary_mask_name
from .relations import parse_relations, relation_losses

__all__ = [
    "MultiMaskRCNNConvUpsampleHead",
    "multi_mask_rcnn_loss",
    "multi_mask_rcnn_inference",
    "build_multi_mask_head",
]

logger = logging.getLogger(__name__)

# Children of detectron2's MaskRCNNConvUpsampleHead, which a single-mask checkpoint may hold.
_SINGLE_HEAD_LAYERS = ("mask_fcn", "deconv", "predictor")


def _select_class(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, K, C, M, M) logits -> (R, K, M, M), the channel of each ROI's class (C == 1: agnostic)."""
    if logits.shape[2] == 1:
        return logits[:, :, 0]
    return logits[torch.arange(logits.shape[0], device=logits.device), :, classes]


@torch.jit.unused
def multi_mask_rcnn_loss(
    pred_mask_logits: torch.Tensor,
    instances: List[Instances],
    mask_names: Sequence[str],
    loss_weights: Sequence[float],
    vis_period: int = 0,
) -> Dict[str, torch.Tensor]:
    """
    Per-mask binary cross-entropy over the (ROI, mask) pairs whose mask is annotated.

    Args:
        pred_mask_logits: Tensor of shape (R, K, C, M, M), logits; C = 1 for class-agnostic masks.
            R is the number of foreground ROIs in all images.
        instances: per image, the foreground proposals with `proposal_boxes`, `gt_classes` and
            `gt_multimask` (MultiMasks in `mask_names` order), R in total.
        mask_names: the K names.
        loss_weights: K weights.
        vis_period: put prediction/target images into EventStorage every this many iterations (0 = never).

    Returns:
        dict "loss_mask_<name>" -> scalar Tensor; a mask with no annotated ROI gives a zero loss that keeps
        the graph connected.
    """
    m = pred_mask_logits.shape[3]
    if pred_mask_logits.shape[3] != pred_mask_logits.shape[4]:
        raise ValueError(f"mask predictions must be square, got {tuple(pred_mask_logits.shape)}")
    gt_classes, gt_masks, annotated = [], [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        if not inst.has("gt_multimask"):
            raise ValueError(
                "Proposals carry no `gt_multimask`: train multimask models with MultiMaskDatasetMapper "
                "(multimask.data), which turns each annotation's `multimask` dict into `gt_multimask`."
            )
        gtm = inst.gt_multimask
        if tuple(gtm.mask_names) != tuple(mask_names):
            raise ValueError(
                f"gt_multimask has mask names {list(gtm.mask_names)}, the head predicts {list(mask_names)}"
            )
        gt_classes.append(inst.gt_classes.to(dtype=torch.int64))
        gt_masks.append(gtm.crop_and_resize(inst.proposal_boxes.tensor, m).to(pred_mask_logits.device))
        annotated.append(gtm.annotated.to(pred_mask_logits.device))

    if len(gt_masks) == 0:
        return {f"loss_mask_{n}": pred_mask_logits.sum() * 0 for n in mask_names}

    logits = _select_class(pred_mask_logits, cat(gt_classes, dim=0))  # (R, K, M, M)
    targets = cat(gt_masks, dim=0).to(dtype=torch.bool)  # (R, K, M, M)
    annotated_t = cat(annotated, dim=0).to(dtype=torch.bool)  # (R, K)

    # Every (ROI, mask) pair is computed and the pairs that are not annotated are masked out, rather
    # than selected with `logits[annotated[:, j], j]`: a boolean index (and `if sel.any()`) waits
    # for the GPU to know its size. Sum / count is the mean over the annotated pairs; a mask with no
    # annotated ROI gives 0 / 1, a zero that keeps the graph connected.
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    ann_px = annotated_t[:, :, None, None]  # (R, K, 1, 1)
    num_annotated = annotated_t.sum(dim=0)  # (K,) int64
    per_mask = torch.where(ann_px, bce, bce.new_zeros(())).sum(dim=(0, 2, 3)) / (
        num_annotated * (m * m)
    ).clamp(min=1)
    losses = {
        f"loss_mask_{name}": loss_weights[j] * per_mask[j] for j, name in enumerate(mask_names)
    }

    # The metrics' pixel counts of all K masks, (6, K) int64, cross to the host in one transfer: one
    # sync per iteration instead of several per mask.
    with torch.no_grad():
        pred = logits > 0.0
        wrong = (pred != targets) & ann_px
        counts = torch.stack(
            [
                num_annotated,
                (targets & ann_px).sum(dim=(0, 2, 3)),  # positives
                wrong.sum(dim=(0, 2, 3)),
                (wrong & pred).sum(dim=(0, 2, 3)),  # false positives
                (wrong & targets).sum(dim=(0, 2, 3)),  # false negatives
                annotated_t.to(torch.uint8).argmax(dim=0),  # first annotated ROI, for vis_period
            ]
        ).tolist()
    storage = get_event_storage()
    for j, name in enumerate(mask_names):
        num_rois, num_pos, num_wrong, num_fp, num_fn, first = (c[j] for c in counts)
        if num_rois == 0:
            continue
        num_px = num_rois * m * m
        storage.put_scalar(f"mask_rcnn/{name}/accuracy", 1 - num_wrong / num_px)
        storage.put_scalar(f"mask_rcnn/{name}/false_positive", num_fp / max(num_px - num_pos, 1.0))
        storage.put_scalar(f"mask_rcnn/{name}/false_negative", num_fn / max(num_pos, 1.0))
        if vis_period > 0 and storage.iter % vis_period == 0:
            vis = torch.cat(
                [logits[first, j].sigmoid(), targets[first, j].to(logits.dtype)], dim=1
            )
            storage.put_image(f"{name}: left pred, right GT", vis[None].detach().cpu())
    return losses


def multi_mask_rcnn_inference(
    pred_mask_logits: torch.Tensor, pred_instances: List[Instances], primary_index: int
) -> None:
    """
    Set `pred_multimasks` (N, K, M, M) probabilities of each image's predicted class, and `pred_masks`
    (N, 1, M, M), the PRIMARY one, as detectron2's ``mask_rcnn_inference`` does for one mask.

    Args:
        pred_mask_logits: Tensor of shape (R, K, C, M, M), logits; R = detections in all images.
        pred_instances: per image, the detections with `pred_classes`; modified in place.
        primary_index: index of the PRIMARY mask among the K.
    """
    classes = [i.pred_classes for i in pred_instances]
    probs = _select_class(pred_mask_logits, cat(classes, dim=0)).sigmoid()
    num_per_image = [len(i) for i in pred_instances]
    for prob, inst in zip(probs.split(num_per_image, dim=0), pred_instances):
        inst.pred_multimasks = prob
        inst.pred_masks = prob[:, primary_index : primary_index + 1]


def _conv(in_ch: int, out_ch: int, norm: str) -> Conv2d:
    conv = Conv2d(
        in_ch, out_ch, 3, padding=1, bias=not norm, norm=get_norm(norm, out_ch), activation=nn.ReLU()
    )
    weight_init.c2_msra_fill(conv)
    return conv


def _upsample(in_ch: int, out_ch: int) -> List:
    deconv = ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, padding=0)
    weight_init.c2_msra_fill(deconv)
    return [("deconv", deconv), ("deconv_relu", nn.ReLU())]


@ROI_MASK_HEAD_REGISTRY.register()
class MultiMaskRCNNConvUpsampleHead(BaseMaskRCNNHead):
    """
    Mask R-CNN's conv + 2x deconv mask head, predicting K named masks per ROI.

    Layout (``SHARED_CONVS`` = S of ``NUM_CONV`` = N convs):
      * ``trunk``: the S shared convs ``mask_fcn1..S`` (and, when all N are shared, the shared ``deconv``);
      * ``towers.<name>``: per mask, the convs ``mask_fcn{S+1}..N`` and ``deconv`` that are not shared, then
        a 1x1 ``predictor`` with one channel per class (1 if class-agnostic).
    Layer names follow detectron2's MaskRCNNConvUpsampleHead, so a Mask R-CNN checkpoint
    (``roi_heads.mask_head.{mask_fcnI, deconv, predictor}``) initialises every branch (see
    ``_load_single_mask_head``).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        mask_names: Sequence[str],
        conv_dims: Sequence[int],
        conv_norm: str = "",
        shared_convs: int = -1,
        loss_weights: Optional[Sequence[float]] = None,
        primary: Optional[str] = None,
        relations: Sequence = (),
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the pooled ROI features.
            num_classes: number of classes; 0 for class-agnostic masks.
            mask_names: the K mask names, in output order.
            conv_dims: output channels of each conv; the last is also the deconv's. Length NUM_CONV + 1.
            conv_norm: normalization of the convs ("" for none).
            shared_convs: convs shared by all masks; -1 = all (shared deconv too).
            loss_weights: one weight per mask (None = all 1.0).
            primary: name of the mask also set as `pred_masks`; None = the first.
            relations: relation losses between the masks, entries [type, names..., weight]
                (see ``multimask.modeling.relations``); () = none.
            kwargs: ``vis_period`` of BaseMaskRCNNHead.
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("conv_dims must have at least one entry (the deconv's channels)")
        self.mask_names = list(mask_names)
        self.loss_weights = [1.0] * len(self.mask_names) if not loss_weights else list(loss_weights)
        self.primary_index = self.mask_names.index(primary) if primary else 0
        self.relations = parse_relations(relations, self.mask_names)
        num_conv = len(conv_dims) - 1
        shared = num_conv if shared_convs < 0 else shared_convs
        out_ch = max(num_classes, 1)

        trunk, ch = [], input_shape.channels
        for i in range(shared):
            trunk.append((f"mask_fcn{i + 1}", _conv(ch, conv_dims[i], conv_norm)))
            ch = conv_dims[i]
        share_upsample = shared == num_conv
        if share_upsample:
            trunk += _upsample(ch, conv_dims[-1])
            ch = conv_dims[-1]
        self.trunk = nn.Sequential(OrderedDict(trunk))

        towers = OrderedDict()
        for name in self.mask_names:
            layers, tch = [], ch
            for i in range(shared, num_conv):
                layers.append((f"mask_fcn{i + 1}", _conv(tch, conv_dims[i], conv_norm)))
                tch = conv_dims[i]
            if not share_upsample:
                layers += _upsample(tch, conv_dims[-1])
                tch = conv_dims[-1]
            predictor = Conv2d(tch, out_ch, kernel_size=1)
            nn.init.normal_(predictor.weight, std=0.001)
            nn.init.constant_(predictor.bias, 0)
            layers.append(("predictor", predictor))
            towers[name] = nn.Sequential(OrderedDict(layers))
        self.towers = nn.ModuleDict(towers)
        self._register_load_state_dict_pre_hook(self._load_single_mask_head)
        # forward() computes only each ROI's class (see _class_logits), unless a subclass redefines
        # layers(): then its full output is what the loss and inference must see.
        self.class_selective = type(self).layers is MultiMaskRCNNConvUpsampleHead.layers

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_multimask_config(cfg)
        ret = super().from_config(cfg, input_shape)
        head = multi_mask_head_cfg(cfg)  # with the keys it inherits from ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            num_classes=0 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            mask_names=list(head.MASK_NAMES),
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            shared_convs=head.SHARED_CONVS,
            loss_weights=list(head.LOSS_WEIGHTS),
            primary=primary_mask_name(cfg),
            relations=list(head.RELATIONS),
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: pooled ROI features, shape (R, C_in, S, S).

        Returns:
            Tensor of shape (R, K, C, 2S, 2S), mask logits (C = num classes, or 1 if class-agnostic).
        """
        x = self.trunk(x)
        return torch.stack([tower(x) for tower in self.towers.values()], dim=1)

    @torch.jit.unused
    def _class_logits(self, x: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        """
        What ``_select_class(self.layers(x), classes)`` returns, without computing the other classes.

        Each 1x1 predictor would compute C channels of M x M logits per ROI, of which the loss and
        inference read one: applying only the weight row of each ROI's class skips (C - 1) / C of
        every predictor's work and the (R, K, C, M, M) tensor, most of what K masks cost over one
        with a shared trunk (benchmarks/BENCHMARKS.md). Scripted models use ``layers()``.

        Args:
            x: pooled ROI features, shape (R, C_in, S, S).
            instances: as in ``forward``; the ROI classes are their `gt_classes` (training) or
                `pred_classes` (inference).

        Returns:
            Tensor of shape (R, K, 1, 2S, 2S), mask logits of each ROI's class.
        """
        field = "gt_classes" if self.training else "pred_classes"
        per_image = [i.get(field) for i in instances if len(i) > 0]
        classes = cat(per_image, dim=0) if per_image else x.new_zeros((0,), dtype=torch.int64)
        x = self.trunk(x)
        out = []
        for tower in self.towers.values():
            y = x
            for layer in list(tower.children())[:-1]:  # the tower's own convs and deconv, if any
                y = layer(y)
            pred = tower.predictor
            idx = classes if pred.out_channels > 1 else torch.zeros_like(classes)
            logits = torch.bmm(pred.weight.flatten(1)[idx][:, None], y.flatten(2))  # (R, 1, M*M)
            out.append((logits + pred.bias[idx][:, None, None]).view(len(y), 1, *y.shape[2:]))
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        """
        Args:
            x: pooled ROI features, shape (R, C_in, S, S).
            instances: per image, foreground proposals (training) or detections (inference), R in total.

        Returns:
            Training: dict "loss_mask_<name>" (and "loss_rel_*" of the relations) -> scalar.
            Inference: `instances` with `pred_multimasks` (N, K, M, M) and `pred_masks` (N, 1, M, M) set.
        """
        if self.class_selective and not torch.jit.is_scripting():
            logits = self._class_logits(x, instances)  # (R, K, 1, M, M): C = 1 reads as agnostic
        else:
            logits = self.layers(x)
        if self.training:
            losses = multi_mask_rcnn_loss(
                logits, instances, self.mask_names, self.loss_weights, self.vis_period
            )
            if self.relations:  # on every foreground ROI, annotated or not
                classes = cat([i.gt_classes for i in instances], dim=0)
                losses.update(relation_losses(_select_class(logits, classes), self.relations))
            return losses
        multi_mask_rcnn_inference(logits, instances, self.primary_index)
        return instances

    def _load_single_mask_head(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """
        Rename a single-mask head's weights (``prefix + mask_fcnI/deconv/predictor``) to every branch
        that has that layer: the shared ``trunk`` or each mask's tower. Weights whose shape differs (e.g. a
        predictor for another number of classes) are skipped with a warning, as detectron2 does.
        """
        own = self.state_dict()
        single = [
            k for k in state_dict
            if k.startswith(prefix) and k[len(prefix):].split(".")[0].rstrip("0123456789")
            in _SINGLE_HEAD_LAYERS
        ]
        if not single:
            return
        loaded, skipped = [], []
        for key in single:
            value = state_dict.pop(key)
            rel = key[len(prefix):]
            targets = [t for t in [f"trunk.{rel}"] if t in own]
            targets = targets or [f"towers.{n}.{rel}" for n in self.mask_names if f"towers.{n}.{rel}" in own]
            for t in targets:
                if own[t].shape != value.shape:
                    skipped.append(f"{prefix}{t}: checkpoint {tuple(value.shape)} vs model {tuple(own[t].shape)}")
                    continue
                state_dict[prefix + t] = value
                loaded.append(t)
        logger.info(
            f"Initialised {len(loaded)} multi-mask head tensors from a single-mask head checkpoint "
            f"({len(single)} tensors, copied to every branch of {self.mask_names})."
        )
        for s in skipped:
            logger.warning(f"Skip loading parameter {s} (shape mismatch).")


def build_multi_mask_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the head named by ``cfg.MODEL.ROI_MULTI_MASK_HEAD.NAME`` from ROI_MASK_HEAD_REGISTRY."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MULTI_MASK_HEAD.NAME)(cfg, input_shape)
