#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in under 8 minutes,
#   1. sets up the environment: tools/setup_env.sh, or offline (GPU_CHECK_OFFLINE=1) the wheels of
#      .whl/ (tools/gpu_wheels.sh) into a temporary folder, with the machine's own python and torch,
#   2. trains the quick synthetic config 200 iterations without and with SOLVER.AMP.ENABLED,
#   3. writes a KINS-like dataset (benchmarks/scale_data.py) in the builtin kins_2019 layout and
#      trains R-50-FPN on it at 2000x604 for 20 iterations with K=2 (amodal + visible: polygons)
#      and K=3 (+ occluded = amodal - visible, derived), each evaluated on the test split,
#   4. runs inference + evaluation again from the saved weights (--eval-only),
#   5. trains the quick config with 2 processes on the one device (torchrun; NCCL cannot put two
#      ranks on one GPU, so gloo there),
#   6. exports the quick model to TorchScript (scripting and tracing; the script checks the file
#      against the eager model),
#   7. runs benchmarks/bench_scale.py on the device (R-50 train step vs detectron2's Mask R-CNN at
#      KINS size, mapper, targets, evaluation),
# and prints one summary table: every step's status, time, AP, images/s and peak GPU memory, AMP vs
# fp32 and the train step vs Mask R-CNN. Every step has its own timeout, cut to what is left of the
# whole check's budget, and a failed step does not stop the others; the exit code is 1 if any step
# failed or timed out. CI never runs this script.
#
#   bash tools/gpu_check.sh                                   # on a CUDA machine with PyPI
#   bash tools/gpu_wheels.sh                                  # here (PyPI): fills .whl/, then on an
#   GPU_CHECK_OFFLINE=1 bash tools/gpu_check.sh               #   air-gapped server (torch there)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash tools/gpu_check.sh   # smoke test on a CPU (minutes)
#
# Environment:
#   GPU_CHECK_DEVICE  cuda (default) or cpu
#   GPU_CHECK_QUICK   1: a few iterations and images per step, R18 at a third of KINS's size instead
#                     of R-50 at 2000x604, bench_scale.py --quick (and --skip-train on a CPU)
#   GPU_CHECK_OFFLINE 1: no network, no venv: pip install --no-index --no-deps --target of .whl/*.whl
#                     into a temporary folder, run with $PYTHON (default python3) and its torch
#   GPU_CHECK_BUDGET  seconds for the whole check (default 480); a step gets at most what is left
#   GPU_CHECK_OUT     output directory (default output/gpu_check/<date-time>)
#   GPU_CHECK_REPORT  a folder that receives summary.txt, summary.json and environment.txt (e.g. a
#                     folder that is copied back from the server)
#   GPU_CHECK_STEPS   space-separated subset of the steps (default: all), e.g. "kins_data kins_k3"
#   VENV              the virtual environment when not offline (default .venv)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
QUICK="${GPU_CHECK_QUICK:-0}"
OFFLINE="${GPU_CHECK_OFFLINE:-0}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
OUT="${GPU_CHECK_OUT:-output/gpu_check/$(date +%Y%m%d-%H%M%S)}"
ALL_STEPS="setup quick_fp32 quick_amp kins_data kins_k2 kins_k3 eval_quick eval_kins_k3
           multi_process export_scripting export_tracing bench_scale"
STEPS="$(echo ${GPU_CHECK_STEPS:-$ALL_STEPS})"  # one line, single spaces
QUICK_CONFIG=configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml
START=$(date +%s)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STEP_TABLE="$OUT/steps.tsv"
: >"$STEP_TABLE"
# the KINS-like data is read as the builtin kins_2019_train / kins_2019_test
export DETECTRON2_DATASETS="$OUT/datasets"
export PYTHONUNBUFFERED=1

if [ "$OFFLINE" = 1 ]; then
    PY="${PYTHON:-python3}"
    SITE="$(mktemp -d)/site"
    # the source tree is multimask (no install); the wheels add what the machine lacks
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    PY="${VENV:-$ROOT/.venv}/bin/python"
fi
TORCHRUN=("$PY" -m torch.distributed.run)

if [ "$QUICK" = 1 ]; then
    QUICK_ITERS=10 KINS_ITERS=2 KINS_TRAIN_IMAGES=4 KINS_TEST_IMAGES=2 BATCH=2 WORKERS=1
    # R18 with the quick config's small heads, at a third of KINS's training size
    KINS_MODEL=(--config-file "$QUICK_CONFIG" INPUT.MIN_SIZE_TRAIN "(200,)" INPUT.MAX_SIZE_TRAIN 667
                INPUT.MIN_SIZE_TEST 200 INPUT.MAX_SIZE_TEST 667)
    BENCH_ARGS=(--quick --eval-images 50)
    [ "$DEVICE" = cpu ] && BENCH_ARGS+=(--skip-train)
