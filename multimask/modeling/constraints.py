"""
Output constraints: relations between the K masks of an object enforced on the predicted
probabilities at inference (``MODEL.ROI_MULTI_MASK_HEAD.CONSTRAINTS``), not learned. Entries:

* ``["contains", OUTER, INNER]``: OUTER contains INNER; OUTER becomes ``max(OUTER, INNER)`` pixel-wise
  (e.g. amodal ⊇ visible: a pixel seen as visible is part of the amodal mask).
* ``["difference", C, B, A]``: C = B minus A; C becomes ``clamp(B - A, min=0)`` (e.g. occluded = amodal -
  visible), replacing the predicted C.

They apply in the listed order, each to the result of the previous ones, so list ``contains`` before a
``difference`` that reads the mask it changes. Unlike the relation losses (``relations.py``), they
change the outputs, whatever the network learned.
"""
from collections.abc import Sequence as SequenceABC
from typing import List, Sequence

import torch

from .relations import check_entry_names

__all__ = ["CONSTRAINT_ARITY", "parse_constraints", "apply_constraints"]

# Number of mask names each constraint type takes, and its code in the parsed form.
CONSTRAINT_ARITY = {"contains": 2, "difference": 3}
_CODES = {"contains": 0, "difference": 1}
_KEY = "MODEL.ROI_MULTI_MASK_HEAD.CONSTRAINTS"


def parse_constraints(constraints: Sequence, mask_names: Sequence[str]) -> List[List[int]]:
    """
    Validate config entries and turn them into ``[code, mask indices...]`` lists (a scriptable form).

    Args:
        constraints: entries ``[type, name, ...]`` (lists, tuples or omegaconf lists).
        mask_names: the K mask names the head predicts.

    Returns:
        One ``[code, index, ...]`` per entry, in order (code 0: contains, 1: difference).

    Raises:
        ValueError: naming the entry and what is wrong (not a list, unknown type or mask name, wrong
            number of names, repeated names).
    """
    mask_names = list(mask_names)
    parsed: List[List[int]] = []
    for i, entry in enumerate(constraints):
        if isinstance(entry, (list, tuple)) or (
            isinstance(entry, SequenceABC) and not isinstance(entry, str)
        ):
            entry = list(entry)
            where = f"{_KEY}[{i}] = {entry!r}"
        else:
            raise ValueError(
                f"{_KEY}[{i}] = {entry!r}: each constraint must be a list [type, mask names...], "
                "e.g. ['contains', 'amodal', 'visible']."
            )
        if not entry or entry[0] not in CONSTRAINT_ARITY:
            raise ValueError(
                f"{where}: unknown constraint type {entry[0] if entry else None!r}; known: "
                f"{sorted(CONSTRAINT_ARITY)}."
            )
        ctype, names = entry[0], entry[1:]
        check_entry_names(where, ctype, names, CONSTRAINT_ARITY[ctype], mask_names)
        parsed.append([_CODES[ctype]] + [mask_names.index(n) for n in names])
    return parsed


def apply_constraints(probs: torch.Tensor, constraints: List[List[int]]) -> torch.Tensor:
    """
    Args:
        probs: Tensor of shape (R, K, M, M), probabilities.
        constraints: parsed constraints (``parse_constraints``).

    Returns:
        A new Tensor of shape (R, K, M, M) with the constraints enforced in order.
    """
    masks = list(probs.unbind(dim=1))
    for c in constraints:
        if c[0] == 0:
            masks[c[1]] = torch.maximum(masks[c[1]], masks[c[2]])
        else:
            masks[c[1]] = (masks[c[2]] - masks[c[3]]).clamp(min=0)
    return torch.stack(masks, dim=1)
