#!/usr/bin/env bash
# GPU check (BENCHMARKS.md, "GPU check"); the work is in benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh --prepare [opts]  here, with network: carried wheels into .whl/
#                                                  and the small dataset into .gpu_check/
#   bash benchmarks/gpu_check.sh [opts]            on the lent GPU machine (device tool, carry
#                                                  .whl and .gpu_check): writes $OUT/gpu_check.json
#
# PYTHON picks the interpreter; by default the checkout's .venv prepares (it has backlm and
# rustbpe) and the device's python3 runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--prepare" ]]; then
    shift
    py="${PYTHON:-python3}"
    [[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && py=.venv/bin/python
    exec "$py" benchmarks/gpu_check.py prepare "$@"
fi
exec "${PYTHON:-python3}" benchmarks/gpu_check.py run "$@"
