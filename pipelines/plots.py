"""The report's pictures (PNG, matplotlib, no display): curves, per-layer sparsity, latency, sweeps."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipelines.manifest import Manifest  # noqa: E402
from pipelines.report_record import Report  # noqa: E402
from vpns_deploy.atomic import atomic_write  # noqa: E402

Run = tuple[str, Manifest, Report]  # (label, manifest, report)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _percent(epochs: list[dict], key: str) -> list[float]:
    return [100 * e[key] if e.get(key) is not None else float("nan") for e in epochs]


def training_curves(runs: list[Run], path: Path) -> Path:
    """Validation top-1 after every epoch, stage by stage (dashed: with the prompt); test top-1 (x) at
    the end of each stage. A run without a validation split shows its stage-end test points only."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, manifest, _) in enumerate(runs):
        epochs = manifest.metrics["epochs"]
        color = f"C{i}"
        x = list(range(1, len(epochs) + 1))
        if any(e.get("val_acc_plain") is not None for e in epochs):
            ax.plot(x, _percent(epochs, "val_acc_plain"), "-o", ms=3, color=color, label=f"{label} (validation)")
        if any(e.get("val_acc_prompted") is not None for e in epochs):
            ax.plot(x, _percent(epochs, "val_acc_prompted"), "--", color=color, label=f"{label} (validation, prompt)")
        ax.plot(x, _percent(epochs, "test_acc_plain"), "x", ms=7, color=color, label=f"{label} (test, stage end)")
        if any(e.get("test_acc_prompted") is not None for e in epochs):
            ax.plot(x, _percent(epochs, "test_acc_prompted"), "+", ms=8, color=color)
        for j in range(1, len(epochs)):
            if epochs[j]["stage"] != epochs[j - 1]["stage"]:
                ax.axvline(j + 0.5, color=color, alpha=0.3, lw=1)
                ax.text(j + 0.6, ax.get_ylim()[0], epochs[j]["stage"], color=color, fontsize=8, va="bottom")
        ax.axhline(100 * manifest.metrics["dense_top1"], color="grey", ls=":", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (all stages; vertical line: next stage)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Training curves (dotted: dense model)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


LAYERS_SHOWN = 15  # more bars than this are unreadable in a report: the largest layers carry the model


def shown_layers(per_layer: list[dict], limit: int = LAYERS_SHOWN) -> list[dict]:
    """All layers when few, else the `limit` largest by weight count, in network order."""
    if len(per_layer) <= limit:
        return per_layer
    largest = {layer["name"] for layer in sorted(per_layer, key=lambda l: -l.get("total", 0))[:limit]}
    return [layer for layer in per_layer if layer["name"] in largest]


def layer_sparsity(runs: list[Run], path: Path) -> Path:
    """Removed fraction per layer (weights; output channels in channel mode), horizontal bars, the
    largest layers only where there are many (their weight count beside the name)."""
    per_layer = runs[0][1].metrics["per_layer"]
    shown = shown_layers(per_layer)
    names = [layer["name"] for layer in shown]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) * max(1, len(runs) / 2) + 1.6))
    height = 0.8 / len(runs)
    for i, (label, manifest, _) in enumerate(runs):
        by_name = {layer["name"]: layer["sparsity"] for layer in manifest.metrics["per_layer"]}
        ax.barh([k + i * height for k in range(len(names))], [100 * by_name.get(n, 0.0) for n in names],
                height=height, label=label, color=f"C{i}")
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(names))])
    ax.set_yticklabels([f"{layer['name']} ({layer.get('total', 0):,})" for layer in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("removed (%)")
    ax.set_xlim(0, 100)
    what = f"the {len(shown)} largest of {len(per_layer)} layers" if len(shown) < len(per_layer) else "every layer"
    ax.set_title(f"Per-layer sparsity: {what} (weights in brackets)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def latency_bars(runs: list[Run], path: Path) -> Path:
    """One run: ONNX Runtime CPU latency per graph (bar = median, whisker up to p90), batch 1 and 64.
    Several runs: each run's speedup over its own dense graph, measured within that run (raw latencies
    of runs measured at different times are not comparable)."""
    if len(runs) > 1:
        return speedup_bars(runs, path)
    batches = list(runs[0][2].latency_ms["dense"])
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.8))
    axes = axes if len(batches) > 1 else [axes]
    for ax, b in zip(axes, batches):
        labels, med, p90 = ["dense"], [runs[0][2].latency_ms["dense"][b]["median_ms"]], [
            runs[0][2].latency_ms["dense"][b]["p90_ms"]]
        for label, _, report in runs:
            labels.append(label)
            med.append(report.latency_ms["compressed"][b]["median_ms"])
            p90.append(report.latency_ms["compressed"][b]["p90_ms"])
            for precision, kinds in report.precision.items():
                labels.append(f"{label} {precision}")
                med.append(kinds["compressed"]["latency_ms"][b]["median_ms"])
                p90.append(kinds["compressed"]["latency_ms"][b]["p90_ms"])
        _bars(ax, labels, med, [[0] * len(med), [max(0.0, p - m) for p, m in zip(p90, med)]],
              ["grey"] + [f"C{i % 10}" for i in range(len(labels) - 1)], "ms per batch",
              f"batch {b}: median, whisker to p90")
    return _save(fig, path)


def _bars(ax, labels: list[str], values: list[float], whiskers: list[list[float]], colors: list[str],
          ylabel: str, title: str) -> None:
    x = list(range(len(labels)))
    ax.bar(x, values, color=colors)
    ax.errorbar(x, values, yerr=whiskers, fmt="none", ecolor="black", capsize=4, lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def speedup_bars(runs: list[Run], path: Path) -> Path:
    """Per run: dense fp32 latency / compressed latency (fp32 and every shipped precision), with the 95 %
    interval where the report holds one; each ratio measured within its own run."""
    batches = list(runs[0][2].latency_ms["dense"])
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.8))
    axes = axes if len(batches) > 1 else [axes]
    for ax, b in zip(axes, batches):
        labels, values, low, high = [], [], [], []
        for label, _, report in runs:
            candidates = (report.shipping or {}).get("candidates") or {
                "compressed": {"speedup_vs_dense_fp32": report.speedup}}
            for name, c in candidates.items():
                sp = c["speedup_vs_dense_fp32"][b]
                labels.append(label + name.removeprefix("compressed"))
                values.append(sp["speedup"])
                low.append(sp["speedup"] - sp["ci95"][0])
                high.append(sp["ci95"][1] - sp["speedup"])
        _bars(ax, labels, values, [low, high], [f"C{i % 10}" for i in range(len(labels))],
              "speedup over the run's dense fp32 graph", f"batch {b}: within-run ratio, 95 % interval")
        ax.axhline(1.0, color="grey", lw=1)
    return _save(fig, path)


