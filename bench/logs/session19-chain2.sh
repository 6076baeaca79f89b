#!/bin/bash
# Session 19, second chain. The first (session19-chain.sh) ran the 0.7 control (VPNs - control = +0.62 at 0.7,
# seed 7) and the prompt-lr 1e-3 probe, then was stopped 5 minutes into the 160-px seed-9 cell to give the time to
# the question the 0.7 control raised: is +0.62 the prompt or the seed? The same pair at seed 9, from the worktree
# /work/wt-t14b: commit 0321daa (the training code of every transfer cell) plus only the grid entry for these cells.
set -x
date
PY=/work/main/.venv/bin/python
cd /work/wt-t14b
for cell in vpns-zero-s0.7-seed9 vpns-s0.7-seed9; do
  PYTHONPATH=/work/wt-t14b $PY -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells $cell
  date
done
