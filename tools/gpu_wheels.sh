#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with every wheel multimask needs on an air-gapped GPU server that
# already has Python 3.12, torch, torchvision, numpy, opencv-headless, matplotlib, tensorboard,
# tabulate, cloudpickle, portalocker, tqdm, Pillow, PyYAML, packaging and pytest (the image of
# issue 22: torch 2.11 / CUDA 13, torchvision 0.26, numpy 2.5), but nothing of detectron2's stack:
#
#   binary wheels for CPython 3.12 manylinux x86-64    pycocotools, faster-coco-eval
#   pure-Python wheels                                yacs, omegaconf, hydra-core, termcolor,
#                                                     submitit, setuptools < 81 (pkg_resources, which
#                                                     detectron2.model_zoo imports; setuptools >= 81
#                                                     dropped it)
#   source-only packages, built into wheels here      fvcore, iopath, antlr4-python3-runtime
#   detectron2's Python part                          from PyPI's sal-detectron2 wheel as
#                                                     tools/setup_env.sh uses it: its CPython 3.10
#                                                     _C extension and its tools/ dropped, retagged
#                                                     py3-none-any (ROIAlign and NMS come from
#                                                     torchvision)
#
# then checks, with pip's own tag rules, that every wheel installs on CPython 3.12 x86-64, that the
# whole folder is at most 48 MiB, and writes .whl/MANIFEST.txt (name, version, size, sha256).
# Run it here (it needs PyPI); then the folder travels with the working tree, and
#   GPU_CHECK_OFFLINE=1 bash tools/gpu_check.sh
# installs it there with `pip install --no-index --no-deps --target`.
#
# Environment: WHEEL_DIR (default .whl), PYTHON (the python whose pip downloads, default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${WHEEL_DIR:-.whl}"
PY="${PYTHON:-python3}"
MAX_MIB=48

log() { echo "[gpu_wheels] $*" >&2; }

# The pins: versions known to work with detectron2 0.7.2 and multimask (the ones setup_env.sh's
# ranges resolve to today), so the folder is the same whenever it is made.
BINARY=(pycocotools==2.0.11 faster-coco-eval==1.8.0)
PURE=(yacs==0.1.8 omegaconf==2.3.1 hydra-core==1.3.8 termcolor==3.3.0 submitit==1.5.4
      setuptools==80.10.2)
SOURCE=(fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3)
DETECTRON2=sal-detectron2==0.7.2
# pip matches manylinux_2_N exactly: name every level the wheels above use
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
TARGET_PY=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)

PIP=("$PY" -m pip --disable-pip-version-check -q)
rm -rf "$DIR"
mkdir -p "$DIR"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT

log "binary and pure-Python wheels for CPython 3.12 manylinux x86-64"
"${PIP[@]}" download --no-deps --only-binary=:all: "${TARGET_PY[@]}" "${PLATFORMS[@]}" -d "$DIR" \
    "${BINARY[@]}" "${PURE[@]}"

log "source-only packages, built into wheels: ${SOURCE[*]}"
"${PIP[@]}" wheel --no-deps --no-binary=:all: -w "$T/built" "${SOURCE[@]}"
for w in "$T"/built/*.whl; do
    case "$(basename "$w")" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) cp "$w" "$DIR/" ;;
        *) log "ERROR: $(basename "$w") is not a pure-Python wheel"; exit 1 ;;
    esac
done

log "detectron2's Python part from $DETECTRON2"
"${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    -d "$T/d2" "$DETECTRON2"
"$PY" - "$T/d2" "$DIR" <<'EOF'
"""Repack the sal-detectron2 wheel as py3-none-any: no _C*.so, no top-level tools/ package."""
import base64
import hashlib
import os
import sys
import zipfile

src_dir, out_dir = sys.argv[1], sys.argv[2]
(src,) = [os.path.join(src_dir, f) for f in os.listdir(src_dir) if f.endswith(".whl")]
name, version = os.path.basename(src).split("-")[:2]
dist_info = f"{name}-{version}.dist-info"
out = os.path.join(out_dir, f"{name}-{version}-py3-none-any.whl")


def keep(path):
    base = os.path.basename(path)
    return not (path.startswith("tools/") or (base.startswith("_C") and base.endswith(".so")))


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


records = []
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        path = info.filename
        if not keep(path) or path == f"{dist_info}/RECORD":
            continue
        data = zin.read(info)
        if path == f"{dist_info}/WHEEL":
            lines = [ln for ln in data.decode().splitlines() if not ln.startswith(("Tag:", "Root-"))]
            data = ("\n".join(lines + ["Root-Is-Purelib: true", "Tag: py3-none-any"]) + "\n").encode()
        if path == f"{dist_info}/top_level.txt":
            data = b"detectron2\n"
        zout.writestr(path, data)
        records.append(record_line(path, data))
    records.append(f"{dist_info}/RECORD,,")
    zout.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
print(f"[gpu_wheels] {os.path.basename(out)}: {len(records) - 1} files", file=sys.stderr)
EOF

log "checking that every wheel installs on CPython 3.12 x86-64 (pip's tag rules, --dry-run)"
"${PIP[@]}" install --dry-run --no-index --no-deps --only-binary=:all: "${TARGET_PY[@]}" \
    "${PLATFORMS[@]}" --target "$T/check" "$DIR"/*.whl

"$PY" - "$DIR" "$MAX_MIB" <<'EOF'
"""MANIFEST.txt (name, version, size, sha256 of each wheel) and the size limit."""
import hashlib
import os
import sys

wheel_dir, max_mib = sys.argv[1], float(sys.argv[2])
rows, total = [], 0
names = {}
for f in sorted(os.listdir(wheel_dir)):
    if not f.endswith(".whl"):
        continue
    path = os.path.join(wheel_dir, f)
    name, version = f.split("-")[:2]
    key = name.lower().replace("-", "_")
    if key in names:  # two versions of one package stop pip install as a whole
        sys.exit(f"[gpu_wheels] ERROR: two wheels of {name}: {names[key]} and {f}")
    names[key] = f
    size = os.path.getsize(path)
    total += size
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    rows.append(f"{name}\t{version}\t{size}\t{digest}\t{f}")
with open(os.path.join(wheel_dir, "MANIFEST.txt"), "w") as fh:
    fh.write("# name\tversion\tbytes\tsha256\tfile\n" + "\n".join(rows) + "\n")
mib = total / 2**20
print(f"[gpu_wheels] {len(rows)} wheels, {mib:.1f} MiB (limit {max_mib:g} MiB)", file=sys.stderr)
if mib > max_mib:
    sys.exit(f"[gpu_wheels] ERROR: {mib:.1f} MiB is over {max_mib:g} MiB")
EOF
log "done: $DIR/ (see $DIR/MANIFEST.txt); carry it along with the working tree"
