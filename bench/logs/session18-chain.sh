#!/bin/bash
# Session 18: the rest of issue 14's grid plus its input-size probe, one cell per process, from the frozen
# worktree /work/wt-t14 (0321daa, the code every existing transfer cell ran).
# Started as a 6-cell loop (magnitude-s0.9-seed7 first); after that first cell had begun, the loop was replaced by
# this order (the first cell kept running and is waited for): the simplest baseline at 0.9, the paper's own HYDRA
# baseline, then the input-size probe the issue lists and nothing has covered (VPNs and its zero-prompt control at
# 160 px, seed 7: does the prompt start to matter as the input grows towards the paper's 224?), then the 0.7 control
# and magnitude.
# Replaced again while hydra-paper ran (its parent process 25003 is waited for): magnitude at 0.7 and its second
# seed at 0.9 (15 minutes each) before the 0.7 control, which goes last (it may not finish this session; it resumes).
set -x
date
PY=/work/main/.venv/bin/python
cd /work/wt-t14
set +x
while kill -0 25003 2>/dev/null; do sleep 15; done
set -x
date
for cell in vpns-s0.9-seed7 vpns-zero-s0.9-seed7; do
  PYTHONPATH=/work/wt-t14 $PY -m bench.transfer --input-size 160 --out /work/main/bench/results/transfer-160.json --runs /work/main/bench/runs/transfer-160 --cells $cell
  date
done
for cell in magnitude-s0.7-seed7 magnitude-s0.9-seed9 vpns-zero-s0.7-seed7; do
  PYTHONPATH=/work/wt-t14 $PY -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells $cell
  date
done
