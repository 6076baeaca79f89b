"""The report's words: the dense-vs-compressed table (terminal, markdown) rendered from a Report."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from export.precision import precision_path
from pipelines.artifacts import DENSE_ONNX, MODEL_ONNX
from pipelines.report_record import Report


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def _prompt_rows(r: Report) -> list[tuple[str, str, str]]:
    choice = r.prompt_choice or {}
    decision = choice.get("decision") or {}
    if not choice or decision.get("rule") == "the run learned no prompt":
        return []
    numbers = "—"
    if decision.get("val_top1_plain") is not None and decision.get("val_top1_prompted") is not None:
        numbers = f"{_pct(decision['val_top1_prompted'])} / {_pct(decision['val_top1_plain'])}"
    if decision.get("validation_preferred") and not choice.get("fold"):
        numbers += f" (too slow with it: {decision['speedup_with_prompt']:.2f}x for the --speedup target)"
    return [("prompt in the graph (validation top-1 with / without)", "",
             f"{'folded in' if choice.get('fold') else 'left out'}: {numbers}")]


def table_rows(r: Report) -> list[tuple[str, str, str]]:
    a, c, f, lat = r.accuracy, r.counts, r.files, r.latency_ms
    rows = [
        ("top-1, PyTorch", _pct(a["dense"]["pytorch"]), _pct(a["compressed"]["pytorch"])),
        ("top-1, ONNX Runtime", _pct(a["dense"]["onnxruntime"]), _pct(a["compressed"]["onnxruntime"])),
        ("top-1 without prompt (PyTorch)", _pct(a["dense"]["pytorch"]), _pct(a["compressed"]["pytorch_no_prompt"])),
        ("top-1 with prompt (PyTorch)", "—", _pct(a["compressed"]["pytorch_prompt"])),
        ("parameters", f"{c['dense']['params']:,}", f"{c['compressed']['params']:,}"),
        ("non-zero parameters", f"{c['dense']['nonzero']:,}", f"{c['compressed']['nonzero']:,}"),
        ("MACs per image (conv + linear)", f"{c['dense']['macs'] / 1e6:.2f} M",
         f"{c['compressed']['macs'] / 1e6:.2f} M ({r.macs_reduction:.2f}x fewer)"),
        ("ONNX file (gzip)", f"{f[DENSE_ONNX]['bytes'] / 1e6:.2f} MB ({f[DENSE_ONNX]['gzip_bytes'] / 1e6:.2f})",
         f"{f[MODEL_ONNX]['bytes'] / 1e6:.2f} MB ({f[MODEL_ONNX]['gzip_bytes'] / 1e6:.2f})"),
    ]
    for b in lat["dense"]:
        d, m = lat["dense"][b], lat["compressed"][b]
        rows.append((f"ORT CPU latency, batch {b} (median / p90)",
                     f"{d['median_ms']:.2f} / {d['p90_ms']:.2f} ms", f"{m['median_ms']:.2f} / {m['p90_ms']:.2f} ms"))
    for precision, kinds in r.precision.items():
        d, m = kinds["dense"], kinds["compressed"]
        rows.append((f"top-1, ONNX Runtime {precision}", _pct(d["onnxruntime"]), _pct(m["onnxruntime"])))
        for b in d["latency_ms"]:
            dl, ml = d["latency_ms"][b], m["latency_ms"][b]
            rows.append((f"ORT CPU latency {precision}, batch {b} (median / p90)",
                         f"{dl['median_ms']:.2f} / {dl['p90_ms']:.2f} ms", f"{ml['median_ms']:.2f} / {ml['p90_ms']:.2f} ms"))
    trt_info = r.tensorrt or {}
    if trt_info.get("measured"):
        for precision, e in trt_info["engines"].items():
            rows.append((f"TensorRT {precision} top-1", "", _pct(e["top1"])))
            for b, lat in e["latency_ms"].items():
                rows.append((f"TensorRT {precision} latency, batch {b} (median / p90)", "",
                             f"{lat['median_ms']:.3f} / {lat['p90_ms']:.3f} ms"))
    elif trt_info:
        rows.append(("TensorRT", "not measured", trt_info["reason"]))
    if (r.gpu or {}).get("measured"):
        for b, d in r.gpu["latency_ms"]["dense"].items():
            m = r.gpu["latency_ms"]["compressed"][b]
            rows.append((f"PyTorch CUDA latency, batch {b} (median / p90)",
                         f"{d['median_ms']:.3f} / {d['p90_ms']:.3f} ms", f"{m['median_ms']:.3f} / {m['p90_ms']:.3f} ms"))
    for b, sp in r.speedup.items():
        rows.append((f"latency speedup, batch {b} [95 % interval] (efficiency = speedup / MACs ratio)", "",
                     f"{speedup_text(sp)} ({sp['efficiency']:.2f})"))
    for b, o in r.preprocessing_overhead.items():
        rows.append((f"folded preprocessing, batch {b}", "", f"{o['ms']:+.3f} ms ({o['fraction']:+.1%})"))
    rows += _prompt_rows(r)
    if r.baseline:
        b = r.baseline
        rows.append(("top-1 at compress: simplest baseline (magnitude mask, BN re-estimated, no training) vs "
                     "shipped", _pct(b["test_top1"]),
                     _pct(b["shipped_test_top1"]) + (" (below the baseline)" if b["below"] else "")))
    return rows


def graph_file(name: str) -> str:
    """A shipping candidate's name ("compressed", "compressed int8") -> its file."""
    kind, _, precision = name.partition(" ")
    return precision_path(Path(MODEL_ONNX if kind == "compressed" else DENSE_ONNX), precision or "fp32").name


