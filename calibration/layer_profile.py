"""Where a graph's time goes: ONNX Runtime's own per-node profile, summed per node over a few calls.

The report lists the slowest nodes of the dense and the compressed graph side by side, so "why is it
not faster" has an answer where the user looks: a layer that channel mode could not shrink (a group
kept whole, the stem, the classifier), preprocessing that now dominates, or int8 conversions.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from calibration.session import cpu_session

PROFILE_CALLS = 20  # timed calls averaged per node (after WARMUP untimed ones)
WARMUP = 3


def slowest_nodes(path: Path, batch: np.ndarray, top: int = 10, calls: int = PROFILE_CALLS,
                  threads: int | None = None) -> list[dict]:
    """The `top` nodes with the most kernel time per call: name, operator, ms per call, share of all nodes."""
    with tempfile.TemporaryDirectory() as tmp:
        session = cpu_session(path, threads, profile_prefix=str(Path(tmp) / "profile"))
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(WARMUP + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    cutoff = runs[WARMUP - 1]["ts"] + runs[WARMUP - 1]["dur"] if len(runs) >= WARMUP else 0  # warm-up calls left out
    per_node: dict[str, float] = defaultdict(float)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < cutoff:
            continue
        name = e["name"][: -len("_kernel_time")]
        per_node[name] += e["dur"] / 1e3 / calls
        ops[name] = e.get("args", {}).get("op_name", "?")
    total = sum(per_node.values()) or 1.0
    ranked = sorted(per_node.items(), key=lambda kv: -kv[1])[:top]
    where = module_paths(path)
    return [{"node": n, "module": _module_of(n, where), "op": ops[n], "ms": ms, "share": ms / total}
            for n, ms in ranked]


def module_paths(path: Path) -> dict[str, str]:
    """ONNX node name -> the PyTorch module it came from (the exporter's name scopes), e.g. layer1.0.conv2."""
    import ast

    import onnx

    out = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        try:
            names = ast.literal_eval(scopes) if scopes else []
        except (ValueError, SyntaxError):
            names = []
        modules = [n for n in names[:-1] if n]
        if modules:
            out[node.name] = modules[-1].removeprefix("net.")
    return out


def _module_of(profiled: str, where: dict[str, str]) -> str:
    """ORT renames nodes it rewrites (fused Conv+Relu: relu_2_nchwc for node_relu_2): strip what it adds."""
    base = profiled
    for suffix in ("_nchwc", "_output_reorder", "_token_0"):
        base = base.removesuffix(suffix)
    return where.get(profiled) or where.get(base) or where.get(f"node_{base}") or ""
