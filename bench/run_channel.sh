#!/usr/bin/env bash
# The committed channel benchmark (docs/benchmarks.md): ResNet-56 from ../shared at 2x fewer MACs,
# full CIFAR-10 JPEG train split, full 10k test split, E=1. Resumable: finished cells are skipped.
#   bench/run_channel.sh --phase train     # long; may share the machine
#   bench/run_channel.sh --phase latency   # timed: run it on an idle machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec $PY -m bench.channel --model ../shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 \
    --data tar:../shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 1 --cells vpns,tp,magnitude,hydra,tp_steps \
    --out bench/results/channel.json --runs bench/runs/channel "$@"