def headline(r: Report) -> str | None:
    """One line: the dense fp32 graph -> the graph to ship, measured together in this report."""
    ship = r.shipping
    if not ship:
        return None
    batches = list(ship["best"])
    first = ship["best"][batches[0]]
    c = ship["candidates"][first]
    speeds = " and ".join(f"{speedup_text(c['speedup_vs_dense_fp32'][b])} at batch {b}" for b in batches)
    sizes = ""
    if graph_file(first) in r.files:
        sizes = (f"; file {r.files[graph_file(first)]['bytes'] / 1e6:.2f} MB vs "
                 f"{r.files[DENSE_ONNX]['bytes'] / 1e6:.2f} MB")
    others = [f"batch {b}: {graph_file(n)}" for b, n in ship["best"].items() if n != first]
    return (f"Ship {graph_file(first)}: faster than {DENSE_ONNX} (fp32, what you had) by {speeds}, measured together; "
            f"test top-1 {_pct(c['top1'])} vs {_pct(ship['reference_top1'])} on {r.test_images} images{sizes}"
            + (f" (fastest at another batch: {', '.join(others)})" if others else "") + ".")


def target_line(r: Report) -> str | None:
    """compress's --speedup against the graph this report says to ship, at the target batch."""
    t = r.target
    if not t:
        return None
    asked = f"Target: {t['speedup']:g}x faster than dense at batch {t['batch']} on {t['runtime']}"
    if t["budget_by"] == "macs":
        asked += " (set as a MACs reduction, --budget-by macs: not measured at compress)"
    s = t.get("shipped")
    if s is None:
        c = t.get("at_compress")
        return asked + (f"; measured at compress: {c['speedup']:.2f}x (this report measures ONNX Runtime CPU only)."
                        if c else ".")
    verdict = "met" if s["met"] else "not met"
    c = t.get("at_compress")
    why = (f"; compress measured {c['speedup']:.2f}x when it searched, in another measurement at another time "
           "(report again on a quiet machine to tell load from a miss)" if c and not s["met"] else "")
    return f"{asked}: {verdict} by {graph_file(s['graph'])}, {speedup_text(s)} measured here{why}."


