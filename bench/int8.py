"""int8 against fp32 per network, from product runs: test top-1 of both graphs on the full test split and
their ONNX Runtime CPU latency from report's one interleaved measurement (bench/recipes/int8.toml).

    vpns-deploy run bench/recipes/int8.toml     # one run per network (bench/runs/int8/NAME; resumable)
    python -m bench int8                        # bench/results/int8.json + .png and the table from them
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import grid

NAMES = {"resnet20-s0.9": "ResNet-20, 90 % unstructured", "resnet56-channel-2x": "ResNet-56, channel 2x MACs",
         "lite0-transfer-s0.7": "EfficientNet-Lite0 -> CIFAR-10, 128 px, 70 %"}


def row(run: Path) -> list[dict]:
    """The dense and the compressed graph of one run: fp32 vs int8 top-1 and latency."""
    manifest = json.loads((run / "manifest.json").read_text())
    report = json.loads((run / "report.json").read_text())
    export = manifest["export"]
    rows = []
    for kind, graph in (("dense", "dense.onnx"), ("compressed", "model.onnx")):
        int8 = report["precision"].get("int8", {}).get(kind)
        gate = export["graphs"][graph]["precisions"].get("int8", {})
        fp32_top1 = report["accuracy"][kind]["onnxruntime"]
        latency = {b: {"fp32_ms": report["latency_ms"][kind][b]["median_ms"],
                       "int8_ms": int8["latency_ms"][b]["median_ms"] if int8 else None}
                   for b in report["latency_ms"][kind]}
        rows.append({
            "network": NAMES.get(run.name, run.name), "run": run.name, "graph": kind, "arch": manifest["model"]["arch"],
            "test_images": report["test_images"], "fp32_top1": fp32_top1,
            "int8_top1": int8["onnxruntime"] if int8 else None,
            "drop_points": 100 * (fp32_top1 - int8["onnxruntime"]) if int8 else None,
            "shipped": bool(gate.get("ships")), "left_out": export.get("left_out", {}).get("int8"),
            "recipe": gate.get("recipe"), "format": (export.get("int8_format") or {}).get("format"),
            "activations": (export.get("int8_format") or {}).get("activations"),
            "gate_vs_fp32": gate.get("vs_fp32"), "latency": latency,
            "int8_speed_vs_fp32": {b: v["fp32_ms"] / v["int8_ms"] for b, v in latency.items() if v["int8_ms"]},
        })
    return rows


def markdown(result: dict) -> str:
    lines = ["| network | graph | fp32 top-1 % | int8 top-1 % | drop (points) | int8 form | fp32 / int8 ms b1 | "
             "int8 speed b1 | fp32 / int8 ms b64 | int8 speed b64 |", "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lat, sp = r["latency"], r["int8_speed_vs_fp32"]
        int8 = "-" if r["int8_top1"] is None else f"{100 * r['int8_top1']:.2f}"
        drop = "-" if r["drop_points"] is None else f"{r['drop_points']:+.2f}"
        form = f"{r['format']}, {r['activations']}" if r["shipped"] else f"left out: {r['left_out']}"
        lines.append(f"| {r['network']} | {r['graph']} | {100 * r['fp32_top1']:.2f} | {int8} | {drop} | {form} | "
                     + " | ".join(f"{lat[b]['fp32_ms']:.2f} / {lat[b]['int8_ms'] or 0:.2f} | {sp.get(b, 0):.2f}x"
                                  for b in ("1", "64")) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["int8_top1"] is not None]
    labels = [f"{r['network'].split(' ')[0].rstrip(',')}\n{r['graph']}" for r in rows]
    fig, (acc, speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(rows))
    acc.bar([i - 0.2 for i in x], [100 * r["fp32_top1"] for r in rows], 0.4, label="fp32")
    acc.bar([i + 0.2 for i in x], [100 * r["int8_top1"] for r in rows], 0.4, label="int8")
    acc.set_ylabel("test top-1 %")
    acc.set_ylim(min(100 * r["int8_top1"] for r in rows) - 10, 100)
    for b, off in (("1", -0.2), ("64", 0.2)):
        speed.bar([i + off for i in x], [r["int8_speed_vs_fp32"][b] for r in rows], 0.4, label=f"batch {b}")
    speed.axhline(1.0, color="grey", lw=1)
    speed.set_ylabel("int8 speed / fp32 speed (ONNX Runtime CPU)")
    for ax in (acc, speed):
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.legend()
    fig.suptitle(f"int8 vs fp32 per network ({result['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = grid.table_args(__doc__, argv)
    runs = grid.grid_runs(args.recipe or grid.RECIPES / "int8.toml", needs="report.json")
    grid.require_all(runs, args.partial)
    reports = [json.loads((r / "report.json").read_text()) for r in runs.runs.values()]
    cpu = reports[0]["cpu"]
    manifests = {name: json.loads((r / "manifest.json").read_text()) for name, r in runs.runs.items()}
    created = {name: {"created": m["created"], **grid.made_by(m)} for name, m in manifests.items()}
    previous = args.out / "int8.json"
    result = {
        "table": "int8", "command": "python -m bench int8", "recipe": grid.rel(runs.recipe),
        "runs_command": runs.command, "missing": runs.missing,
        "measured": grid.provenance(created, json.loads(previous.read_text()) if previous.is_file() else None,
                                    runs.command),
        "machine": {"cpu": f"{cpu['model']} ({', '.join(cpu['instruction_sets'])})",
                    "threads": reports[0]["machine"]["threads"], "onnxruntime": reports[0]["machine"].get(
                        "onnxruntime-gpu") or reports[0]["machine"].get("onnxruntime")},
        "rows": [r for run in runs.runs.values() for r in row(run)], "runs": created,
    }
    result["markdown"] = {"int8": markdown(result)}
    return grid.write("int8", result, plot, args.out)


if __name__ == "__main__":
    main()
