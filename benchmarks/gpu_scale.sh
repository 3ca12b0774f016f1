#!/usr/bin/env bash
# λ̂ of a deep linear network at the paper's largest scale (Furman & Lau 2024, §4) on one GPU:
# 4 layers of width 5000 (d = 1.0e8), rank 500, n = 1e6 samples made on the GPU, batch 500, float32.
# Prints every target figure (λ̂ vs Aoyagi's λ, quarters, R̂, wall time, calibration share, one
# chain vs a plain training step, peak GPU memory, the largest d for 80 GB); see
# benchmarks/gpu_scale.py for the knobs. Needs only torch and numpy.
#
#   bash benchmarks/gpu_scale.sh                          # the paper's scale (needs a GPU)
#   SCALE=tiny bash benchmarks/gpu_scale.sh               # a ~1 minute check of the script on a CPU
#   JSON=gpu_scale.json bash benchmarks/gpu_scale.sh      # also write every figure to a file
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_scale.py "$@"
