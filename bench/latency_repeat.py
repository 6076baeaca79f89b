"""How far one measured speedup moves between measurements, against each measurement's own interval.

A run's dense.onnx and model.onnx (the deployed uint8 graphs) timed at batch 1 with the product's
interleaved measurement (calibration/latency.py: turns, a budget per graph, the rounds-resampled 95 %
interval), REPEATS times in each of PROCESSES fresh processes (a process's memory layout and thread
placement are part of what moves). Wants an idle machine: it times.

    python -m bench.latency_repeat bench/runs/target-transfer/vpns-x3-latency   # 3 processes x 2
    python -m bench repeat                                                      # print the saved table
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/latency_repeat.json"


def measure(run: Path, repeats: int, budget_s: float) -> list[dict]:
    """REPEATS interleaved measurements of the run's dense and compressed graphs in this process."""
    from bench.measured import open_graphs
    from calibration.latency import measure_interleaved, speedup

    runtimes, x = open_graphs({name: run / f"{name}.onnx" for name in ("dense", "model")})
    out = []
    for _ in range(repeats):
        lat = measure_interleaved(runtimes, {"dense": x, "model": x}, budget_s)
        s = speedup(lat["dense"], lat["model"])
        out.append({"speedup": s.speedup, "ci95": list(s.ci95), "dense_ms": lat["dense"].median_ms,
                    "ms": lat["model"].median_ms, "rounds": lat["dense"].runs // lat["dense"].block})
    return out


def summarise(measurements: list[dict]) -> dict:
    """The spread of the speedups and how many intervals hold their mean."""
    values = np.array([m["speedup"] for m in measurements])
    mean = float(values.mean())
    return {"mean": mean, "min": float(values.min()), "max": float(values.max()),
            "spread": float(values.max() / values.min() - 1),
            "intervals_holding_the_mean": sum(m["ci95"][0] <= mean <= m["ci95"][1] for m in measurements),
            "interval_widths": [m["ci95"][1] - m["ci95"][0] for m in measurements]}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["| process | speedup | 95 % interval | dense ms | compressed ms | rounds |",
             "|---:|---:|---|---:|---:|---:|"]
    for m in result["measurements"]:
        lines.append(f"| {m['process']} | {m['speedup']:.2f}x | [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}] | "
                     f"{m['dense_ms']:.3f} | {m['ms']:.3f} | {m['rounds']} |")
    lines.append(f"\n{len(result['measurements'])} measurements: {s['min']:.2f}x to {s['max']:.2f}x "
                 f"({100 * s['spread']:.1f} % apart); {s['intervals_holding_the_mean']} of them hold the "
                 f"mean, {s['mean']:.2f}x.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    from bench.measured import in_fresh_processes, parser, save

    p = parser("bench.latency_repeat", __doc__, "a run directory with dense.onnx and model.onnx (exported)", 5.0,
               "seconds per graph and measurement (report's at b1)", OUT)
    p.add_argument("--repeats", type=int, default=2, help="measurements per process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.run, args.repeats, args.budget)))
        return None
    measurements = in_fresh_processes("bench.latency_repeat", [str(args.run), "--child", "--repeats",
                                                               str(args.repeats), "--budget", str(args.budget)],
                                      args.processes)
    result = save("bench.latency_repeat", argv, args, measurements, markdown, summary=summarise(measurements))
    return result

if __name__ == "__main__":
    main()
