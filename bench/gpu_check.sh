#!/usr/bin/env bash
# The GPU check from the source tree (nothing installed): bench/gpu_check.sh OUT_DIR [--dry-run] [--data DIR].
# What it runs, its limits and the exact device call: bench/gpu_check.py's docstring (--help).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
