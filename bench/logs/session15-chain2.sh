#!/bin/bash
# Session 15, after session15-chain.sh (pid 9897) ends: issue 15 item 3 at 50k x 3 + 3, seed 7. Same frozen worktree.
while kill -0 9897 2>/dev/null; do sleep 20; done
set -x
cd /work/wt-s15
export PYTHONPATH=/work/wt-s15
PY=/work/main/.venv/bin/python
$PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --methods magnitude_kd,hydra_kd,vpns_kd --sparsities 0.9 --seeds 7 --extra-seeds '' --epochs 3 --lr-scores auto --out /work/main/bench/results/floor/50k-e3.json --runs /work/main/bench/runs/floor-bnaug/50k-e3
