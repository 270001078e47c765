#!/usr/bin/env python
"""
Plot a training run from its ``metrics.json`` (detectron2's JSONWriter: one JSON object per line)
to a PNG, without tensorboard:

    python tools/plot_metrics.py output/multimask_R18_FPN_quick_synthetic  # -> .../metrics.png
    python tools/plot_metrics.py path/to/metrics.json -o run.png

Panels: the mask loss of every mask name (``loss_mask_<name>``); total loss and the other losses;
the learning rate; and the evaluation APs over iterations: ``segm_<name>/AP`` per mask name (solid),
``segm_<name>_occluded/AP`` (dashed, same color) and ``bbox/AP``.
"""

import argparse
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("multimask.plot_metrics")

Series = Dict[str, Tuple[List[int], List[float]]]
_SEGM_AP = re.compile(r"^segm_(?P<name>.+?)(?P<occ>_occluded)?/AP$")


def load_metrics(path: str) -> List[dict]:
    """
    Read metrics.json: one dict per line. A last line cut short (a run still writing, or killed)
    is skipped with a warning; a bad line elsewhere raises ValueError naming the file and line.
    """
    with open(path) as f:
        lines = [(i + 1, line.strip()) for i, line in enumerate(f) if line.strip()]
    records = []
    for pos, (lineno, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if pos == len(lines) - 1:
                logger.warning(f"{path}:{lineno}: skipping an incomplete last line")
                continue
            raise ValueError(f"{path}:{lineno}: not a JSON object: {e}") from e
        if not isinstance(rec, dict) or "iteration" not in rec:
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object with 'iteration', got {line[:80]}"
            )
        records.append(rec)
    return records


def collect_series(records: List[dict]) -> Series:
    """
    Every numeric key -> (iterations, values), sorted by iteration. When a resumed run logs an
    iteration again, its last value is kept.
    """
    by_key: Dict[str, Dict[int, float]] = {}
    for rec in records:
        it = int(rec["iteration"])
        for key, value in rec.items():
            if (
                key != "iteration"
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                by_key.setdefault(key, {})[it] = float(value)
    return OrderedDict(
        (key, (sorted(v), [v[i] for i in sorted(v)])) for key, v in sorted(by_key.items())
    )


def mask_names_of(series: Series) -> List[str]:
    """Mask names found in ``loss_mask_<name>`` and ``segm_<name>/AP`` keys, in first-seen order."""
    names: List[str] = []
    for key in series:
        m = _SEGM_AP.match(key)
        name = key[len("loss_mask_") :] if key.startswith("loss_mask_") else (m and m.group("name"))
        if name and name not in names:
            names.append(name)
    return names


def plot_metrics(metrics_path: str, output_path: str, title: Optional[str] = None) -> Series:
    """
    Draw the four panels of a run to `output_path` (PNG).

    Returns:
        the plotted series: key -> (iterations, values).
    """
    series = collect_series(load_metrics(metrics_path))
    if not series:
        raise ValueError(f"{metrics_path}: no metrics to plot")
    names = mask_names_of(series)
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_mask, ax_loss, ax_lr, ax_ap = axes.ravel()

    for name in names:
        if f"loss_mask_{name}" in series:
            ax_mask.plot(*series[f"loss_mask_{name}"], color=colors[name], label=name)
    _finish(ax_mask, "mask loss per mask name", "loss")

    others = [k for k in series if k.startswith("loss_") and not k.startswith("loss_mask_")]
    for i, key in enumerate(["total_loss"] + others):
        if key in series:
            ax_loss.plot(
                *series[key], label=key, color="k" if key == "total_loss" else f"C{i % 10}"
            )
    _finish(ax_loss, "total and other losses", "loss")

    if "lr" in series:
        ax_lr.plot(*series["lr"], color="C0")
    _finish(ax_lr, "learning rate", "lr", legend=False)

    ap_keys = [k for k in series if _SEGM_AP.match(k) or k == "bbox/AP"]
    for key in ap_keys:
        m = _SEGM_AP.match(key)
        style = (
            dict(color="k", label=key)
            if m is None
            else dict(
                color=colors[m.group("name")], linestyle="--" if m.group("occ") else "-", label=key
            )
        )
        ax_ap.plot(*series[key], marker="o", **style)
    if not ap_keys:
        ax_ap.text(
            0.5,
            0.5,
            "no evaluation in metrics.json",
            ha="center",
            va="center",
            transform=ax_ap.transAxes,
        )
    _finish(ax_ap, "AP per mask name (dashed: occluded subset)", "AP", legend=bool(ap_keys))

    fig.suptitle(title or os.path.dirname(os.path.abspath(metrics_path)))
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(output_path, dpi=80)
    plt.close(fig)
    logger.info(f"Plotted {len(series)} metrics of {metrics_path} to {output_path}")
    return series


def _finish(ax, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description="Plot losses, lr and per-mask AP of a run")
    parser.add_argument("run", help="OUTPUT_DIR of a run, or its metrics.json")
    parser.add_argument(
        "-o", "--output", help="PNG to write (default: metrics.png next to the json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    path = os.path.join(args.run, "metrics.json") if os.path.isdir(args.run) else args.run
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics.json at {path}")
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.png")
    plot_metrics(path, output)
    return output


if __name__ == "__main__":
    main()
