#!/usr/bin/env python
"""
Accuracy side of the trade, on the synthetic dataset with the quick schedule. Issue 6: one K = 2
model (amodal + visible) against two single-mask models, shared trunk against separate towers.
Issue 13: the plain head (``towers2``) against each occlusion-aware addition alone (FLOW, the
occluder mask, MASKIOU, CONSTRAINTS) and their combination, and the joint models against the two
single-mask models. Runs the trainings one at a time; prints per-mask AP, the differences per seed,
train time. Several invocations with disjoint --runs / --seeds may share one --root in parallel.

    python benchmarks/accuracy_tradeoff.py                 # every run of RUNS, then the table
    python benchmarks/accuracy_tradeoff.py --seeds 42,7    # each run with two seeds: means
    python benchmarks/accuracy_tradeoff.py --root /tmp/smoke --opts SOLVER.MAX_ITER 4   # smoke run
    python benchmarks/accuracy_tradeoff.py --report-only   # the table of the finished runs
    # issue 13 (BENCHMARKS.md): 3 seeds, evaluated on the 500-image split
    python benchmarks/accuracy_tradeoff.py --seeds 1,2,3 \
        --runs towers2,towers2_flow,towers2_occluder,towers2_occluder_flow,towers2_contains,single_amodal,single_visible \
        --opts DATASETS.TEST "('multimask_synthetic_val_500',)"
    # issue 21 (BENCHMARKS.md): each model also scored on ground-truth boxes (MULTIMASK.EVAL_BOXES gt)
    python benchmarks/accuracy_tradeoff.py --seeds 1,2,3 --eval-gt --root /work/scratch/heads \
        --runs joint_shared,towers2_fc2,towers2 --opts DATASETS.TEST "('multimask_synthetic_val_500',)"

Every run trains with ``train_net.py --config-file <quick config> MODEL.DEVICE cpu OUTPUT_DIR
<root>/<run> DATASETS.TEST "()"`` plus the run's overrides (no evaluation inside the training
process, so its time is training only), then this script evaluates ``model_final.pth`` on the
validation split with multimask's ``do_test`` (MultiMaskCOCOEvaluator). Train time is reported three
ways: detectron2's "Total training time" (iterations, hooks, checkpoints), the wall time of the
training process, and its CPU time (user + system, data-loader workers and start-up included), which
depends less on other jobs sharing the machine. A finished run (eval_results.json present) is not
run again unless --force.

With --eval-gt the same weights are evaluated a second time with ``MULTIMASK.EVAL_BOXES gt`` (every
non-crowd ground-truth object given as a box: the mask head scored without detection noise), into
``<run>/eval_results_gt.json``; the report adds, per seed, the completion protocol's ``miou_amodal``
and ``miou_amodal_occ`` beside the end-to-end ``segm_amodal_occ0.15`` AP, with each protocol's seed
spread and the per-seed differences against --plain.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml"
_HEAD = "MODEL.ROI_MULTI_MASK_HEAD."
# FLOW (issue 13) needs towers: the plain head of issue 13 is two shared convs, then two per mask
_TOWERS2 = [_HEAD + "SHARED_CONVS", "2"]
# the occluder mask (issue 13): a third, supervised mask name (occluders(visible) of the synthetic data)
_OCCLUDER = [_HEAD + "NUM_MASK", "3", _HEAD + "MASK_NAMES", "['amodal','visible','occluder']"]
# Every run starts from the plain head (all convs shared, no occlusion-aware addition), whatever the
# quick config's own default is, then applies its overrides.
_PLAIN = [_HEAD + "SHARED_CONVS", "-1", _HEAD + "FC_FUSION", "[]", _HEAD + "HIDDEN_WEIGHTS", "[]"]
RUNS = {
    "joint_shared": [],
    "joint_towers": [_HEAD + "SHARED_CONVS", "0"],
    "towers2": _TOWERS2,
    "towers2_flow": _TOWERS2 + [_HEAD + "FLOW", "[['visible','amodal']]"],
    # PANet's fully-connected fusion: a global FC term in the amodal tower, or in both towers
    "towers2_fc": _TOWERS2 + [_HEAD + "FC_FUSION", "['amodal']"],
    "towers2_fc2": _TOWERS2 + [_HEAD + "FC_FUSION", "['amodal','visible']"],
    # fc2 at a quarter of the channels into the FC layer (16 of 64): half its cost
    "towers2_fc2_q": _TOWERS2
    + [_HEAD + "FC_FUSION", "['amodal','visible']", _HEAD + "FC_FUSION_DIM", "16"],
    "towers2_fc2_flow": _TOWERS2
    + [_HEAD + "FC_FUSION", "['amodal','visible']", _HEAD + "FLOW", "[['visible','amodal']]"],
    # the hidden part of the amodal mask weighs 3x in its loss (the occluded subset's weak spot)
    "towers2_fc2_hidden3": _TOWERS2
    + [_HEAD + "FC_FUSION", "['amodal','visible']"]
    + [_HEAD + "HIDDEN_WEIGHTS", "[['amodal','visible',3.0]]"],
    # the all-shared head with the hidden-part weight: no inference cost, no extra layer
    "joint_shared_hidden3": [_HEAD + "HIDDEN_WEIGHTS", "[['amodal','visible',3.0]]"],
    # a smaller hidden-part weight: how much of hidden3's gain it keeps, and of the amodal AP it costs
    "joint_shared_hidden2": [_HEAD + "HIDDEN_WEIGHTS", "[['amodal','visible',2.0]]"],
    "towers2_maskiou": _TOWERS2 + [_HEAD + "MASKIOU_ON", "True"],
    "towers2_occluder": _TOWERS2 + _OCCLUDER,
    # both the visible and the occluder tower feed the amodal one (BCNet's occluder -> occludee)
    "towers2_occluder_flow": _TOWERS2
    + _OCCLUDER
    + [_HEAD + "FLOW", "[['visible','amodal'],['occluder','amodal']]"],
    # output constraints change inference only: this run evaluates towers2's weights with them
    "towers2_contains": _TOWERS2 + [_HEAD + "CONSTRAINTS", "[['contains','amodal','visible']]"],
    "single_amodal": [_HEAD + "NUM_MASK", "1", _HEAD + "MASK_NAMES", "['amodal']"],
    "single_visible": [_HEAD + "NUM_MASK", "1", _HEAD + "MASK_NAMES", "['visible']"],
    # single-mask models with the towers2 layout and FC fusion: the joint fc2 run's singles
    "single_amodal_fc": [_HEAD + "NUM_MASK", "1", _HEAD + "MASK_NAMES", "['amodal']"]
    + _TOWERS2
    + [_HEAD + "FC_FUSION", "['amodal']"],
    "single_visible_fc": [_HEAD + "NUM_MASK", "1", _HEAD + "MASK_NAMES", "['visible']"]
    + _TOWERS2
    + [_HEAD + "FC_FUSION", "['visible']"],
}
WEIGHTS_FROM = {"towers2_contains": "towers2"}
MASKS = ("amodal", "visible")


def _parse_duration(text: str) -> float:
    """detectron2's H:MM:SS (optionally "N day, H:MM:SS") -> seconds."""
    days = 0
    if "day" in text:
        d, text = text.split(",", 1)
        days = int(d.split()[0])
    h, m, s = (float(v) for v in text.strip().split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


def read_run(out_dir: str) -> dict:
    """AP per mask (eval_results.json) and train times (log.txt, bench_times.json) of a run."""
    res = {}
    results = os.path.join(out_dir, "eval_results.json")
    if os.path.isfile(results):
        with open(results) as f:
            for task, metrics in json.load(f).items():
                res[f"{task}/AP"] = metrics.get("AP")
    results_gt = os.path.join(out_dir, "eval_results_gt.json")
    if os.path.isfile(results_gt):
        with open(results_gt) as f:
            for task, metrics in json.load(f).items():
                value = metrics.get("mIoU", metrics.get("AP"))
                res[f"gt:{task}"] = value
    log = os.path.join(out_dir, "log.txt")
    if os.path.isfile(log):
        with open(log) as f:
            found = re.findall(r"Total training time: ([0-9:, a-z]+)", f.read())
        if found:
            res["train_s"] = _parse_duration(found[-1].split("(")[0])
    times = os.path.join(out_dir, "bench_times.json")
    if os.path.isfile(times):
        with open(times) as f:
            res.update(json.load(f))
    return res


def overrides(name: str, extra) -> list:
    return ["MODEL.DEVICE", "cpu", *_PLAIN, *RUNS[name], *extra]


def train(name: str, args) -> None:
    out_dir = os.path.join(args.root, name)
    opts = overrides(name, args.opts) + ["OUTPUT_DIR", out_dir, "DATASETS.TEST", "()"]
    cmd = [sys.executable, "train_net.py", "--config-file", CONFIG, *opts]
    print(f"[{name}] {' '.join(cmd)}  (load {os.getloadavg()[0]:.2f})", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = dict(os.environ)
    if args.threads:
        # torch reads these at start-up for its intra-op threads
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with open(os.path.join(args.root, f"{name}.stdout"), "w") as log:
        subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, check=True, stdout=log, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out_dir, "bench_times.json"), "w") as f:
        json.dump(
            {"wall_s": wall, "cpu_s": cpu, "threads": args.threads, "load_end": os.getloadavg()[0]},
            f,
        )


