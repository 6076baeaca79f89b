#!/usr/bin/env bash
# Issue 3, session 4, third queue (replaces run_session4b.sh after its scores_lr_1e-3 seed-9 cells):
# the score learning rate 1e-3 lifted HYDRA and VPNs by ~3 points at 90 % on both seeds, so the
# grid's other sparsities are run at that rate too (dense and magnitude have no scores: unchanged),
# then the 1e-2 probe. Waits for pid $1. ResNet-20, full splits, 784 optimiser steps per cell.
defaults=()
source "$(dirname "$0")/investigate_cells.sh"
cell scores_lr_1e-3 --methods hydra,vpns --epochs 1 --lr-scores 1e-3 --sparsities 0.9,0.7,0.5 --seeds 7 --extra-seeds 9
cell scores_lr_1e-2 --methods hydra,vpns --epochs 1 --lr-scores 1e-2 --sparsities 0.9 --seeds 7 --extra-seeds ""
