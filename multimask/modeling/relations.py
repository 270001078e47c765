"""
Relation losses between the K predicted masks of an ROI, declared in the config.

A relation states how masks of the same object relate, independently of any ground truth, so it also
constrains ROIs whose masks are not annotated. ``MODEL.ROI_MULTI_MASK_HEAD.RELATIONS`` is a list of
entries ``[type, mask names..., weight]``:

* ``["containment", A, B, w]``: mask A lies inside mask B (e.g. visible inside amodal). The loss is the
  mean over pixels of ``relu(P(A) - P(B))``: only pixels where A is more likely than B cost anything.
* ``["difference", C, B, A, w]``: mask C is B minus A (e.g. occluded = amodal - visible). The loss is the
  mean over pixels of ``|P(C) - relu(P(B) - P(A))|``.

P(.) is the sigmoid of the mask logits of each foreground ROI's class. For the difference, the target
``relu(P(B) - P(A))`` equals B AND NOT A exactly when the masks are binary and A is inside B, and the
L1 distance is bounded by 1 per pixel and sends gradient to all three masks; a BCE of P(C) against that
soft target would treat B and A as ground truth for C only, and its gradient w.r.t. the target is
unbounded near 0 and 1. Each loss is multiplied by its weight and reported as
``loss_rel_<type>_<names joined by _>``, e.g. ``loss_rel_containment_visible_amodal``.
"""
from collections.abc import Sequence as SequenceABC
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch

__all__ = ["RELATION_ARITY", "MaskRelation", "parse_relations", "relation_losses"]

# Number of mask names each relation type takes.
RELATION_ARITY = {"containment": 2, "difference": 3}
_KEY = "MODEL.ROI_MULTI_MASK_HEAD.RELATIONS"


class MaskRelation(NamedTuple):
    """A parsed relation: its type, the indices and names of its masks (in the type's order), weight."""

    type: str
    indices: Tuple[int, ...]
    names: Tuple[str, ...]
    weight: float

    @property
    def loss_name(self) -> str:
        return "loss_rel_" + "_".join((self.type,) + self.names)


def _describe(entry) -> str:
    return (
        repr(list(entry))
        if isinstance(entry, SequenceABC) and not isinstance(entry, str)
        else repr(entry)
    )


def check_entry_names(
    where: str, kind: str, names: List[str], arity: int, mask_names: List[str], rest: str = ""
) -> None:
    """
    Raise ValueError, naming the config entry (`where`), unless the `names` of an entry of type
    `kind` are `arity` distinct names of `mask_names`; `rest` says what else the entry holds ("and a
    weight"). Shared by the relation and the constraint entries.
    """
    if len(names) != arity:
        rest = f" {rest}" if rest else ""
        raise ValueError(
            f"{where}: '{kind}' takes {arity} mask names{rest}, got {len(names)} names {names}."
        )
    unknown = [n for n in names if n not in mask_names]
    if unknown:
        raise ValueError(f"{where}: mask names {unknown} are not in MASK_NAMES {mask_names}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: an entry needs distinct masks, got {names}.")


def parse_relations(relations: Sequence, mask_names: Sequence[str]) -> List[MaskRelation]:
    """
    Validate config entries and turn them into ``MaskRelation`` s.

    Args:
        relations: entries ``[type, name, ..., weight]`` (lists or tuples; omegaconf lists work too), or
            already parsed ``MaskRelation`` s.
        mask_names: the K mask names the head predicts.

    Returns:
        The relations, in the given order.

    Raises:
        ValueError: naming the entry and what is wrong (unknown type or mask name, wrong number of
            names, weight not a non-negative number, duplicate relation).
    """
    mask_names = list(mask_names)
    parsed: List[MaskRelation] = []
    for i, entry in enumerate(relations):
        if isinstance(entry, MaskRelation):
            entry = [entry.type, *entry.names, entry.weight]
        where = f"{_KEY}[{i}] = {_describe(entry)}"
        if not isinstance(entry, SequenceABC) or isinstance(entry, str) or len(entry) < 2:
            raise ValueError(
                f"{where}: each relation must be a list [type, mask names..., weight], e.g. "
                "['containment', 'visible', 'amodal', 0.1]."
            )
        rtype, names, weight = entry[0], list(entry[1:-1]), entry[-1]
        if rtype not in RELATION_ARITY:
            raise ValueError(
                f"{where}: unknown relation type {rtype!r}; known: {sorted(RELATION_ARITY)}."
            )
        check_entry_names(where, rtype, names, RELATION_ARITY[rtype], mask_names, "and a weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{where}: the last element must be a weight >= 0, got {weight!r}.")
        rel = MaskRelation(
            rtype, tuple(mask_names.index(n) for n in names), tuple(names), float(weight)
        )
        if any(r.loss_name == rel.loss_name for r in parsed):
            raise ValueError(f"{where}: relation {rel.loss_name} is declared twice.")
        parsed.append(rel)
    return parsed


def _containment(inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    return torch.relu(inner - outer).mean()


def _difference(diff: torch.Tensor, whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    return (diff - torch.relu(whole - part)).abs().mean()


_LOSSES = {"containment": _containment, "difference": _difference}


@torch.jit.unused
def relation_losses(
    mask_logits: torch.Tensor, relations: Sequence[MaskRelation]
) -> Dict[str, torch.Tensor]:
    """
    The weighted relation losses on class-selected mask logits.

    Args:
        mask_logits: Tensor of shape (R, K, M, M), logits of each ROI's class for the K masks
            (R may be 0).
        relations: parsed relations (``parse_relations``).

    Returns:
        dict ``MaskRelation.loss_name`` -> scalar Tensor (0 with a connected graph when R == 0).
    """
    if len(relations) == 0:
        return {}
    if mask_logits.shape[0] == 0:
        return {r.loss_name: mask_logits.sum() * 0 for r in relations}
    probs = mask_logits.sigmoid()
    return {
        r.loss_name: r.weight * _LOSSES[r.type](*(probs[:, j] for j in r.indices))
        for r in relations
    }
