#!/usr/bin/env bash
# The GPU check (issue 16, bench/gpu_check.py): on a CUDA machine, SFT (LoRA, QLoRA, padding-free, against TRL),
# DPO, DPO from SFT killed and resumed, Generate at batch 1/8/32 and export, in one JSON and one markdown table.
#   bash bench/gpu-check.sh            # CUDA
#   bash bench/gpu-check.sh --smoke    # CPU, tiny model: proves the check runs (the test suite does this)
#   bash bench/gpu-check.sh --family smolvlm2|qwen2_5_vl|qwen3_vl [--smoke]   # another model family (default
#     idefics3): on CUDA its real architecture with random weights, with --smoke its tiny fixture
# PY names the Python with the worker installed (default: the project's venv; on a GPU image, its python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python-worker/.venv/bin/python}"
export PYTHONPATH="bench${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
