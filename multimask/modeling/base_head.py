"""
``BaseMultiMaskHead``: what every multi-mask head shares (names, loss weights, the loss over annotated
(ROI, mask) pairs, relation losses, class selection, MaskIoU, output constraints, inference,
single-mask checkpoint init). A head subclasses it, builds its layers and implements ``layers()``.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances

from ..config import check_multimask_config, multi_mask_head_cfg, primary_mask_name
from .constraints import apply_constraints, parse_constraints
from .maskiou import MaskIoUHead, maskiou_loss, maskiou_targets
from .mask_loss import (
    _mask_loss_and_targets,
    _select_class,
    multi_mask_rcnn_loss,
    parse_hidden_weights,
)
from .relations import parse_relations, relation_losses

__all__ = [
    "BaseMultiMaskHead",
    "multi_mask_rcnn_loss",
    "multi_mask_rcnn_inference",
    "build_multi_mask_head",
]

logger = logging.getLogger(__name__)


def multi_mask_rcnn_inference(
    pred_mask_logits: torch.Tensor,
    pred_instances: List[Instances],
    primary_index: int,
    constraints: Optional[List[List[int]]] = None,
) -> torch.Tensor:
    """
    Set `pred_multimasks` (N, K, M, M) probabilities of each image's predicted class, and `pred_masks`
    (N, 1, M, M), the PRIMARY one, as detectron2's ``mask_rcnn_inference`` does for one mask.

    Args:
        pred_mask_logits: Tensor of shape (R, K, C, M, M), logits; R = detections in all images.
        pred_instances: per image, the detections with `pred_classes`; modified in place.
        primary_index: index of the PRIMARY mask among the K.
        constraints: parsed output constraints (``multimask.modeling.constraints``) applied to the
            probabilities; None or [] = none.

    Returns:
        Tensor of shape (R, K, M, M), the class-selected logits (before constraints).
    """
    classes = [i.pred_classes for i in pred_instances]
    logits = _select_class(pred_mask_logits, cat(classes, dim=0))
    probs = logits.sigmoid()
    if constraints is not None and len(constraints) > 0:
        probs = apply_constraints(probs, constraints)
    num_per_image = [len(i) for i in pred_instances]
    for prob, inst in zip(probs.split(num_per_image, dim=0), pred_instances):
        inst.pred_multimasks = prob
        inst.pred_masks = prob[:, primary_index : primary_index + 1]
    return logits


class BaseMultiMaskHead(BaseMaskRCNNHead):
    """
    The base of multi-mask heads. A subclass builds its layers in ``__init__`` (after calling
    ``super().__init__(input_shape, **kwargs)``; ``self.mask_names`` and ``self.num_mask_channels``
    (C: classes, or 1 if class-agnostic) are set) and implements ``layers(x) -> (R, K, C, M, M)`` mask
    logits. Its ``from_config`` calls ``super().from_config`` and adds its own keys. Everything
    else (losses, inference, MaskIoU, constraints) is done here from those logits.

    ``layers()`` is never called without ROIs: a batch with none gets (0, K, C, M, M) logits here
    (M = ``self.mask_size``), in training joined to every parameter with a zero weight.

    A subclass may also set ``self.class_selective = True`` and implement ``_class_logits`` to compute
    only each ROI's class (see ``MultiMaskRCNNConvUpsampleHead``).
    """

    # Read by scripted inference: an empty list needs its type declared.
    constraints: List[List[int]]
    maskiou_indices: List[int]
    hidden_weights: List[Tuple[int, int, float]]

    def __init_subclass__(cls, **kwargs):
        # TorchScript reads the attribute types of a module's own class only: give every head the
        # annotations of the multi-mask heads it derives from.
        super().__init_subclass__(**kwargs)
        merged = {}
        for c in reversed(cls.__mro__):
            if issubclass(c, BaseMultiMaskHead):
                merged.update(c.__dict__.get("__annotations__", {}))
        cls.__annotations__ = merged

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        mask_names: Sequence[str],
        loss_weights: Optional[Sequence[float]] = None,
        primary: Optional[str] = None,
        relations: Sequence = (),
        constraints: Sequence = (),
        maskiou_on: bool = False,
        maskiou_weight: float = 1.0,
        maskiou_masks: Sequence[str] = (),
        maskiou_dim: int = 256,
        hidden_weights: Sequence = (),
        mask_size: Optional[int] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the pooled ROI features.
            num_classes: number of classes; 0 for class-agnostic masks.
            mask_names: the K mask names, in output order.
            loss_weights: one weight per mask (None or [] = all 1.0).
            primary: name of the mask also set as `pred_masks`; None = the first.
            relations: relation losses, entries [type, names..., weight] (``relations.py``).
            constraints: inference constraints, entries [type, names...] (``constraints.py``).
            maskiou_on: add a MaskIoU branch whose predicted IoU multiplies the detection scores.
            maskiou_weight: weight of ``loss_maskiou``.
            maskiou_masks: names of the masks it scores; () = the primary one.
            maskiou_dim: channels of its convs (its fc layers have 4x as many).
            hidden_weights: entries [whole, visible, weight]: in whole's loss, its pixels outside
                visible (the hidden part) weigh `weight`.
            mask_size: M, the side of the masks ``layers()`` predicts; None = twice the pooled
                side (``input_shape.height``, i.e. POOLER_RESOLUTION: 14 -> 28), as a 2x deconv
                gives. A head that upsamples otherwise passes its own.
            kwargs: ``vis_period`` (and ``loss_weight``) of BaseMaskRCNNHead.
        """
        super().__init__(**kwargs)
        self.mask_names = list(mask_names)
        self.num_classes = num_classes
        self.num_mask_channels = max(num_classes, 1)
        self.loss_weights = [1.0] * len(self.mask_names) if not loss_weights else list(loss_weights)
        if len(self.loss_weights) != len(self.mask_names):
            raise ValueError(f"loss_weights {self.loss_weights} must have one entry per mask {self.mask_names}")
        self.primary_index = self.mask_names.index(primary) if primary else 0
        self.relations = parse_relations(relations, self.mask_names)
        self.constraints = parse_constraints(constraints, self.mask_names)
        self.hidden_weights = parse_hidden_weights(hidden_weights, self.mask_names)
        self.class_selective = False
        self.mask_size = int(mask_size) if mask_size is not None else 2 * input_shape.height
        self.maskiou_weight = maskiou_weight
        self.maskiou_indices: List[int] = []
        if maskiou_on:
            scored = list(maskiou_masks) or [self.mask_names[self.primary_index]]
            unknown = [n for n in scored if n not in self.mask_names]
            if unknown:
                raise ValueError(
                    f"MODEL.ROI_MULTI_MASK_HEAD.MASKIOU_MASKS {unknown} are not in MASK_NAMES {self.mask_names}."
                )
            self.maskiou_indices = [self.mask_names.index(n) for n in scored]
            self.maskiou_head = MaskIoUHead(
                input_shape.channels, input_shape.height, len(scored), self.num_mask_channels, maskiou_dim
            )
        self._register_load_state_dict_pre_hook(self._load_single_mask_head)

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_multimask_config(cfg)
        ret = super().from_config(cfg, input_shape)
        head = multi_mask_head_cfg(cfg)  # with the keys it inherits from ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            num_classes=0 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            mask_names=list(head.MASK_NAMES),
            loss_weights=list(head.LOSS_WEIGHTS),
            primary=primary_mask_name(cfg),
            relations=list(head.RELATIONS),
            constraints=[c if isinstance(c, str) else list(c) for c in head.CONSTRAINTS],
            maskiou_on=head.MASKIOU_ON,
            maskiou_weight=head.MASKIOU_WEIGHT,
            maskiou_masks=list(head.MASKIOU_MASKS),
            maskiou_dim=head.CONV_DIM,
            hidden_weights=[list(e) for e in head.HIDDEN_WEIGHTS],
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: pooled ROI features, shape (R, C_in, S, S).

        Returns:
            Tensor of shape (R, K, C, M, M), mask logits (C = num classes, or 1 if class-agnostic).
        """
        # the one method a head must define (the base class has no layers of its own)
        raise NotImplementedError(f"{type(self).__name__} must implement layers(x)")

    @torch.jit.unused
    def _class_logits(self, x: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        """(R, K, 1, M, M): the logits of each ROI's class only; used when ``class_selective``."""
        # only heads that set class_selective = True get here, and they must define it
        raise NotImplementedError(
            f"{type(self).__name__} sets class_selective but does not implement _class_logits"
        )

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        """
        Args:
            x: pooled ROI features, shape (R, C_in, S, S).
            instances: per image, foreground proposals (training) or detections (inference), R in total.

        Returns:
            Training: dict "loss_mask_<name>" (and "loss_rel_*", "loss_maskiou") -> scalar.
            Inference: `instances` with `pred_multimasks` (N, K, M, M) and `pred_masks` (N, 1, M, M) set
            (and `scores` multiplied by the predicted mask IoU when MaskIoU is on).
        """
        if not torch.jit.is_tracing() and x.shape[0] == 0:
            # No ROI in the whole batch: answered here, so that no head's layers() must handle it.
            # Not while tracing, which would freeze the branch of the sample into the graph.
            logits = self._zero_roi_logits(x)
        elif self.class_selective and not torch.jit.is_scripting():
            logits = self._class_logits(x, instances)  # (R, K, 1, M, M): C = 1 reads as agnostic
            self._check_logits(logits, x, 1)
        else:
            logits = self.layers(x)
            if not torch.jit.is_scripting():
                self._check_logits(logits, x, self.num_mask_channels)
        if self.training:
            return self._losses(x, logits, instances)
        selected = multi_mask_rcnn_inference(logits, instances, self.primary_index, self.constraints)
        if len(self.maskiou_indices) > 0:
            classes = cat([i.pred_classes for i in instances], dim=0)
            iou = self._predict_iou(x, selected, classes).clamp(0, 1).mean(dim=1)  # (R,)
            for inst, factor in zip(instances, iou.split([len(i) for i in instances])):
                inst.scores = inst.scores * factor
        return instances

    def _zero_roi_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(0, K, C, M, M) logits for a batch without ROIs; in training, joined to every trainable
        parameter with weight 0, so that each gets a (zero) gradient, as DDP needs of every step."""
        shape = (0, len(self.mask_names), self.num_mask_channels, self.mask_size, self.mask_size)
        logits = x.new_zeros(shape)
        if self.training and not torch.jit.is_scripting():
            logits = logits + self._zero_from_parameters(x)
        return logits

    @torch.jit.unused
    def _zero_from_parameters(self, x: torch.Tensor) -> torch.Tensor:
        zero = x.sum() * 0
        for p in self.parameters():
            if p.requires_grad:
                zero = zero + p.sum() * 0
        return zero

    @torch.jit.unused
    def _check_logits(self, logits: torch.Tensor, x: torch.Tensor, channels: int) -> None:
        expected = (x.shape[0], len(self.mask_names), channels, self.mask_size, self.mask_size)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}.layers() returned mask logits of shape "
                f"{tuple(logits.shape)} for {x.shape[0]} ROIs, expected (R, K, C, M, M) = "
                f"{expected} (K = len(mask_names), C = num_mask_channels, M = mask_size; a head "
                f"whose masks are not twice the pooled side passes mask_size= to "
                f"BaseMultiMaskHead.__init__)"
            )

    @torch.jit.unused  # scripting with MaskIoU on is not supported (tracing is)
    def _predict_iou(self, x: torch.Tensor, selected: torch.Tensor, classes: torch.Tensor):
        """(R, len(maskiou_indices)) predicted IoU of the scored masks of each ROI's class."""
        masks = selected[:, self.maskiou_indices].sigmoid().detach()
        pred = self.maskiou_head(x, masks)  # (R, Ks, C)
        if pred.shape[2] == 1:
            return pred[:, :, 0]
        return pred[torch.arange(pred.shape[0], device=pred.device), :, classes]

    @torch.jit.unused
    def _losses(self, x, logits, instances) -> Dict[str, torch.Tensor]:
        losses, selected, targets, annotated = _mask_loss_and_targets(
            logits,
            instances,
            self.mask_names,
            self.loss_weights,
            self.vis_period,
            self.hidden_weights,
        )
        per_image = [i.gt_classes for i in instances if len(i) > 0]
        classes = cat(per_image, dim=0) if per_image else x.new_zeros((0,), dtype=torch.int64)
        if self.relations:  # on every foreground ROI, annotated or not
            losses.update(relation_losses(_select_class(logits, classes), self.relations))
        if self.maskiou_indices:
            if selected is None:
                losses["loss_maskiou"] = sum(p.sum() * 0 for p in self.maskiou_head.parameters())
            else:
                idx = self.maskiou_indices
                target = maskiou_targets(selected[:, idx].detach(), targets[:, idx])
                pred = self._predict_iou(x, selected, classes)
                losses["loss_maskiou"] = self.maskiou_weight * maskiou_loss(pred, target, annotated[:, idx])
        return losses

    def _single_mask_targets(self, rel: str, own: Dict[str, torch.Tensor]) -> List[str]:
        """Where a single-mask head's tensor ``rel`` (e.g. "mask_fcn1.weight") goes in this head:
        the shared ``trunk`` if it has that layer, else every mask's ``towers.<name>``."""
        if f"trunk.{rel}" in own:
            return [f"trunk.{rel}"]
        return [f"towers.{n}.{rel}" for n in self.mask_names if f"towers.{n}.{rel}" in own]

    # Children of detectron2's MaskRCNNConvUpsampleHead, which a single-mask checkpoint may hold;
    # a head with other layer names overrides this and ``_single_mask_targets``.
    single_mask_layers = ("mask_fcn", "deconv", "predictor")

    def _load_single_mask_head(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """
        Rename a single-mask head's weights (``prefix + mask_fcnI/deconv/predictor``) to every branch
        that has that layer (``_single_mask_targets``). A conv that takes more input channels here (a
        FLOW target) gets the checkpoint's weights on its first channels and zeros on the others, so it
        computes what the single-mask layer computes; other shape differences (e.g. a predictor for
        another number of classes) are skipped with a warning, as detectron2 does.
        """
        own = self.state_dict()
        # a key this head has itself (a head of its own whose layer is named `predictor`) is its own
        single = [
            k for k in state_dict
            if k.startswith(prefix) and k[len(prefix):] not in own
            and k[len(prefix):].split(".")[0].rstrip("0123456789") in self.single_mask_layers
        ]
        if not single:
            return
        loaded, skipped = [], []
        for key in single:
            value = state_dict.pop(key)
            rel = key[len(prefix):]
            for t in self._single_mask_targets(rel, own):
                shape, v = own[t].shape, value
                if _widened(v.shape, shape):
                    v = torch.cat([v, v.new_zeros((shape[0], shape[1] - v.shape[1], *shape[2:]))], 1)
                if shape != v.shape:
                    skipped.append(f"{prefix}{t}: checkpoint {tuple(v.shape)} vs model {tuple(shape)}")
                    continue
                state_dict[prefix + t] = v
                loaded.append(t)
        logger.info(
            f"Initialised {len(loaded)} multi-mask head tensors from a single-mask head checkpoint "
            f"({len(single)} tensors, copied to every branch of {self.mask_names})."
        )
        for s in skipped:
            logger.warning(f"Skip loading parameter {s} (shape mismatch).")


def _widened(src: torch.Size, dst: torch.Size) -> bool:
    """A conv weight (out, in, kh, kw) that differs from ``dst`` only by fewer input channels."""
    return len(src) == len(dst) == 4 and src[0] == dst[0] and src[2:] == dst[2:] and src[1] < dst[1]


def build_multi_mask_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the head named by ``cfg.MODEL.ROI_MULTI_MASK_HEAD.NAME`` from ROI_MASK_HEAD_REGISTRY."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MULTI_MASK_HEAD.NAME)(cfg, input_shape)
