#!/usr/bin/env bash
# Build benchmarks/.venv-devinterp: devinterp 1.3.2 beside the project's torch, isolated from .venv,
# so the project never imports it. bench_llc.py runs devinterp in a subprocess of this venv.
#   bash benchmarks/setup_devinterp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-devinterp
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# torch pinned to the project's version (requirements.txt), so both sides run the same kernels.
"$VENV/bin/python" -m pip install --quiet torch==2.14.1 -r benchmarks/requirements.txt
"$VENV/bin/python" -c "import devinterp, torch; from importlib.metadata import version; print('devinterp', version('devinterp'), 'torch', torch.__version__)"
