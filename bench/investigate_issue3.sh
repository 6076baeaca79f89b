#!/usr/bin/env bash
# Issue 3 follow-up: does the prompt pay off with a larger frame, a longer budget, or at all?
# ResNet-20, full train split, full 10k test split, sparsity 0.9, seed 7. Resumable per cell.
#   pad4:               VPNs 1+1 epochs with a 4-px frame (HYDRA is unchanged: it has no prompt).
#   two_pass_no_prompt: VPNs 1+1 with both prompt learning rates 0, so the prompt stays exactly zero:
#                       HYDRA plus VPNs' extra un-augmented pass, the ablation that isolates the prompt.
#   long3:              VPNs 3+3 vs HYDRA 6+6 (3x the committed grid's budget, equal optimiser steps).
# Session 2 ran pad4 and two_pass_no_prompt; long3 was started and stopped (CPU given to issues 5/6).
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20
        --data tar:../shared/data/cifar10-jpeg.tar.gz --sparsities 0.9 --seeds 7 --extra-seeds ""
        --runs bench/runs/investigate)
PY=${PY:-.venv/bin/python}
mkdir -p bench/results/investigate
$PY -m bench.accuracy "${common[@]}" --methods vpns --epochs 1 --pad 4 --out bench/results/investigate/pad4.json
$PY -m bench.accuracy "${common[@]}" --methods vpns --epochs 1 --lr-prompt-mask 0 --lr-prompt-tune 0 \
    --out bench/results/investigate/two_pass_no_prompt.json
$PY -m bench.accuracy "${common[@]}" --methods hydra,vpns --epochs 3 --out bench/results/investigate/long3.json
