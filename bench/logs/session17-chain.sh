#!/bin/bash
# Session 17 chain, one job at a time on the otherwise idle machine (light editing beside it only).
# 1. clean-clone CI of 7fa5314 (the channel-split default) - `make demo && make test`, as CI does.
# 2. issue 15 item 3: VPNs KD at 50k x 3 + 3, seed 7 (frozen worktree /work/wt-s16 at 695a729; training code
#    for unstructured mode is unchanged by 7fa5314).
# 3. issue 15 item 2: the channel split at 2 + 2 epochs, seed 9 (vpns_tune, tp_steps), same worktree.
# 4. issue 15 item 1: dense fine-tune at 50k x 3 + 3, seed 7, if the session still has time.
set -x
date
rm -rf /work/cc && git clone -q /work/main /work/cc && cd /work/cc && git log --oneline -1 && \
  ( time (make demo > /work/main/bench/logs/session17-ci-demo.log 2>&1 && make test) ) > /work/main/bench/logs/session17-ci.log 2>&1
echo "ci rc=$?"; tail -3 /work/main/bench/logs/session17-ci.log
date
cd /work/wt-s16
export PYTHONPATH=/work/wt-s16
PY=/work/main/.venv/bin/python
FLOOR="--model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --sparsities 0.9 --seeds 7 --extra-seeds '' --epochs 3 --lr-scores auto --out /work/main/bench/results/floor/50k-e3.json --runs /work/main/bench/runs/floor-bnaug/50k-e3"
eval $PY -m bench.accuracy $FLOOR --methods vpns_kd
date
$PY -m bench.channel --model /work/shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 2 --seed 9 --cells vpns_tune,tp_steps --out /work/main/bench/results/channel-equal-steps-e2-seed9.json --runs /work/main/bench/runs/channel-equal-steps-e2-seed9 --phase train
date
eval $PY -m bench.accuracy $FLOOR --methods dense
date
