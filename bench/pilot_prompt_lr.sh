#!/usr/bin/env bash
# Pilot for issue 3: does a faster prompt learning rate let the prompt matter on short budgets?
# ResNet-20, 10k training images, 1+1 VPNs epochs (HYDRA 2+2), sparsity 0.9, seed 7.
set -euo pipefail
common=(--model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20
        --data tar:../shared/data/cifar10-jpeg.tar.gz --sparsities 0.9 --seeds 7 --extra-seeds ""
        --epochs 1 --train-subset 10000 --runs bench/runs/pilot)
PY=${PY:-.venv/bin/python}
$PY -m bench.accuracy "${common[@]}" --methods hydra,vpns --out bench/results/pilot/default.json
$PY -m bench.accuracy "${common[@]}" --methods vpns --lr-prompt-mask 3e-3 --out bench/results/pilot/lrpm3e-3.json
$PY -m bench.accuracy "${common[@]}" --methods vpns --lr-prompt-mask 3e-2 --lr-prompt-tune 1.0 --out bench/results/pilot/lrpm3e-2_lrpt1.json