def mode_note(r: Report) -> str | None:
    """What this mode can and cannot make faster, on the runtimes the tool measures."""
    if r.mode == "unstructured":
        return ("Unstructured zeros make no graph faster on ONNX Runtime (it runs them densely) nor on TensorRT "
                "(2:4 only): they shrink the compressed file. For speed, use --mode channel (fewer channels, "
                "faster on every runtime) or an int8 export where this CPU runs int8 faster.")
    if r.mode == "channel":
        return "Channel mode removes whole channels: the graph is smaller and faster on every runtime."
    if (r.structure or {}).get("pattern"):
        return ("N:M sparsity is faster only on TensorRT's sparse tensor-core kernels (Ampere or newer GPUs), and only "
                "on layers wide enough for them; ONNX Runtime runs it densely, so on the CPU it shrinks the "
                "compressed file only. For CPU speed, use --mode channel.")
    return None


def precision_warnings(r: Report) -> list[str]:
    """One line per precision export left out, and per shipped precision whose compressed graph loses
    more top-1 against fp32 on the whole test split than export's tolerance (it judged up to 1,000 images)."""
    gate = r.precision_gate or {}
    lines = [f"Warning: {p} is not shipped: {why}." for p, why in (gate.get("left_out") or {}).items()]
    max_drop = gate.get("max_drop")
    fp32 = r.accuracy["compressed"]["onnxruntime"]
    for precision, kinds in r.precision.items():
        drop = 100 * (fp32 - kinds["compressed"]["onnxruntime"])
        if max_drop is not None and drop > max_drop:
            lines.append(f"Warning: the {precision} graph loses {drop:.2f} points of test top-1 against fp32 on "
                         f"{r.test_images} test images ({_pct(fp32)} -> {_pct(kinds['compressed']['onnxruntime'])}), "
                         f"more than export's tolerance of {max_drop:g}: ship fp32, or re-export with more "
                         "--calib-images.")
    return lines


def _title(r: Report) -> str:
    reference = (r.dense_reference or {}).get("text")
    return (f"{r.method} {r.mode} at {r.sparsity_prunable:.1%} sparsity — ships "
            f"{'with' if r.ships_prompt else 'without'} the prompt; {r.test_images} test images"
            + (f"; dense = {reference}" if reference else ""))


def render_table(r: Report) -> Table:
    table = Table(title=_title(r))
    table.add_column("measure")
    table.add_column("dense", justify="right")
    table.add_column("compressed", justify="right")
    for row in table_rows(r):
        table.add_row(*(escape(c) for c in row))
    return table


