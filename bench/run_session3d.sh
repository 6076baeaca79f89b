#!/usr/bin/env bash
# Session-3 queue, last part (after the schedule decision): waits for the vpns_widths channel cell
# (pid $1), times every channel graph alone on the machine, then re-runs the issue-3 VPNs cells at 90 %
# (the cells without a prompt are carried over: see bench/results/accuracy.json "carried_over"), then
# the learned-widths channel `vpns` cell. Resumable.
set -uo pipefail
cd "$(dirname "$0")/.."
while kill -0 "$1" 2>/dev/null; do sleep 20; done
bench/run_channel.sh --phase latency
bench/run_accuracy_grid.sh --methods hydra,vpns --sparsities 0.9 --seeds 7 --extra-seeds 9
bench/run_channel.sh --phase train --cells vpns