else
    QUICK_ITERS=200 KINS_ITERS=20 KINS_TRAIN_IMAGES=40 KINS_TEST_IMAGES=20 BATCH=4 WORKERS=4
    # R-50-FPN from random init (BN, every stage trained: no download on the GPU machine), 2000x604
    KINS_MODEL=(--config-file configs/Base-MultiMask-RCNN-FPN.yaml MODEL.WEIGHTS "''"
                MODEL.RESNETS.NORM BN MODEL.BACKBONE.FREEZE_AT 0
                INPUT.MIN_SIZE_TRAIN "(604,)" INPUT.MAX_SIZE_TRAIN 2000
                INPUT.MIN_SIZE_TEST 604 INPUT.MAX_SIZE_TEST 2000
                SOLVER.CLIP_GRADIENTS.ENABLED True SOLVER.CLIP_GRADIENTS.CLIP_TYPE value
                SOLVER.CLIP_GRADIENTS.CLIP_VALUE 1.0)
    BENCH_ARGS=(--eval-images 1000)
fi

log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# run_step NAME TIMEOUT_S OUTPUT_DIR CMD...: run CMD with its own timeout, output to $OUT/NAME.log;
# records NAME, status, seconds, log and output directory in steps.tsv
run_step() {
    local name="$1" limit="$2" dir="$3"
    shift 3
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "TIMEOUT" 0 /dev/null "$dir" >>"$STEP_TABLE"
        log "$name: not started, the budget of ${BUDGET}s is spent"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    log "$name (timeout ${limit}s): $*"
    local t0 rc status
    t0=$(date +%s.%N)
    timeout --kill-after=30 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL(rc=$rc)" ;;
    esac
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$OUT/$name.log" "$dir" >>"$STEP_TABLE"
    log "$name: $status in ${secs}s"
    if [ "$status" != ok ]; then
        tail -n 25 "$OUT/$name.log" | sed 's/^/    | /'
    fi
}

skip_step() {  # skip_step NAME REASON: recorded as skipped, not as a failure
    wanted "$1" || return 0
    echo "$2" >"$OUT/$1.log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" skipped 0 "$OUT/$1.log" "" >>"$STEP_TABLE"
    log "$1: skipped ($2)"
}

train() {  # train NAME TIMEOUT_S ARGS...: train_net.py with OUTPUT_DIR $OUT/NAME
    local name="$1" limit="$2"
    shift 2
    run_step "$name" "$limit" "$OUT/$name" "$PY" train_net.py "$@" MODEL.DEVICE "$DEVICE" \
        OUTPUT_DIR "$OUT/$name"
}

log "device $DEVICE, quick $QUICK, offline $OFFLINE, budget ${BUDGET}s, output $OUT"
if [ "$OFFLINE" = 1 ]; then
    # --no-deps: the machine's own torch, numpy, opencv ... stay; .whl/ holds only what it lacks
    run_step setup 120 "" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$ROOT"/.whl/*.whl
else
    run_step setup 900 "" bash tools/setup_env.sh
fi
"$PY" - <<'EOF' 2>/dev/null | tee "$OUT/environment.txt"
import sys

import torch
import torchvision

