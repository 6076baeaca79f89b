#!/bin/bash
# Session 17, replaces session17-chain.sh after its first step (the clean-clone CI, left running): the transfer
# probes of issue 14 came before the second channel seed at 2 + 2 epochs, which only strengthens a decision
# already made. One job at a time on the otherwise idle machine.
# 1. wait for the clean-clone CI of 7fa5314 (pid 17934, log bench/logs/session17-ci.log).
# 2. issue 15 item 3: VPNs KD at 50k x 3 + 3, seed 7 (frozen worktree /work/wt-s16 at 695a729).
# 3. issue 14 probes (frozen worktree /work/wt-t14 at 0321daa, the code of the transfer cells they compare with):
#    vpns-ptune, vpns-pmask (which stage the prompt trains in), vpns-pad18 (a frame twice as wide).
# 4. issue 14: hydra-s0.7-seed7 (HYDRA at 0.7), if time is left.
while kill -0 17934 2>/dev/null; do sleep 15; done
set -x
date; tail -3 /work/main/bench/logs/session17-ci.log
PY=/work/main/.venv/bin/python
cd /work/wt-s16
PYTHONPATH=/work/wt-s16 $PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --sparsities 0.9 --seeds 7 --extra-seeds '' --epochs 3 --lr-scores auto --out /work/main/bench/results/floor/50k-e3.json --runs /work/main/bench/runs/floor-bnaug/50k-e3 --methods vpns_kd
date
cd /work/wt-t14
for cell in vpns-ptune-s0.9-seed7 vpns-pmask-s0.9-seed7 vpns-pad18-s0.9-seed7 hydra-s0.7-seed7; do
  PYTHONPATH=/work/wt-t14 $PY -m bench.transfer --out /work/main/bench/results/transfer.json --runs /work/main/bench/runs/transfer --cells $cell
  date
done
