#!/bin/bash
# Session 19, fourth chain: HYDRA at 0.7 seed 9 (stopped in chain 3 to leave the clean-clone CI alone), now that
# CI has finished. Worktree /work/wt-t14b at b86df00 (0321daa's training code plus the grid entries).
set -x
date
cd /work/wt-t14b
PYTHONPATH=/work/wt-t14b /work/main/.venv/bin/python -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells hydra-s0.7-seed9
date