import detectron2
import multimask

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, detectron2 {detectron2.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF

QUICK_SOLVER=(SOLVER.MAX_ITER "$QUICK_ITERS" SOLVER.STEPS "($((QUICK_ITERS * 3 / 4)),)"
              SOLVER.WARMUP_ITERS "$((QUICK_ITERS / 4))" SOLVER.CHECKPOINT_PERIOD 100000
              DATALOADER.NUM_WORKERS "$WORKERS")
train quick_fp32 420 --config-file "$QUICK_CONFIG" "${QUICK_SOLVER[@]}"
if [ "$DEVICE" = cpu ]; then
    skip_step quick_amp "detectron2's AMPTrainer requires CUDA"
else
    train quick_amp 420 --config-file "$QUICK_CONFIG" "${QUICK_SOLVER[@]}" SOLVER.AMP.ENABLED True
fi

run_step kins_data 300 "$DETECTRON2_DATASETS/kins" "$PY" - "$DETECTRON2_DATASETS/kins" \
    "$KINS_TRAIN_IMAGES" "$KINS_TEST_IMAGES" <<'EOF'
import sys

sys.path.insert(0, ".")
from benchmarks.scale_data import make_kins_like

root, num_train, num_test = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for split, image_dir, json_name, num, seed in (
    ("train", "training/image_2", "annotations/instances_train.json", num_train, 0),
    ("test", "testing/image_2", "annotations/instances_val.json", num_test, 1),
):
    json_file, _ = make_kins_like(root, num, seed, image_dir=image_dir, json_name=json_name)
    print(f"KINS-like {split}: {num} images -> {json_file}")
EOF

KINS_SOLVER=(DATASETS.TRAIN "('kins_2019_train',)" DATASETS.TEST "('kins_2019_test',)"
             MODEL.ROI_HEADS.NUM_CLASSES 7 SOLVER.IMS_PER_BATCH "$BATCH" SOLVER.BASE_LR 0.005
             SOLVER.MAX_ITER "$KINS_ITERS" SOLVER.STEPS "($((KINS_ITERS * 3 / 4)),)"
             SOLVER.WARMUP_ITERS "$((KINS_ITERS / 4))" SOLVER.CHECKPOINT_PERIOD 100000
             TEST.EVAL_PERIOD 0 DATALOADER.NUM_WORKERS "$WORKERS")
train kins_k2 420 "${KINS_MODEL[@]}" "${KINS_SOLVER[@]}" MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK 2 \
    MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES "['amodal', 'visible']"
K3=(MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK 3 MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES
    "['amodal', 'visible', 'occluded']")
train kins_k3 420 "${KINS_MODEL[@]}" "${KINS_SOLVER[@]}" "${K3[@]}"

train eval_quick 300 --eval-only --config-file "$QUICK_CONFIG" \
    MODEL.WEIGHTS "$OUT/quick_fp32/model_final.pth"
train eval_kins_k3 300 --eval-only "${KINS_MODEL[@]}" "${KINS_SOLVER[@]}" "${K3[@]}" \
    MODEL.WEIGHTS "$OUT/kins_k3/model_final.pth"

# 2 processes on the one device: NCCL refuses two ranks on one GPU, so the launcher takes gloo
# when ranks share a device (multimask.engine.launch); LOCAL_RANK picks the GPU modulo their count
MP_ITERS=$((QUICK_ITERS / 4 > 2 ? QUICK_ITERS / 4 : 2))
run_step multi_process 300 "$OUT/multi_process" "${TORCHRUN[@]}" --standalone --nproc_per_node 2 \
    train_net.py --config-file "$QUICK_CONFIG" "${QUICK_SOLVER[@]}" SOLVER.MAX_ITER "$MP_ITERS" \
    SOLVER.STEPS "()" SOLVER.WARMUP_ITERS 1 MODEL.DEVICE "$DEVICE" OUTPUT_DIR "$OUT/multi_process"

for method in scripting tracing; do
    run_step "export_$method" 300 "$OUT/export_$method" "$PY" tools/export_model.py \
        --config-file "$QUICK_CONFIG" --export-method "$method" --output "$OUT/export_$method" \
        MODEL.WEIGHTS "$OUT/quick_fp32/model_final.pth" MODEL.DEVICE "$DEVICE"
done

run_step bench_scale 420 "$OUT" "$PY" benchmarks/bench_scale.py --device "$DEVICE" \
    --json "$OUT/bench_scale.json" "${BENCH_ARGS[@]}"

# Summary: status, time and key metrics of every step, read from its log and output directory.
"$PY" - "$STEP_TABLE" "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json
import os
import re
import statistics
import sys


def read_metrics(out_dir):
    """The training rows of detectron2's metrics.json (lines cut by a timeout are skipped)."""
    path = os.path.join(out_dir or "", "metrics.json")
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return [r for r in rows if "total_loss" in r]


def batch_size(out_dir):
    """SOLVER.IMS_PER_BATCH of the config.yaml that default_setup wrote, else None."""
    path = os.path.join(out_dir or "", "config.yaml")
    if not os.path.isfile(path):
        return None
    m = re.search(r"^\s+IMS_PER_BATCH:\s*(\d+)", open(path).read(), re.M)
    return int(m.group(1)) if m else None


def train_numbers(out_dir):
    rows = read_metrics(out_dir)
    if not rows:
        return {}
    out = {"iter": rows[-1].get("iteration"), "total_loss": rows[-1]["total_loss"]}
    times = [r["time"] for r in rows if "time" in r]
    if times:
        out["s_per_iter"] = statistics.median(times)
        batch = batch_size(out_dir)
        if batch:
            out["train_images_per_s"] = batch / out["s_per_iter"]
    return out


def log_numbers(log):
    """AP of every copypaste block, peak GPU memory (max_mem), inference images/s."""
    out, task, header = {}, None, None
    for line in log.splitlines():
        m = re.search(r"copypaste: (.*)$", line)
        if not m:
            continue
        text = m.group(1).strip()
        if text.startswith("Task: "):
            task, header = text[6:], None
        elif header is None:
            header = text.split(",")
        elif task is not None:
            values = dict(zip(header, text.split(",")))
            # the table shows box AP and each mask's plain AP; the subsets are in the step's log
            if "AP" in values and "_occ" not in task:
                out[f"{task} AP"] = float(values["AP"])
            task = None
    mems = [float(v) for v in re.findall(r"max_mem: (\d+)M", log)]
    if mems:
        out["peak_gpu_mib"] = max(mems)
    inf = re.findall(r"Total inference time: .*?\(([\d.]+) s / iter per device", log)
    if inf and float(inf[-1]) > 0:
        out["infer_images_per_s"] = 1.0 / float(inf[-1])
    return out


def bench_rows(log):
    """The rows of bench_scale.py's summary table."""
    return [ln for ln in log.splitlines() if re.search(r"\| (PASS|FAIL|n/a) \|$", ln)]


def fmt(key, v):
    if isinstance(v, float):
        return f"{key} {v:.3f}" if abs(v) < 10 else f"{key} {v:.1f}"
    return f"{key} {v}"


failed = 0
steps_file, out_dir = sys.argv[1], sys.argv[2]
with open(steps_file) as f:
    steps = [line.rstrip("\n").split("\t") for line in f if line.strip()]
report = {"steps": []}
print("\n== gpu_check summary")
env = os.path.join(out_dir, "environment.txt")
if os.path.isfile(env):
    print(open(env).read().strip())
print(f"{'step':<18} {'status':<10} {'seconds':>8}  key metrics")
for name, status, secs, log_path, step_dir in steps:
    failed += status not in ("ok", "skipped")
    with open(log_path, errors="replace") as f:
        log = f.read()
    numbers = {**train_numbers(step_dir), **log_numbers(log)}
    notes = []
    if name.startswith("export"):
        notes += [ln.split("]: ")[-1] for ln in log.splitlines() if "Wrote the" in ln][-1:]
    if name == "setup":
        notes += [ln.split("] ")[-1] for ln in log.splitlines() if "ok: torch" in ln]
    if name == "kins_data":
        notes += [ln for ln in log.splitlines() if ln.startswith("KINS-like")]
    if status == "skipped":
        notes.append(log.strip())
    extra = bench_rows(log) if name == "bench_scale" else []
    report["steps"].append({"step": name, "status": status, "seconds": float(secs), **numbers,
                            "notes": notes, "bench_rows": extra})
    print(f"{name:<18} {status:<10} {secs:>8}  "
          + "; ".join([fmt(k, v) for k, v in numbers.items()] + notes))
    for row in extra:
        print("    " + row)
by_name = {s["step"]: s for s in report["steps"]}
fp32, amp = by_name.get("quick_fp32", {}), by_name.get("quick_amp", {})
if "s_per_iter" in fp32 and "s_per_iter" in amp:
    report["amp_vs_fp32_step_time"] = amp["s_per_iter"] / fp32["s_per_iter"]
    print(f"AMP vs fp32 (quick config): {report['amp_vs_fp32_step_time']:.2f}x the step time"
          + (f", {amp['peak_gpu_mib'] / fp32['peak_gpu_mib']:.2f}x the peak memory"
             if "peak_gpu_mib" in amp and "peak_gpu_mib" in fp32 else ""))
bench = os.path.join(out_dir, "bench_scale.json")
if os.path.isfile(bench):
    train = json.load(open(bench)).get("train")
    if isinstance(train, dict) and "ratio_wall" in train:
        report["train_step_vs_mask_rcnn"] = train["ratio_wall"]
        print(f"train step vs detectron2's Mask R-CNN (R-50-FPN, KINS size, bench_scale.py): "
              f"{train['ratio_wall']:.2f}x wall time")
skipped = sum(s[1] == "skipped" for s in steps)
report.update(ok=len(steps) - failed - skipped, skipped=skipped, failed=failed)
print(f"{len(steps) - failed - skipped} of {len(steps)} steps ok, {skipped} skipped, {failed} failed")
with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(report, f, indent=1)
sys.exit(1 if failed else 0)
EOF
rc="${PIPESTATUS[0]}"
if [ -n "${GPU_CHECK_REPORT:-}" ]; then
    mkdir -p "$GPU_CHECK_REPORT"
    cp "$OUT"/summary.txt "$OUT"/summary.json "$GPU_CHECK_REPORT"/
    [ -f "$OUT/environment.txt" ] && cp "$OUT/environment.txt" "$GPU_CHECK_REPORT"/
    log "summary copied to $GPU_CHECK_REPORT"
fi
exit "$rc"
