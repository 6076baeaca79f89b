#!/usr/bin/env bash
# Re-runs after the per-iteration schedule fix (vpns_deploy/schedules.py), headline cells first.
# Each step is resumable (finished cells are skipped), so the script can be started again.
set -uo pipefail
cd "$(dirname "$0")/.."
bench/run_channel.sh --phase train --cells vpns,tp,tp_steps
bench/run_accuracy_grid.sh --methods hydra,vpns --sparsities 0.9 --seeds 7 --extra-seeds 9
bench/run_channel.sh --phase train --cells hydra,magnitude
bench/run_accuracy_grid.sh --methods dense,magnitude,hydra,vpns --sparsities 0.9 --seeds 7 --extra-seeds 9
