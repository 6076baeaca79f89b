"""The first screen of a run's report.html: what ships, how much faster and how accurate than the dense
reference (the report's own measured numbers), the settings, and how to call the shipped file."""
from __future__ import annotations

import html

from pipelines.artifacts import MODEL_ONNX
from pipelines.manifest import Manifest
from pipelines.report_record import Report
from pipelines.report_render import graph_file, headline, mode_note, speedup_text, target_line


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def verdict_lines(r: Report) -> list[str]:
    """What ships and how it compares with the dense reference, measured in this report."""
    a = r.accuracy
    speed = "; ".join(f"batch {b}: {speedup_text(sp)}" for b, sp in r.speedup.items())
    return [line for line in (headline(r), target_line(r), mode_note(r)) if line] + [
            f"The compressed model: {r.method} {r.mode}, {r.sparsity_prunable:.1%} of prunable weights removed, "
            f"{'with' if r.ships_prompt else 'without'} the prompt.",
            f"fp32 {MODEL_ONNX} over the dense reference (ONNX Runtime CPU, measured together in this report): {speed}.",
            f"Top-1 on {r.test_images} test images (ONNX Runtime): {_pct(a['compressed']['onnxruntime'])} "
            f"vs {_pct(a['dense']['onnxruntime'])} dense; {r.macs_reduction:.2f}x fewer MACs."]


def settings_lines(m: Manifest) -> list[str]:
    inputs = m.model.inputs
    classes = m.data.classes
    shown = ", ".join(map(str, classes[:12])) + (f", … ({len(classes)} in all)" if len(classes) > 12 else "")
    return [f"Architecture: {m.model.arch or 'pickled module'}; input {inputs.get('size') or m.data.image_shape[-1]} px "
            f"({inputs.get('interpolation')}, crop ratio {inputs.get('crop_pct')}).",
            f"Data: {m.data.spec}; {len(classes)} classes in output order: {shown}."]


def shipped_file(r: Report) -> str:
    """The file the report says to ship (at the first batch size measured), else model.onnx."""
    best = (r.shipping or {}).get("best") or {}
    return graph_file(next(iter(best.values()))) if best else MODEL_ONNX


def python_snippet(contract: dict, file: str = MODEL_ONNX) -> str:
    """Python that loads the shipped graph with onnxruntime and classifies one image; the report's test
    runs it against the file. The class names come from the graph's own metadata."""
    _, h, w, c = contract["shape"]
    h, w = (h if isinstance(h, int) else 224), (w if isinstance(w, int) else 224)
    return "\n".join([
        "import json", "", "import numpy as np", "import onnxruntime as ort", "",
        f'session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])',
        'classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])',
        f"image = np.zeros((1, {h}, {w}, {c}), np.uint8)  # your image: uint8 NHWC, 0..255, sized as stated above",
        'logits = session.run(None, {"images": image})[0]',
        "print(classes[int(logits[0].argmax())])", ""])


def verdict_html(r: Report, m: Manifest) -> str:
    """The block report.html opens with."""
    e = html.escape
    feed = r.caller_must_feed or {}
    call = (f"Feed {feed['dtype']} {feed['layout']} {feed['shape']}, {feed['channel_order']}, {feed['value_range']}; "
            f"resize: {feed['resize']}." if feed else "Export the run to get the feeding contract.")
    items = "".join(f"<li>{e(line)}</li>" for line in verdict_lines(r))
    settings = "".join(f"<li>{e(line)}</li>" for line in settings_lines(m))
    code = f"<pre><code>{e(python_snippet(feed, shipped_file(r)))}</code></pre>" if feed else ""
    return (f'<section id="verdict"><h2>What ships</h2><ul>{items}</ul><h2>Settings</h2><ul>{settings}</ul>'
            f"<h2>How to call it</h2><p>{e(call)}</p>{code}</section>")
