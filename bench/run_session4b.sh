#!/usr/bin/env bash
# Issue 3, session 4, second queue: the score learning rate turned out to be what matters
# (HYDRA 79.63 -> 82.81 with Adam 1e-3 instead of 1e-4, seed 7), so it replaced run_session4.sh's
# last step (long2, kept last here). Waits for pid $1, then, at 90 %, ResNet-20, full splits, 784 steps:
#   scores_lr_1e-3: seed 9 as well (mean over two seeds)
#   scores_lr_1e-2: HYDRA and VPNs with scores on Adam 1e-2
#   long2:          VPNs 2+2 vs HYDRA 4+4 at the reference score lr (2x the grid's budget)
# Resumable per cell.
defaults=(--sparsities 0.9 --seeds 7 --extra-seeds "")
source "$(dirname "$0")/investigate_cells.sh"
cell scores_lr_1e-3 --methods hydra,vpns --epochs 1 --lr-scores 1e-3 --seeds 7,9
cell scores_lr_1e-2 --methods hydra,vpns --epochs 1 --lr-scores 1e-2
cell long2 --methods hydra,vpns --epochs 2
