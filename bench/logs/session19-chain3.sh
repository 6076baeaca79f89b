#!/bin/bash
# Session 19, third chain: put the 0.7 target (dense - VPNs) and the 0.7 HYDRA margin on two seeds each, after
# the clean-clone CI run has finished (never beside it). Worktree /work/wt-t14b: 0321daa's training code plus
# only the grid entries (b86df00).
while ! grep -q "ci-rc=" /work/main/bench/logs/session19-ci.log; do sleep 10; done
set -x
date
PY=/work/main/.venv/bin/python
cd /work/wt-t14b
for cell in dense-seed9 hydra-s0.7-seed9; do
  PYTHONPATH=/work/wt-t14b $PY -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells $cell
  date
done
