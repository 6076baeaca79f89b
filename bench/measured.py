"""What the measurement tables measured in fresh processes share: their command line and their record.

A measurement table (latency_repeat, prompt_cost) times a run's graphs in PROCESSES fresh processes and
saves one JSON with the command, the machine and every measurement, plus the markdown it prints.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(module: str, doc: str | None, run_help: str, budget_s: float, budget_help: str,
           out: Path) -> argparse.ArgumentParser:
    """run, --processes, --budget, --out; the caller adds its own and the hidden --child."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help=run_help)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--budget", type=float, default=budget_s, help=budget_help)
    p.add_argument("--out", type=Path, default=out)
    return p


def in_fresh_processes(module: str, child_args: list[str], processes: int) -> list[dict]:
    """`python -m module *child_args` once per process; each prints one measurement (JSON) or a list."""
    out = []
    for proc in range(processes):
        done = subprocess.run([sys.executable, "-m", module, *child_args], capture_output=True, text=True, cwd=ROOT,
                              check=True)
        got = json.loads(done.stdout)
        out += [{"process": proc, **m} for m in (got if isinstance(got, list) else [got])]
    return out


def open_graphs(paths: dict[str, Path]):
    """Each ONNX graph in an ONNX Runtime CPU session, and one uint8 batch of the first graph's input shape
    (a dynamic dimension taken as 1) that every graph is timed on."""
    import numpy as np

    from calibration.runtime import OrtRuntime
    from calibration.session import cpu_session

    runtimes = {name: OrtRuntime(cpu_session(path)) for name, path in paths.items()}
    first = next(iter(runtimes.values()))
    shape = [d if isinstance(d, int) else 1 for d in first.session.get_inputs()[0].shape]
    return runtimes, np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def save(module: str, argv: list[str] | None, args: argparse.Namespace, measurements: list[dict],
         markdown: Callable[[dict], str], **extra: object) -> dict:
    """The record (command, time, machine, budget, measurements, `extra`), written to args.out and printed."""
    from calibration.cpu import cpu_facts
    from calibration.session import cpu_threads
    from pipelines.run_dir import now, versions
    from vpns_deploy.atomic import atomic_write_json

    cpu = cpu_facts()
    result = {"command": f"python -m {module} " + shlex.join(map(str, argv or sys.argv[1:])),
              "created": now(), "run": str(args.run), **extra,
              "machine": {"cpu": cpu.description, "threads": cpu_threads(), **versions()},
              "budget_s": args.budget, "measurements": measurements}
    result["markdown"] = markdown(result)
    atomic_write_json(args.out, result)
    print(result["markdown"])
    return result
