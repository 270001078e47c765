"""
train_net.py as the reliability tests run it in a subprocess: the same command line and ``main``,
plus test instrumentation chosen by environment variables:

- MULTIMASK_TEST_DATA: root of the tiny synthetic splits (registered as in reliability_common);
- MULTIMASK_TEST_LOSS_LOG: append each iteration's raw losses and LR there (LossRecorder);
- MULTIMASK_TEST_RESULTS: write the evaluation results returned by ``main`` there, as JSON;
- MULTIMASK_TEST_SLOW_STEP: seconds to sleep before every step, so that a test can kill the process
  between two steps;
- MULTIMASK_TEST_SLOW_SAVE: seconds to sleep between the 128 kB chunks of every file torch.save
  writes, so that a test can kill the process in the middle of a save.

This module's top level runs in the processes that ``launch`` spawns as well (they import it as
``__mp_main__``), so the splits and patches exist in every process; started by torchrun, or as the
``--target`` of tools/submit_slurm.py, it is the script of every process.
"""

import io
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_net  # noqa: E402
from detectron2.engine import hooks  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from multimask.engine import MultiMaskTrainer  # noqa: E402
from tests.reliability_common import LossRecorder, register_tiny_splits  # noqa: E402

register_tiny_splits(os.environ["MULTIMASK_TEST_DATA"])

_LOSS_LOG = os.environ.get("MULTIMASK_TEST_LOSS_LOG")
if _LOSS_LOG:
    _build_hooks = MultiMaskTrainer.build_hooks

    def _build_hooks_with_recorder(self):
        # after the LRScheduler (which puts the step's LR), before the checkpointer: an iteration
        # that a checkpoint covers is always recorded
        ret = _build_hooks(self)
        at = [i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)][0] + 1
        return ret[:at] + [LossRecorder(_LOSS_LOG)] + ret[at:]

    MultiMaskTrainer.build_hooks = _build_hooks_with_recorder

_SLOW_STEP = float(os.environ.get("MULTIMASK_TEST_SLOW_STEP", 0))
if _SLOW_STEP:
    _build_hooks_before = MultiMaskTrainer.build_hooks

    class _Sleep(hooks.HookBase):
        def before_step(self):
            time.sleep(_SLOW_STEP)

    MultiMaskTrainer.build_hooks = lambda self: [_Sleep()] + _build_hooks_before(self)

_SLOW_SAVE = float(os.environ.get("MULTIMASK_TEST_SLOW_SAVE", 0))
if _SLOW_SAVE:
    _torch_save = torch.save

    def _slow_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            return _torch_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        _torch_save(obj, buf, *args, **kwargs)
        data, chunk = buf.getvalue(), 1 << 17
        for i in range(math.ceil(len(data) / chunk)):
            f.write(data[i * chunk : (i + 1) * chunk])
            f.flush()
            time.sleep(_SLOW_SAVE)

    torch.save = _slow_save


def main(args):
    results = train_net.main(args)
    path = os.environ.get("MULTIMASK_TEST_RESULTS")
    if path and comm.is_main_process():
        with open(path, "w") as f:
            json.dump(results, f)
    return results


get_parser = train_net.get_parser  # what tools/submit_slurm.py's --target needs, with main

if __name__ == "__main__":
    train_net.launch_main(main, get_parser().parse_args())
