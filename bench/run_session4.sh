#!/usr/bin/env bash
# Issue 3, session 4: with the stage-1 prompt schedule fixed, does any knob make the prompt pay off?
# Waits for the accuracy grid (pid $1), then runs, at 90 % sparsity, seed 7, ResNet-20, full splits,
# 784 optimiser steps per cell unless said otherwise (compare with the grid's HYDRA and VPNs cells):
#   prompt_lr_1e-3, prompt_lr_1e-2: VPNs with the stage-1 prompt on Adam 1e-3 / 1e-2 (reference 1e-4)
#   scores_lr_1e-3:                 HYDRA and VPNs with the score optimiser at Adam 1e-3 (reference 1e-4)
#   long2:                          VPNs 2+2 vs HYDRA 4+4 epochs (2x the grid's budget, equal steps)
# Resumable per cell: run it again and finished cells are skipped.
defaults=(--sparsities 0.9 --seeds 7 --extra-seeds "")
source "$(dirname "$0")/investigate_cells.sh"
cell prompt_lr_1e-3 --methods vpns --epochs 1 --lr-prompt-mask 1e-3
cell prompt_lr_1e-2 --methods vpns --epochs 1 --lr-prompt-mask 1e-2
cell scores_lr_1e-3 --methods hydra,vpns --epochs 1 --lr-scores 1e-3
cell long2 --methods hydra,vpns --epochs 2
