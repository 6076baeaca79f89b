#!/usr/bin/env bash
# The committed accuracy grid (docs/benchmarks.md): ResNet-20 from ../shared, full CIFAR-10 JPEG
# train split, full 10k test split, VPNs 1+1 epochs (HYDRA 2+2, magnitude 4, dense 4: equal steps).
# Resumable: run it again and finished cells are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec $PY -m bench.accuracy --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \
    --data tar:../shared/data/cifar10-jpeg.tar.gz --epochs 1 --out bench/results/accuracy.json "$@"
