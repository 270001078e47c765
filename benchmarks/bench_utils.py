"""
Helpers shared by the benchmark scripts: thread setup, interleaved timing with medians, peak memory
of a variant measured in its own subprocess, and a description of the machine.

Timing method: every variant is run once per round, rounds repeat, and the order of the variants is
rotated from round to round (ABC, BCA, CAB, ...). On a machine shared with other jobs, contention then
hits every variant alike, and the median over rounds discards the rounds that caught a burst.

Two clocks are recorded per call: wall time (``time.perf_counter``) and the CPU time of this process
(``time.process_time``, all its threads). With one thread, CPU time is the compute a call needs and
barely moves when other jobs share the cores (they delay the call, they do not add to its CPU time),
so it is the clock to compare variants with on a busy machine; wall time is what a user waits on an
idle one. With several threads, CPU time also counts the threads' spin-waiting.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Sequence

import torch

__all__ = [
    "BASE_CONFIG",
    "REPO_ROOT",
    "as_mask_rcnn",
    "benchmark_parser",
    "multimask_cfg",
    "interleaved_medians",
    "machine_info",
    "peak_rss_of",
    "print_table",
    "rss_mib",
    "set_threads",
]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO_ROOT, "configs", "Base-MultiMask-RCNN-FPN.yaml")


def multimask_cfg(device: str = "cpu"):
    """The project's Base R-50-FPN config with multimask's keys, random init, on `device`."""
    from detectron2.config import get_cfg

    from multimask import add_multimask_config

    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    return cfg


def as_mask_rcnn(cfg, mask_on: bool = True):
    """`cfg` (not modified) as detectron2's stock (Mask) R-CNN with the multi-mask head's dims."""
    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.MASK_ON = mask_on
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_CONV
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = cfg.MODEL.ROI_MULTI_MASK_HEAD.CONV_DIM
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = cfg.MODEL.ROI_MULTI_MASK_HEAD.POOLER_RESOLUTION
    return cfg


def benchmark_parser(
    description: str, repeats: int = 10, warmup: int = 2, threads: int = 2
) -> argparse.ArgumentParser:
    """
    A parser with the knobs every benchmark script shares (--repeats, --warmup, --threads, at the
    script's defaults); the script adds its own arguments.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="timed rounds (median is reported)"
    )
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed rounds run first")
    parser.add_argument("--threads", type=int, default=threads, help="torch.set_num_threads value")
    return parser


def set_threads(n: int) -> None:
    """Fix the intra-op threads, and the inter-op threads to 1, so every run uses the same CPU share."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def machine_info() -> Dict[str, str]:
    """CPU model, core count, load average, versions and the date, for the published tables."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import detectron2  # local import: only for its version

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "load_avg_1_5_15": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }


def interleaved_medians(
    fns: Dict[str, Callable[[], None]], repeats: int, warmup: int, log: bool = True
) -> Dict[str, Dict[str, float]]:
    """
    Time each callable `repeats` times, interleaved and in rotating order, after `warmup` untimed rounds.

    Args:
        fns: name -> callable to time (one call = one measured unit, e.g. one train step).
        repeats: timed rounds.
        warmup: untimed rounds before them (first-call allocations, lazy inits).
        log: print each round's times to stderr.

    Returns:
        name -> {"wall": median s, "cpu": median CPU s, "wall_min", "wall_max", "cpu_min", "cpu_max",
        "wall_times": [s, ...], "cpu_times": [s, ...]}.
    """
    names = list(fns)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        round_times = {}
        for n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[n]()
            round_times[n] = (time.perf_counter() - t0, time.process_time() - c0)
        if r >= warmup:
            for n in names:
                wall[n].append(round_times[n][0])
                cpu[n].append(round_times[n][1])
        if log:
            tag = "warmup" if r < warmup else f"round {r - warmup + 1}/{repeats}"
            line = " ".join(f"{n}={round_times[n][0]:.3f}/{round_times[n][1]:.3f}" for n in names)
            print(
                f"[{tag}] load={os.getloadavg()[0]:.2f} wall/cpu s: {line}",
                file=sys.stderr,
                flush=True,
            )
    out = {}
    for n in names:
        out[n] = {"wall_times": wall[n], "cpu_times": cpu[n]}
        for clock, ts in (("wall", wall[n]), ("cpu", cpu[n])):
            out[n].update(
                {clock: statistics.median(ts), f"{clock}_min": min(ts), f"{clock}_max": max(ts)}
            )
    return out


def rss_mib() -> float:
    """Current resident set size of this process, MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """
    Peak resident set size of this process so far, MiB: VmHWM of /proc/self/status.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork + exec, so a subprocess
    started by a large parent reports the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_of(script: str, worker_args: Sequence[str]) -> Dict[str, float]:
    """
    Run `script` with `worker_args` in a fresh interpreter and return the JSON dict it prints last.

    A subprocess per variant keeps the peaks apart: the peak is a per-process high-water mark, and
    glibc keeps freed memory mapped, so two variants in one process would hide each other's peak.
    """
    out = subprocess.run(
        [sys.executable, script, *worker_args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_table(headers: Sequence[str], rows: Sequence[Sequence], title: str = "") -> str:
    """Print (and return) a GitHub markdown table."""
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = [f"| {' | '.join(headers)} |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += [f"| {' | '.join(r)} |" for r in fmt]
    text = (f"\n{title}\n\n" if title else "\n") + "\n".join(lines)
    print(text, flush=True)
    return text
