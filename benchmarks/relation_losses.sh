#!/usr/bin/env bash
# Do relation losses between masks raise per-mask AP? Trains the quick synthetic model with the three
# masks (amodal, visible, occluded) with and without relation losses, same seed and schedule, then
# prints the final per-mask AP of each run (tools in benchmarks/relation_losses_table.py).
#
#   bash benchmarks/relation_losses.sh                 # baseline and weight-1.0 relations, then the table
#   RUNS="base rel1 rel01" bash benchmarks/relation_losses.sh   # also the 0.1 weights
#
# Each run is ~6-7 min on 2 CPU cores when the machine is otherwise idle. NICE=19 runs them at low
# priority on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-output/bench_relation_losses}
CONFIG=configs/quick_schedules/multimask_R18_FPN_quick_synthetic_3masks.yaml
RUNS=${RUNS:-"base rel1"}
EXTRA=${EXTRA:-}  # more overrides for every run, e.g. EXTRA="SOLVER.BASE_LR 0.01"

relations() {  # weight -> the RELATIONS value: visible and occluded inside amodal, occluded = amodal - visible
  echo "[['containment','visible','amodal',$1],['containment','occluded','amodal',$1],['difference','occluded','amodal','visible',$1]]"
}

for run in $RUNS; do
  case $run in
    base) rel="[]" ;;
    rel1) rel=$(relations 1.0) ;;
    rel01) rel=$(relations 0.1) ;;
    *) echo "unknown run $run" >&2; exit 1 ;;
  esac
  if [ -f "$OUT/$run/model_final.pth" ]; then
    echo "== $run: done already ($OUT/$run)"; continue
  fi
  echo "== $run: RELATIONS $rel"
  # A run killed by a signal continues from its last checkpoint (--resume is exact: same result as a
  # run that was never stopped); checkpoints every 50 iterations change nothing else. A run that
  # fails by itself (e.g. diverges) is reported and not retried.
  for attempt in 1 2 3 4 5 6 7 8; do
    resume=()
    [ -f "$OUT/$run/last_checkpoint" ] && resume=(--resume)
    rc=0
    nice -n "${NICE:-0}" /usr/bin/time -f "$run (attempt $attempt): %e s" "$PY" train_net.py \
      --config-file "$CONFIG" "${resume[@]}" MODEL.DEVICE cpu OUTPUT_DIR "$OUT/$run" \
      SOLVER.CHECKPOINT_PERIOD 50 MODEL.ROI_MULTI_MASK_HEAD.RELATIONS "$rel" $EXTRA \
      >> "$OUT.$run.stdout" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] && break
    if [ "$rc" -lt 128 ]; then
      echo "== $run: failed (exit $rc): $(grep -a 'Error' "$OUT.$run.stdout" | tail -1)"
      break
    fi
    echo "== $run: attempt $attempt killed (exit $rc), resuming"
  done
done
"$PY" benchmarks/relation_losses_table.py "$OUT"
