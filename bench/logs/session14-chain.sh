#!/bin/bash
# Session 14 chain (frozen worktree /work/wt-s14 at a28374c), one job at a time.
set -x
cd /work/wt-s14
export PYTHONPATH=/work/wt-s14
PY=/work/main/.venv/bin/python
$PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --methods hydra_kd --sparsities 0.9 --seeds 7 --extra-seeds '' --epochs 1 --lr-scores auto --out /work/main/bench/results/floor/50k-e1.json --runs /work/main/bench/runs/floor-bnaug/50k-e1
$PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --methods vpns,hydra,magnitude --sparsities 0.9 --seeds 7 --extra-seeds '' --epochs 3 --lr-scores auto --out /work/main/bench/results/floor/50k-e3.json --runs /work/main/bench/runs/floor-bnaug/50k-e3
$PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --methods hydra_kd,vpns_kd --sparsities 0.9 --seeds 9 --extra-seeds '' --epochs 1 --lr-scores auto --out /work/main/bench/results/floor/50k-e1.json --runs /work/main/bench/runs/floor-bnaug/50k-e1
$PY -m bench.channel --model ../shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 --data tar:../shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 1 --cells tp_steps_kd --out /work/main/bench/results/channel-equal-steps.json --runs /work/main/bench/runs/channel-equal-steps --phase train
