#!/usr/bin/env bash
# Issue 3 follow-up: does the prompt pay off with a larger frame or a longer budget?
# ResNet-20, full train split, full 10k test split, sparsity 0.9, seed 7. Resumable per cell.
#   pad4:  VPNs 1+1 epochs with a 4-px frame (HYDRA is unchanged: it has no prompt).
#   long3: VPNs 3+3 vs HYDRA 6+6 (3x the committed grid's budget, equal optimiser steps).
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20
        --data tar:../shared/data/cifar10-jpeg.tar.gz --sparsities 0.9 --seeds 7 --extra-seeds ""
        --runs bench/runs/investigate)
PY=${PY:-.venv/bin/python}
mkdir -p bench/results/investigate
# pad4 done first (bench/results/investigate/pad4.json)
$PY -m bench.accuracy "${common[@]}" --methods vpns --epochs 1 --pad 4 --out bench/results/investigate/pad4.json
$PY -m bench.accuracy "${common[@]}" --methods hydra,vpns --epochs 3 --out bench/results/investigate/long3.json
