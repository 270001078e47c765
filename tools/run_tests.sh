#!/usr/bin/env bash
# The test suite: installs what it needs into .venv/ (tools/setup_env.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh tests/test_model.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
exec "${VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
