#!/usr/bin/env bash
# Issue 3, session 4, third queue (replaces run_session4b.sh after its scores_lr_1e-3 seed-9 cells):
# the score learning rate 1e-3 lifted HYDRA and VPNs by ~3 points at 90 % on both seeds, so the
# grid's other sparsities are run at that rate too (dense and magnitude have no scores: unchanged),
# then the 1e-2 probe. Waits for pid $1. ResNet-20, full splits, 784 optimiser steps per cell.
set -uo pipefail
cd "$(dirname "$0")/.."
while [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
common=(--model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20
        --data tar:../shared/data/cifar10-jpeg.tar.gz)
PY=${PY:-.venv/bin/python}
out=bench/results/investigate
cell() {  # name, then bench.accuracy arguments
    local name=$1; shift
    $PY -m bench.accuracy "${common[@]}" --runs "bench/runs/investigate/$name" --out "$out/$name.json" "$@"
}
cell scores_lr_1e-3 --methods hydra,vpns --epochs 1 --lr-scores 1e-3 --sparsities 0.9,0.7,0.5 --seeds 7 --extra-seeds 9
cell scores_lr_1e-2 --methods hydra,vpns --epochs 1 --lr-scores 1e-2 --sparsities 0.9 --seeds 7 --extra-seeds ""
