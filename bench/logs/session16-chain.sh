#!/bin/bash
# Session 16 chain (frozen worktree /work/wt-s16 at 695a729), one job at a time.
# Issue 15 item 2: the channel split at twice the budget (E = 2: 2 + 2 epochs), seed 7.
# (A vpns_kd accuracy cell was started first and stopped after 2 min in favour of this.)
set -x
cd /work/wt-s16
export PYTHONPATH=/work/wt-s16
PY=/work/main/.venv/bin/python
$PY -m bench.channel --model /work/shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 --data tar:/work/shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 2 --seed 7 --cells vpns_tune,vpns,tp_steps --out /work/main/bench/results/channel-equal-steps-e2.json --runs /work/main/bench/runs/channel-equal-steps-e2 --phase train