def slowest_layer_lines(r: Report) -> list[str]:
    """The slowest nodes before and after (ONNX Runtime's profile), side by side: where the time went."""
    s = r.slowest_layers
    if not s:
        return []
    label = lambda n: f"{n['module'] or n['node']} ({n['op']})"  # noqa: E731
    lines = ["", f"Slowest layers, fp32, batch {s['batch']} (ONNX Runtime's profile, mean of {s['calls']} calls; "
             "share of all kernel time):", "", "| # | dense | ms | share | compressed | ms | share |",
             "|---:|---|---:|---:|---|---:|---:|"]
    for i in range(max(len(s["dense"]), len(s["compressed"]))):
        cells = []
        for kind in ("dense", "compressed"):
            n = s[kind][i] if i < len(s[kind]) else None
            cells += [label(n), f"{n['ms']:.3f}", f"{n['share']:.0%}"] if n else ["", "", ""]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(r: Report) -> str:
    lines = [f"# vpns-deploy report: {r.run}", "", _title(r) + ".", ""]
    lines += [f"**{line}**" for line in (headline(r), target_line(r)) if line] + [""]
    lines += [line for note in (mode_note(r),) if note for line in (note, "")]
    lines += ["| measure | dense | compressed |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(r)]
    structure = r.structure or {}
    if structure.get("pattern"):
        n, mm = structure["pattern"]
        exempt = ", ".join(f"{e['name']} ({e['reason']})" for e in structure.get("exempt", [])) or "none"
        lines += ["", f"{n}:{mm} layers: every prunable layer except these, which stay dense: {exempt}.",
                  f"{n}:{mm} zeros make nothing faster in ONNX Runtime on a CPU (measured above); the speed-up "
                  "belongs to sparse tensor cores (TensorRT with SPARSE_WEIGHTS on Ampere or newer GPUs)."]
    lines += slowest_layer_lines(r)
    lines += [line for w in precision_warnings(r) for line in ("", f"**{w.split(':', 1)[0]}:**{w.split(':', 1)[1]}")]
    if r.baseline and r.baseline["below"]:
        lines += ["", f"**Warning:** at compress, the shipped model ({_pct(r.baseline['shipped_test_top1'])}) scored "
                  f"below the simplest baseline ({r.baseline['name']}: {_pct(r.baseline['test_top1'])}) on the "
                  "same test split. More training images or epochs, or `--method magnitude`, may do better."]
    choice = r.prompt_choice or {}
    if choice:
        lines += ["", f"Prompt: {'folded into' if choice.get('fold') else 'left out of'} model.onnx ({choice.get('by')})."]
    head = r.head or {}
    if head.get("map"):
        lines += ["", "Head: the source head is kept; frequency label map (data class -> source class): "
                  + "; ".join(head["map"]) + "."]
    elif head.get("kind") == "new":
        lines += ["", f"Head: a new {head.get('layer')} for the data's classes, warmed up for "
                  f"{head.get('warmup_steps')} optimiser steps before stage 1."]
    feed = r.caller_must_feed
    if feed:
        lines += ["", f"model.onnx takes {feed['dtype']} {feed['layout']} {feed['shape']}, {feed['channel_order']}, "
                  f"{feed['value_range']}; resize: {feed['resize']}."]
    m = r.machine
    lines += ["", f"Measured {r.created} with ONNX Runtime {m.get('onnxruntime-gpu') or m.get('onnxruntime')} "
              f"({m['provider']}, {m['threads']} threads), torch {m.get('torch')}, on {m['platform']}.",
              f"Latency: graphs that are compared run interleaved in turns (each back to back for about 20 ms, after "
              f"one untimed call) after up to 5 warm-up rounds (TensorRT: 20), for at most "
              f"{m.get('latency_budget_s', '?')} s per graph over both batch sizes (1,000 timed calls at most); median, p90 and a 95 % bootstrap interval of the median. A speedup whose 95 % interval "
              "holds 1.0 is marked within noise: this measurement cannot tell the two graphs apart (the interval covers "
              "call-to-call noise in this measurement only, not differences between sessions or runs, so a few "
              "per cent either way with a tight interval is still no evidence of a real speedup). The "
              "preprocessing overhead is the shipped graph minus the same network fed pre-normalised float input."]
    lines += [cpu_text(r.cpu), ""] if r.cpu else [""]
    return "\n".join(lines)


def speedup_text(sp: dict) -> str:
    """1.23x [1.10, 1.31], with "within noise" where the interval holds 1.0."""
    lo, hi = sp["ci95"]
    return f"{sp['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]" + (", within noise" if sp["within_noise"] else "")


def cpu_text(cpu: dict) -> str:
    sets = ", ".join(cpu["instruction_sets"]) or "none of AVX2, AVX-512, VNNI, AMX"
    fmt = cpu.get("int8_format")
    shipped = f" int8 format shipped: {fmt['format']} ({fmt['reason']})." if fmt else ""
    return (f"CPU: {cpu['model']}; instruction sets: {sets}; PyTorch CPU kernels: {cpu['torch_capability']}. "
            + cpu["int8_note"] + shipped)
