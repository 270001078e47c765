"""
The multi-mask loss: per-mask binary cross-entropy over the annotated (ROI, mask) pairs, with the
optional weights of a mask's hidden part (``HIDDEN_WEIGHTS``), and the class selection of the logits.
``BaseMultiMaskHead`` computes its losses with these.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch.nn import functional as F

from detectron2.layers import cat
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

__all__ = ["multi_mask_rcnn_loss", "parse_hidden_weights"]


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
            raise ValueError(
                f"{where}: mask names {unknown} are not in MASK_NAMES {names}. The quick and "
                "Amodal/ configs weigh the hidden part of 'amodal' (outside 'visible'); for other "
                "masks name yours, or set HIDDEN_WEIGHTS [] to turn it off."
            )
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
