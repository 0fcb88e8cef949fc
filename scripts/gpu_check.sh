#!/usr/bin/env bash
# The prepared GPU check: the CUDA tests (test/test_cuda.py) and a short swapped-vs-resident benchmark
# on the GPU, written to one JSON. It runs swapnet_core from this source tree with the machine's own
# python3 (torch, torchvision, transformers, safetensors, pytest; no ROS, no network needed),
# installs nothing, and ends within 8 minutes. Without a GPU it runs the same on the CPU and says so.
#
#   bash scripts/gpu_check.sh [OUT_DIR] [--quick]   (default: $OUT if set, else out/gpu_check;
#                                                  --quick: resnet50 only, no tests)
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
OUT_DIR="${1:-${OUT:-${ROOT}/out/gpu_check}}"
PY="${PYTHON:-python3}"
mkdir -p "${OUT_DIR}"
export PYTHONPATH="${ROOT}:${ROOT}/test${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
timeout 470 "${PY}" "${ROOT}/bench/gpu_check.py" --out "${OUT_DIR}" "${@:2}"
rc=$?
if [ "${rc}" -eq 124 ]; then echo "gpu_check.sh: stopped at its 470 s limit; partial results in ${OUT_DIR}" >&2; fi
exit "${rc}"
