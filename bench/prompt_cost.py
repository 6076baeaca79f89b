"""What folding the learned prompt into the shipped graph costs in latency.

Only the compressed graph carries the prompt (the dense graph it is compared with has none), so its
cost comes off the measured speedup. A run's network is exported twice, with and without the prompt
(`vpns-deploy export --prompt / --no-prompt`, each into a copy of the run), and the dense graph and
both compressed graphs are timed in one interleaved measurement (calibration/latency.py) at batch 1,
in each of PROCESSES fresh processes. Wants an idle machine: it times.

    python -m bench.prompt_cost bench/runs/target-transfer/vpns-x4-latency-steps3   # 3 processes
    python -m bench prompt-cost                                                     # print the saved table
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/prompt_cost.json"
GRAPHS = ("dense", "with_prompt", "without_prompt")


def export_both(run: Path, work: Path) -> dict[str, Path]:
    """The run's dense graph and its compressed network exported with and without the prompt."""
    from pipelines.export_stage import run_export
    from vpns_deploy.progress import Reporter

    paths = {}
    for name, fold in (("with_prompt", True), ("without_prompt", False)):
        copy = work / name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "*.engine", "report*", "*.png", "*.html"))
        run_export(copy, with_prompt=fold, reporter=Reporter(quiet=True))
        paths[name] = copy / "model.onnx"
    paths["dense"] = work / "with_prompt" / "dense.onnx"
    return paths


def measure(paths: dict[str, Path], budget_s: float) -> dict:
    """One interleaved measurement of the three graphs at batch 1 in this process."""
    from bench.measured import open_graphs
    from calibration.latency import measure_interleaved, speedup

    runtimes, x = open_graphs({name: paths[name] for name in GRAPHS})
    lat = measure_interleaved(runtimes, {name: x for name in GRAPHS}, budget_s)
    out = {f"{name}_ms": lat[name].median_ms for name in GRAPHS}
    for name in GRAPHS[1:]:
        s = speedup(lat["dense"], lat[name])
        out[f"speedup_{name}"] = {"speedup": s.speedup, "ci95": list(s.ci95)}
    cost = speedup(lat["without_prompt"], lat["with_prompt"])  # < 1: the prompt's graph is slower
    out["with_over_without"] = {"ratio": 1 / cost.speedup, "ci95": [1 / cost.ci95[1], 1 / cost.ci95[0]]}
    return out


def markdown(result: dict) -> str:
    lines = ["| process | dense ms | with prompt ms | without ms | speedup with | speedup without | "
             "with / without [95 %] |", "|---:|---:|---:|---:|---:|---:|---|"]
    for m in result["measurements"]:
        r = m["with_over_without"]
        lines.append(f"| {m['process']} | {m['dense_ms']:.3f} | {m['with_prompt_ms']:.3f} | "
                     f"{m['without_prompt_ms']:.3f} | {m['speedup_with_prompt']['speedup']:.2f}x | "
                     f"{m['speedup_without_prompt']['speedup']:.2f}x | {r['ratio']:.3f} "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    from bench.measured import in_fresh_processes, parser, save

    p = parser("bench.prompt_cost", __doc__, "a compressed run directory with a learned prompt (prompt.pt)", 10.0,
               "seconds per graph and measurement", OUT)
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)  # JSON: the graphs' paths
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure({k: Path(v) for k, v in json.loads(args.child).items()}, args.budget)))
        return None
    if not (args.run / "prompt.pt").is_file():
        p.error(f"{args.run} has no prompt.pt: only a run that learned a prompt can fold one in")
    with tempfile.TemporaryDirectory(prefix="prompt-cost-") as tmp:
        paths = export_both(args.run, Path(tmp))
        child = [str(args.run), "--budget", str(args.budget), "--child", json.dumps({k: str(v) for k, v in paths.items()})]
        measurements = in_fresh_processes("bench.prompt_cost", child, args.processes)
    return save("bench.prompt_cost", argv, args, measurements, markdown, batch=1)

if __name__ == "__main__":
    main()
