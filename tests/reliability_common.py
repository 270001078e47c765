"""
Shared by the reliability tests: a tiny CPU config, tiny synthetic splits, a hook that records the
raw losses of every iteration, and the command line of ``tests/train_net_driver.py`` (train_net.py
in a subprocess, on those splits).
"""

import contextlib
import json
import os
import subprocess
import sys
from typing import Dict, Iterator, List, Sequence

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

import train_net
from multimask.data import register_synthetic_dataset

from .common import REPO_ROOT

CONFIG = os.path.join(
    REPO_ROOT, "configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic.yaml"
)
TRAIN, VAL = "multimask_test_rel_train", "multimask_test_rel_val"
DRIVER = os.path.join(REPO_ROOT, "tests", "train_net_driver.py")

# The instant-test config made smaller still: a thin R50 (stem 16, res2 16 channels, bottleneck
# width 4: 0.28M instead of 11M parameters, so a checkpoint is ~2 MB), 64 px inputs, few proposals;
# no flip, so that runs differ only where a test wants them to. A step takes ~0.15 s on one CPU
# thread.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "INPUT.RANDOM_FLIP", "none",
    "SOLVER.BASE_LR", "0.01",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", f"('{TRAIN}',)",
    "DATASETS.TEST", f"('{VAL}',)",
    "SEED", "7",
]  # fmt: skip


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """
    Run torch on one thread: the training tests then compute exactly what the subprocesses
    (OMP_NUM_THREADS=1) compute, and on a shared 2-core machine they run 2-4x faster than with
    two threads competing with other processes.
    """
    num = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(num)


def train_net_args(out_dir, *opts: str, flags: Sequence[str] = ()):
    """train_net's parsed arguments: CONFIG, TINY_OPTS, OUTPUT_DIR and `opts` (later ones win)."""
    argv = ["--config-file", CONFIG, *flags, *TINY_OPTS, "OUTPUT_DIR", str(out_dir), *opts]
    return train_net.get_parser().parse_args(argv)


def register_tiny_splits(root: str, num_train: int = 8, num_val: int = 3) -> None:
    """Register TRAIN and VAL, synthetic splits of 96 px images cached under `root`."""
    for name, n, seed in ((TRAIN, num_train, 20), (VAL, num_val, 21)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)  # its image_root changes with `root`
        register_synthetic_dataset(name, n, seed, image_size=96, root=root)


class LossRecorder(HookBase):
    """
    Appends, after every step, the raw (unsmoothed) losses and LR of that iteration to a JSON-lines
    file: metrics.json holds 20-iteration medians, which a resumed run cannot reproduce. The file is
    flushed per line, so a killed run keeps every finished iteration. Main process only.
    """

    def __init__(self, path: str):
        self._path = path

    def after_step(self):
        if not comm.is_main_process():
            return
        it = self.trainer.iter
        latest = self.trainer.storage.latest()
        row = {
            k: v for k, (v, i) in latest.items() if i == it and (k.startswith("loss") or k == "lr")
        }
        row["total_loss"] = sum(v for k, v in row.items() if k.startswith("loss"))
        with open(self._path, "a") as f:
            f.write(json.dumps({"iteration": it, **row}) + "\n")


def read_losses(path: str) -> Dict[int, Dict[str, float]]:
    """iteration -> recorded values; a re-run iteration (after a resume) keeps its last record."""
    rows = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            rows[row.pop("iteration")] = row
    return rows


def driver_command(*args: str, num_gpus: int = 1) -> List[str]:
    """The command line running train_net.py (through the driver) with TINY_OPTS and `args`."""
    head = [sys.executable, DRIVER, "--config-file", CONFIG, "--num-gpus", str(num_gpus)]
    if num_gpus > 1:
        head += ["--dist-url", "auto"]
    split = list(args).index("--") if "--" in args else len(args)
    flags, opts = list(args[:split]), list(args[split + 1 :])
    return head + flags + TINY_OPTS + opts


def driver_env(data_root: str, **extra: str) -> Dict[str, str]:
    """Environment of a driver run: data root, one thread per process, and `extra` variables."""
    env = dict(os.environ, MULTIMASK_TEST_DATA=data_root, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")])
    return env


def run_driver(cmd: Sequence[str], env: Dict[str, str], timeout: float = 300) -> str:
    """Run a driver command to completion: its output, or an AssertionError with its tail."""
    proc = subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )  # fmt: skip
    assert (
        proc.returncode == 0
    ), f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
    return proc.stdout
