# Sourced by the issue-3 investigation queues (bench/run_session4*.sh): waits for pid $1 (if any), then
# defines `cell NAME ARGS...`, one resumable bench.accuracy grid on ResNet-20 and the full CIFAR-10
# splits, writing bench/results/investigate/NAME.json with its run directories under
# bench/runs/investigate/NAME. A queue's own defaults go in the array `defaults` before sourcing.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
while [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
PY=${PY:-.venv/bin/python}
out=bench/results/investigate
mkdir -p "$out"
cell() {  # name, then bench.accuracy arguments (later ones win)
    local name=$1; shift
    $PY -m bench.accuracy --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \
        --data tar:../shared/data/cifar10-jpeg.tar.gz "${defaults[@]}" \
        --runs "bench/runs/investigate/$name" --out "$out/$name.json" "$@"
}