def borrow_weights(name: str, args) -> None:
    """An inference-only variant: the weights, log and times of the run it evaluates differently."""
    src = os.path.join(args.root, WEIGHTS_FROM[name])
    if not os.path.isfile(os.path.join(src, "model_final.pth")):
        raise SystemExit(f"{name} evaluates the weights of {WEIGHTS_FROM[name]}: train it first")
    out_dir = os.path.join(args.root, name)
    os.makedirs(out_dir, exist_ok=True)
    for f in ("model_final.pth", "log.txt", "bench_times.json"):
        if os.path.isfile(os.path.join(src, f)):
            shutil.copyfile(os.path.join(src, f), os.path.join(out_dir, f))


def evaluate(name: str, args, gt_boxes: bool = False) -> None:
    """
    Evaluate the run's final weights on cfg.DATASETS.TEST with multimask's do_test; with `gt_boxes`
    on the ground-truth boxes (MULTIMASK.EVAL_BOXES gt), into eval_results_gt.json.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    sys.path.insert(0, REPO_ROOT)
    from multimask.config import get_multimask_cfg
    from multimask.engine import do_test

    out_dir = os.path.join(args.root, name)
    extra = ["MULTIMASK.EVAL_BOXES", "gt"] if gt_boxes else []
    cfg = get_multimask_cfg(os.path.join(REPO_ROOT, CONFIG), overrides(name, args.opts) + extra)
    # the gt evaluation writes its predictions apart from the end-to-end one's
    cfg.OUTPUT_DIR = os.path.join(out_dir, "eval_gt") if gt_boxes else out_dir
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(out_dir, "model_final.pth"))
    t0 = time.perf_counter()
    results = do_test(cfg, model)
    results_file = "eval_results_gt.json" if gt_boxes else "eval_results.json"
    with open(os.path.join(out_dir, results_file), "w") as f:
        json.dump(results, f, indent=1)
    print(f"[{name}] {results_file} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"[{name}] done: {read_run(out_dir)} (load {os.getloadavg()[0]:.2f})", flush=True)


# (header, key of read_run) of the table
COLUMNS = [
    ("box AP", "bbox/AP"),
    ("amodal AP", "segm_amodal/AP"),
    ("visible AP", "segm_visible/AP"),
    ("amodal occl. AP", "segm_amodal_occluded/AP"),
    ("amodal occ>0.25 AP", "segm_amodal_occ0.25/AP"),
    ("visible occl. AP", "segm_visible_occluded/AP"),
    ("train s (d2)", "train_s"),
    ("train CPU s", "cpu_s"),
]
# the columns compared run against run
DELTAS = [c for c in COLUMNS if c[1].endswith("/AP") and c[1] != "bbox/AP"]
# the (amodal, visible) single-mask pairs the joint runs are compared with
SINGLES = [("single_amodal", "single_visible"), ("single_amodal_fc", "single_visible_fc")]


def report(root: str, names, seeds, plain: str = "towers2") -> None:
    """
    Print, as markdown: the table of the runs (means over the seeds, each seed's value in
    brackets); every run against `plain` (AP differences, mean and per seed, and the ratio of train
    CPU times); every joint run against each pair of single-mask models of SINGLES in `names`.
    """
    per_seed = {n: [read_run(os.path.join(root, f"seed{sd}", n)) for sd in seeds] for n in names}

    def mean(n: str, key: str):
        values = [r[key] for r in per_seed[n] if r.get(key) is not None]
        return sum(values) / len(values) if len(values) == len(seeds) else None

    def delta(a: str, b: str, key: str, against=None) -> str:
        """a - b (b: a run, or `against`: per-seed values), mean and per seed."""
        ref = against or [r.get(key) for r in per_seed[b]]
        pairs = [(r.get(key), v) for r, v in zip(per_seed[a], ref)]
        if any(x is None or y is None for x, y in pairs):
            return "-"
        d = [x - y for x, y in pairs]
        text = f"{sum(d) / len(d):+.1f}"
        return text + (" (" + ", ".join(f"{v:+.1f}" for v in d) + ")" if len(d) > 1 else "")

    print(f"\nseeds {', '.join(map(str, seeds))}: means (each seed's value in brackets)\n")
    print("| run | " + " | ".join(h for h, _ in COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1))
    for n in names:
        cells = []
        for _, k in COLUMNS:
            m = mean(n, k)
            cell = "-" if m is None else f"{m:.1f}"
            if m is not None and len(seeds) > 1 and k.endswith("/AP"):
                cell += " (" + ", ".join(f"{r[k]:.1f}" for r in per_seed[n]) + ")"
            cells.append(cell)
        print(f"| {n} | " + " | ".join(cells) + " |")

    joints = [n for n in names if not any(n in pair for pair in SINGLES)]
    if plain in names:
        print(f"\nagainst {plain}: AP difference, mean (per seed); train CPU time ratio\n")
        print("| run | " + " | ".join(h for h, _ in DELTAS) + " | train CPU |")
        print("|" + "---|" * (len(DELTAS) + 2))
        for n in joints:
            if n == plain:
                continue
            ratio = mean(n, "cpu_s"), mean(plain, "cpu_s")
            cpu = f"{ratio[0] / ratio[1]:.2f}x" if None not in ratio else "-"
            if n in WEIGHTS_FROM:
                cpu += " (inference only)"
            cells = [delta(n, plain, k) for _, k in DELTAS]
            print(f"| {n} | " + " | ".join(cells) + f" | {cpu} |")
    report_gt(per_seed, names, seeds, plain)
    for pair in SINGLES:
        if not all(n in names for n in pair):
            continue
        combined = [mean(n, "cpu_s") for n in pair]
        print(f"\njoint models against {' + '.join(pair)} (same schedule and seeds): AP "
              "difference, mean (per seed); train CPU time over the two single models' sum\n")
        print("| run | amodal AP | visible AP | train CPU |\n|---|---|---|---|")
        for n in joints:
            cells = []
            for m, single in zip(MASKS, pair):
                key = f"segm_{m}/AP"
                cells.append(delta(n, "", key, against=[r.get(key) for r in per_seed[single]]))
            cpu = mean(n, "cpu_s")
            cells.append("-" if None in (cpu, *combined) else f"{cpu / sum(combined):.2f}x")
            print(f"| {n} | " + " | ".join(cells) + " |")


# (header, key of read_run) of the ground-truth-box table (--eval-gt): two protocols side by side
GT_COLUMNS = [
    ("gt-box miou_amodal", "gt:miou_amodal"),
    ("gt-box miou_amodal_occ", "gt:miou_amodal_occ"),
    ("gt-box segm_amodal AP", "gt:segm_amodal"),
    ("end-to-end segm_amodal_occ0.15 AP", "segm_amodal_occ0.15/AP"),
]


def report_gt(per_seed, names, seeds, plain: str) -> None:
    """Per seed, mean and spread (max - min, sample std) of GT_COLUMNS; per-seed differences to `plain`."""
    if not any(r.get("gt:miou_amodal") is not None for n in names for r in per_seed[n]):
        return
    import statistics

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"\nground-truth boxes (MULTIMASK.EVAL_BOXES gt) beside end to end, seeds "
          f"{', '.join(map(str, seeds))}: per seed; mean; spread max-min / std\n")
    print("| run | " + " | ".join(h for h, _ in GT_COLUMNS) + " |\n|" + "---|" * (len(GT_COLUMNS) + 1))
    for n in names:
        cells = []
        for _, k in GT_COLUMNS:
            vals = [r.get(k) for r in per_seed[n]]
            done = [v for v in vals if v is not None]
            cell = ", ".join(fmt(v) for v in vals)
            if done:
                cell += f"; mean {sum(done) / len(done):.1f}"
            if len(done) > 1:
                cell += f"; {max(done) - min(done):.1f} / {statistics.stdev(done):.1f}"
            cells.append(cell)
        print(f"| {n} | " + " | ".join(cells) + " |")
    if plain not in names:
        return
    print(f"\nagainst {plain}: difference, mean (per seed)\n")
    print("| run | " + " | ".join(h for h, _ in GT_COLUMNS) + " |\n|" + "---|" * (len(GT_COLUMNS) + 1))
    for n in names:
        if n == plain:
            continue
        cells = []
        for _, k in GT_COLUMNS:
            d = [
                a.get(k) - b.get(k)
                for a, b in zip(per_seed[n], per_seed[plain])
                if a.get(k) is not None and b.get(k) is not None
            ]
            cells.append(
                "-" if not d else f"{sum(d) / len(d):+.1f} (" + ", ".join(f"{v:+.1f}" for v in d) + ")"
            )
        print(f"| {n} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--root", default=os.path.join(REPO_ROOT, "output", "accuracy_tradeoff"))
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of the runs")
    parser.add_argument(
        "--force", action="store_true", help="train and evaluate finished runs again"
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--seeds",
        default="42",
        help="comma-separated SEEDs: every run trains once per seed, in <root>/seed<SEED>/<run>",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each training (0: torch's default). 1 keeps CPU time comparable on "
        "a shared machine, where waiting threads of a multi-threaded run spin (counted as CPU)",
    )
    parser.add_argument(
        "--eval-gt",
        action="store_true",
        help="also evaluate every run with MULTIMASK.EVAL_BOXES gt (eval_results_gt.json)",
    )
    parser.add_argument("--plain", default="towers2", help="the run the others are compared with")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = parser.parse_args()
    names = args.runs.split(",")
    unknown = set(names) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown runs {sorted(unknown)}; known: {list(RUNS)}")
    seeds = [int(v) for v in args.seeds.split(",")]
    if not args.report_only:
        for seed in seeds:
            run_args = argparse.Namespace(**vars(args))
            run_args.root = os.path.join(args.root, f"seed{seed}")
            run_args.opts = [*args.opts, "SEED", str(seed)]
            os.makedirs(run_args.root, exist_ok=True)
            for n in names:
                out_dir = os.path.join(run_args.root, n)
                done = os.path.isfile(os.path.join(out_dir, "eval_results.json"))
                done_gt = os.path.isfile(os.path.join(out_dir, "eval_results_gt.json"))
                if not args.force and done and (done_gt or not args.eval_gt):
                    continue
                if args.force or not done:
                    if n in WEIGHTS_FROM:
                        borrow_weights(n, run_args)
                    elif args.force or not os.path.isfile(
                        os.path.join(out_dir, "model_final.pth")
                    ):
                        train(n, run_args)
                    evaluate(n, run_args)
                if args.eval_gt and (args.force or not done_gt):
                    evaluate(n, run_args, gt_boxes=True)
    report(args.root, names, seeds, args.plain)


if __name__ == "__main__":
    main()
