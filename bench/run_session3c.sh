#!/usr/bin/env bash
# Session-3 queue, third part: waits for the issue-3 grid already running (pid $1), then the
# vpns_widths channel cell, then (alone on the machine) the channel latency phase for every cell.
set -uo pipefail
cd "$(dirname "$0")/.."
while kill -0 "$1" 2>/dev/null; do sleep 20; done
bench/run_channel.sh --phase train --cells vpns_widths
bench/run_channel.sh --phase latency
