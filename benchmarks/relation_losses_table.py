#!/usr/bin/env python
"""
The per-mask AP table of the runs of ``benchmarks/relation_losses.sh``: the final evaluation of each run
(last record of its metrics.json that has ``segm_*`` APs), as a Markdown table.

    python benchmarks/relation_losses_table.py output/bench_relation_losses
"""
import argparse
import json
import os
import re
from typing import Dict, List


def final_eval(metrics_json: str) -> Dict[str, float]:
    """The last metrics.json record with evaluation results (keys like ``segm_amodal/AP``)."""
    last: Dict[str, float] = {}
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if any(k.startswith("segm_") for k in record):
                last = record
    return last


def table(root: str) -> str:
    runs = sorted(
        d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "metrics.json"))
    )
    results = {r: final_eval(os.path.join(root, r, "metrics.json")) for r in runs}
    results = {r: v for r, v in results.items() if v}
    if not results:
        raise SystemExit(f"no finished evaluation under {root}")
    pattern = re.compile(r"^(bbox|segm_[a-z_]+)/AP$")
    columns: List[str] = sorted(
        {k for v in results.values() for k in v if pattern.match(k)},
        key=lambda k: (k != "bbox/AP", k.endswith("_occluded/AP"), k),
    )
    lines = ["| run | " + " | ".join(c[: -len("/AP")] for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for run, values in results.items():
        lines.append(
            f"| {run} | " + " | ".join(f"{values.get(c, float('nan')):.1f}" for c in columns) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("root", help="the OUT folder of relation_losses.sh")
    print(table(parser.parse_args().root))
