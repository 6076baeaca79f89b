#!/bin/bash
# Session 15 chain (frozen worktree /work/wt-s15 at 8491930), one job at a time.
set -x
cd /work/wt-s15
export PYTHONPATH=/work/wt-s15
PY=/work/main/.venv/bin/python
$PY -m bench.accuracy --model /work/shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --methods vpns,hydra,magnitude --sparsities 0.9 --seeds 9 --extra-seeds '' --epochs 3 --lr-scores auto --out /work/main/bench/results/floor/50k-e3.json --runs /work/main/bench/runs/floor-bnaug/50k-e3
$PY -m bench.channel --model /work/shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 1 --seed 9 --cells tp_steps_kd,vpns_tune_kd --out /work/main/bench/results/channel-equal-steps-seed9.json --runs /work/main/bench/runs/channel-equal-steps-seed9 --phase train
