#!/usr/bin/env bash
# The main job: train the quick multi-mask config on the embedded synthetic occlusion dataset, evaluate it
# (per-mask COCO AP), then render predictions on validation images and plot the run.
# Installs what it needs into .venv/ first (tools/setup_env.sh).
# Extra arguments are config overrides for train_net.py, e.g. `bash tools/run_main.sh SOLVER.MAX_ITER 100`.
# Environment: OUTPUT_DIR (default output/multimask_R18_FPN_quick_synthetic), DEVICE (default: cuda if
# available, else cpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY="${VENV:-$ROOT/.venv}/bin/python"
CONFIG=configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml
OUT="${OUTPUT_DIR:-output/multimask_R18_FPN_quick_synthetic}"
DEVICE="${DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"

echo "== train + evaluate ($CONFIG, device $DEVICE) -> $OUT"
"$PY" train_net.py --config-file "$CONFIG" MODEL.DEVICE "$DEVICE" OUTPUT_DIR "$OUT" "$@"

echo "== render predictions on 8 validation images -> $OUT/renderings"
mapfile -t IMAGES < <("$PY" -c "
import multimask
from detectron2.data import DatasetCatalog
for d in DatasetCatalog.get('multimask_synthetic_val')[:8]:
    print(d['file_name'])
" 2>/dev/null)
"$PY" demo/demo.py --config-file "$CONFIG" --input "${IMAGES[@]}" --output "$OUT/renderings" \
    --json-output "$OUT/renderings/predictions.json" --confidence-threshold 0.5 \
    --opts MODEL.WEIGHTS "$OUT/model_final.pth" MODEL.DEVICE "$DEVICE"

echo "== plot the run -> $OUT/metrics.png"
"$PY" tools/plot_metrics.py "$OUT/metrics.json" --output "$OUT/metrics.png"
echo "== done: per-mask AP in $OUT/log.txt and $OUT/inference/, renderings in $OUT/renderings/"
