"""
``BaseMultiMaskHead``: what every multi-mask head shares (names, loss weights, the loss over annotated
(ROI, mask) pairs, relation losses, class selection, MaskIoU, output constraints, inference,
single-mask checkpoint init). A head subclasses it, builds its layers and implements ``layers()``.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..config import check_multimask_config, multi_mask_head_cfg, primary_mask_name
from .constraints import apply_constraints, parse_constraints
from .maskiou import MaskIoUHead, maskiou_loss, maskiou_targets
from .relations import parse_relations, relation_losses

__all__ = [
    "BaseMultiMaskHead",
    "multi_mask_rcnn_loss",
    "multi_mask_rcnn_inference",
    "build_multi_mask_head",
]

logger = logging.getLogger(__name__)


def _select_class(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, K, C, M, M) logits -> (R, K, M, M), the channel of each ROI's class (C == 1: agnostic)."""
    if logits.shape[2] == 1:
        return logits[:, :, 0]
    return logits[torch.arange(logits.shape[0], device=logits.device), :, classes]


@torch.jit.unused
def _mask_loss_and_targets(
    pred_mask_logits: torch.Tensor,
    instances: List[Instances],
    mask_names: Sequence[str],
    loss_weights: Sequence[float],
    vis_period: int = 0,
    hidden_weights: Sequence[Tuple[int, int, float]] = (),
):
    """``multi_mask_rcnn_loss``, also returning (class-selected logits (R, K, M, M), bool targets
    (R, K, M, M), annotated (R, K)), or None for the three when there is no ROI."""
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
        return {f"loss_mask_{n}": pred_mask_logits.sum() * 0 for n in mask_names}, None, None, None

    logits = _select_class(pred_mask_logits, cat(gt_classes, dim=0))  # (R, K, M, M)
    targets = cat(gt_masks, dim=0).to(dtype=torch.bool)  # (R, K, M, M)
    annotated_t = cat(annotated, dim=0).to(dtype=torch.bool)  # (R, K)

    # Every (ROI, mask) pair is computed and the pairs that are not annotated are masked out, rather
    # than selected with `logits[annotated[:, j], j]`: a boolean index (and `if sel.any()`) waits
    # for the GPU to know its size. Sum / count is the mean over the annotated pairs; a mask with no
    # annotated ROI gives 0 / 1, a zero that keeps the graph connected.
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if hidden_weights:
        bce = bce * _hidden_pixel_weights(targets, annotated_t, hidden_weights, bce.dtype)
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
    return losses, logits, targets, annotated_t


def _hidden_pixel_weights(
    targets: torch.Tensor,
    annotated: torch.Tensor,
    hidden_weights: Sequence[Tuple[int, int, float]],
    dtype: torch.dtype,
) -> torch.Tensor:
    """
    (R, K, M, M) per-pixel loss weights: 1, except the pixels of mask `whole` outside mask `visible`
    (the hidden part of an occluded object) of ROIs where both are annotated, which weigh `weight`
    in `whole`'s loss. Entries (whole index, visible index, weight) of ``HIDDEN_WEIGHTS``.
    """
    weights = torch.ones(targets.shape, dtype=dtype, device=targets.device)
    for whole, visible, weight in hidden_weights:
        both = (annotated[:, whole] & annotated[:, visible])[:, None, None]
        hidden = targets[:, whole] & ~targets[:, visible] & both
        weights[:, whole] = torch.where(hidden, weights.new_tensor(weight), weights[:, whole])
    return weights


def parse_hidden_weights(
    entries: Sequence, mask_names: Sequence[str]
) -> List[Tuple[int, int, float]]:
    """
    Validate ``HIDDEN_WEIGHTS`` entries ``[whole, visible, weight]`` into (index, index, weight).

    Raises:
        ValueError: naming the entry and what is wrong.
    """
    key = "MODEL.ROI_MULTI_MASK_HEAD.HIDDEN_WEIGHTS"
    names = list(mask_names)
    out: List[Tuple[int, int, float]] = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}] = {entry!r}"
        if isinstance(entry, str) or len(entry) != 3:
            raise ValueError(
                f"{where}: each entry is [whole, visible, weight], e.g. ['amodal', 'visible', 2.0]."
            )
        whole, visible, weight = entry
        unknown = [n for n in (whole, visible) if n not in names]
        if unknown:
            raise ValueError(f"{where}: mask names {unknown} are not in MASK_NAMES {names}.")
        if whole == visible:
            raise ValueError(f"{where}: the whole and the visible mask must differ.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: the weight must be a number > 0.")
        if any(names.index(whole) == w for w, _, _ in out):
            raise ValueError(f"{where}: {whole!r} has a hidden weight already.")
        out.append((names.index(whole), names.index(visible), float(weight)))
    return out


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
    return _mask_loss_and_targets(pred_mask_logits, instances, mask_names, loss_weights, vis_period)[0]


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
        if self.class_selective and not torch.jit.is_scripting():
            logits = self._class_logits(x, instances)  # (R, K, 1, M, M): C = 1 reads as agnostic
        else:
            logits = self.layers(x)
        if self.training:
            return self._losses(x, logits, instances)
        selected = multi_mask_rcnn_inference(logits, instances, self.primary_index, self.constraints)
        if len(self.maskiou_indices) > 0:
            classes = cat([i.pred_classes for i in instances], dim=0)
            iou = self._predict_iou(x, selected, classes).clamp(0, 1).mean(dim=1)  # (R,)
            for inst, factor in zip(instances, iou.split([len(i) for i in instances])):
                inst.scores = inst.scores * factor
        return instances

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
        single = [
            k for k in state_dict
            if k.startswith(prefix) and k[len(prefix):].split(".")[0].rstrip("0123456789")
            in self.single_mask_layers
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
