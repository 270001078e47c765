"""
Learning-rate multipliers. detectron2's LRScheduler hook evaluates them at ``iter / train.max_iter``, so
the steps scale with ``train.max_iter``: milestones are given in units of ``num_updates``.
"""
from typing import Sequence

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep_with_warmup(
    num_updates: int, steps: Sequence[int], warmup_iters: int, gamma: float = 0.1
):
    """
    SOLVER.STEPS / GAMMA / WARMUP_ITERS of a YAML config, as a LazyConfig multiplier.

    Args:
        num_updates: the iterations the steps refer to (the YAML's MAX_ITER).
        steps: iterations where the learning rate is multiplied by `gamma`.
        warmup_iters: linear warmup length, from a factor of 0.001.
        gamma: decay factor at each step.
    """
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**i for i in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=num_updates,
        ),
        warmup_length=warmup_iters / num_updates,
        warmup_method="linear",
        warmup_factor=0.001,
    )
