#!/bin/bash
# Session 19: the last cell issue 14's grid asks for (the zero-prompt control at 0.7), the low end of the
# prompt-lr probe (1e-3; 8e-3 ran in session 17), then the 160-px input-size probe's second seed (VPNs and its
# control, seed 9). One cell per process, one at a time, from the frozen worktree /work/wt-t14 (0321daa, the code
# every existing transfer cell ran). This checkout is fresh (bench/runs was empty): each cell starts from scratch.
set -x
date
PY=/work/main/.venv/bin/python
cd /work/wt-t14
for cell in vpns-zero-s0.7-seed7 vpns-plr0.001-s0.9-seed7; do
  PYTHONPATH=/work/wt-t14 $PY -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells $cell
  date
done
for cell in vpns-s0.9-seed9 vpns-zero-s0.9-seed9; do
  PYTHONPATH=/work/wt-t14 $PY -m bench.transfer --input-size 160 --out /work/main/bench/results/transfer-160.json --runs /work/main/bench/runs/transfer-160 --cells $cell
  date
done