def accuracy_vs_sparsity(points: list[dict], dense_top1: float, path: Path) -> Path:
    """Sweep: ONNX Runtime top-1 of each point (the graph that ships) against its sparsity."""
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted(points, key=lambda p: p["sparsity"])
    ax.plot([100 * p["sparsity"] for p in pts], [100 * p["top1"] for p in pts], "-o", label="compressed")
    ax.axhline(100 * dense_top1, color="grey", ls=":", label="dense")
    for p in pts:
        ax.annotate(p["label"], (100 * p["sparsity"], 100 * p["top1"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs sparsity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto(points: list[dict], dense: dict, path: Path, batch: str = "64") -> Path:
    """Sweep: top-1 vs measured speedup over the dense fp32 graph (each point's graph to ship, timed with
    its own dense graph in one interleaved measurement); the line joins the points no other beats on both."""
    fig, ax = plt.subplots(figsize=(6, 4))
    all_pts = [dict(dense, label="dense")] + points
    xs = [p["speedup"][batch] for p in all_pts]
    ys = [100 * p["top1"] for p in all_pts]
    ax.scatter(xs[1:], ys[1:], label="compressed")
    ax.scatter(xs[:1], ys[:1], color="grey", marker="s", label="dense")
    for p, x, y in zip(all_pts, xs, ys):
        ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = speedup_front(list(zip(xs, ys)))
    ax.plot([f[0] for f in front], [f[1] for f in front], "-", color="C3", alpha=0.6, label="Pareto front")
    ax.set_xlabel(f"speedup over dense fp32, ONNX Runtime CPU, batch {batch} (measured)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs latency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def speedup_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (speedup, accuracy) that no other point beats with a higher speedup and higher accuracy."""
    return [(-x, y) for x, y in pareto_front([(-x, y) for x, y in points])][::-1]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, accuracy) that no other point beats with lower latency and higher accuracy."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front
