#!/usr/bin/env bash
# Creates .venv/ with torch, torchvision, detectron2 and multimask's other dependencies, unless they are
# already importable there. Safe to call repeatedly: a complete environment is left as it is.
#
# detectron2 route (no detectron2 on PyPI):
#   1. a detectron2 importable by the venv's python is kept as it is (e.g. built from source for your CUDA);
#   2. otherwise the pure-Python part of PyPI's `sal-detectron2` wheel (a build of detectron2's main branch)
#      is unpacked into site-packages; its compiled `_C` targets CPython 3.10 and is dropped, so ROIAlign and
#      NMS come from torchvision.
# Environment: PYTHON (interpreter for a new venv, default python3), VENV (default .venv),
#              MULTIMASK_TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TORCH_SPEC="${MULTIMASK_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

log() { echo "[setup_env] $*" >&2; }

if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

have() { "$PY" -c "$1" >/dev/null 2>&1; }
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if ! have "import torch, torchvision"; then
    log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "${PIP[@]}" $TORCH_SPEC
fi

DEPS=(fvcore iopath yacs pycocotools "faster-coco-eval>=1.8" opencv-python-headless "omegaconf>=2.1,<2.4"
      "hydra-core>=1.1" tabulate termcolor cloudpickle tensorboard matplotlib "setuptools<81" tqdm Pillow
      packaging pytest "submitit>=1.5")
if ! have "import fvcore, iopath, yacs, pycocotools, faster_coco_eval, cv2, omegaconf, hydra, tabulate, \
termcolor, cloudpickle, tensorboard, matplotlib, pkg_resources, tqdm, PIL, pytest, submitit"; then
    log "installing detectron2's and multimask's dependencies"
    "${PIP[@]}" "${DEPS[@]}"
fi

# ONNX export and its tests (tools/export_model.py --format onnx, multimask_deploy); as setup.py's extras
ONNX_DEPS=("onnx==1.23.2" "onnxruntime==1.32.0")
if ! have "import onnx, onnxruntime"; then
    log "installing ${ONNX_DEPS[*]}"
    "${PIP[@]}" "${ONNX_DEPS[@]}"
fi

if ! have "import detectron2"; then
    log "installing detectron2 from the sal-detectron2 wheel (Python part only)"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    T="$(mktemp -d)"
    trap 'rm -rf "$T"' EXIT
    "$PY" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: \
        --python-version 3.10 --implementation cp --target "$T" sal-detectron2==0.7.2
    rm -rf "$T/tools" "$T"/detectron2/_C*.so
    cp -r "$T/detectron2" "$T"/sal_detectron2-*.dist-info "$SITE/"
fi

# checked from / : in the repo root, the source tree itself is importable without an install
if ! (cd / && "$PY" -c "import multimask, os, sys; \
sys.exit(0 if os.path.realpath(os.path.dirname(multimask.__file__)).startswith(os.path.realpath('$ROOT')) else 1)") \
    >/dev/null 2>&1; then
    log "installing multimask (editable)"
    "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
fi

"$PY" -c "import detectron2, torch, multimask; print('[setup_env] ok: torch', torch.__version__, \
'detectron2', detectron2.__version__)" >&2
