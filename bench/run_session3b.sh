#!/usr/bin/env bash
# Session-3 queue, second part: waits for the channel cells already running (pid $1), files the
# first `vpns` cell (run before channel_init existed, so with the one-shot L1 init) under
# `vpns_l1init`, then runs the group-norm-initialised `vpns` cell, the issue-3 headline cells and,
# alone on the machine, the channel latency phase. Every step is resumable.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
while kill -0 "$1" 2>/dev/null; do sleep 20; done
$PY - <<'PYEOF'
import json, shutil
from pathlib import Path
p = Path("bench/results/channel.json")
r = json.loads(p.read_text())
if "vpns" in r["cells"] and "vpns_l1init" not in r["cells"]:
    cell = r["cells"].pop("vpns")
    cell["note"] = "run as cell `vpns` before channel_init existed: the one-shot L1 init, i.e. channel_init='l1'"
    old, new = Path("bench/runs/channel/vpns"), Path("bench/runs/channel/vpns_l1init")
    if old.exists() and not new.exists():
        shutil.move(old, new)
        cell["onnx"] = cell["onnx"].replace("/vpns/", "/vpns_l1init/")
        cell["dense_onnx"] = cell["dense_onnx"].replace("/vpns/", "/vpns_l1init/")
    r["cells"]["vpns_l1init"] = cell
    p.write_text(json.dumps(r, indent=2))
    print("filed the first vpns cell as vpns_l1init")
PYEOF
bench/run_channel.sh --phase train --cells vpns
bench/run_accuracy_grid.sh --methods hydra,vpns --sparsities 0.9 --seeds 7 --extra-seeds 9
bench/run_channel.sh --phase latency
