"""Does ONNX Runtime's thread spinning distort interleaved timing?

The report times graphs interleaved (calibration/latency.py). ORT's intra-op threads spin-wait after
each call by default, so a session that just ran may hold the cores while the next session's call
runs. This times graph A alone and interleaved with graph B (one call each in turn), with spinning on
(ORT's default) and off (what calibration.session.cpu_session sets), at each batch; median ms of A.

    python -m bench.probes.ort_spinning bench/runs/nm/dense.onnx bench/runs/nm/model.onnx \\
        --out bench/runs/spin_ab.json
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.probes import finish, record
from calibration.session import CPU, cpu_session, cpu_threads


def _call_ms(s: ort.InferenceSession, x: np.ndarray, other: ort.InferenceSession | None = None) -> float:
    name = s.get_inputs()[0].name
    t0 = time.perf_counter()
    s.run(None, {name: x})
    took = 1e3 * (time.perf_counter() - t0)
    if other is not None:
        other.run(None, {other.get_inputs()[0].name: x})
    return took


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph_a", type=Path)
    p.add_argument("graph_b", type=Path)
    p.add_argument("--batches", default="1:300,64:40", help="batch:calls, comma-separated")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    a_in = ort.InferenceSession(str(args.graph_a), providers=[CPU]).get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in a_in.shape]
    out: dict = {"command": "python -m bench.probes.ort_spinning " + shlex.join(sys.argv[1:] if argv is None else argv),
                 "threads": cpu_threads(), "rows": []}
    for item in args.batches.split(","):
        batch, calls = (int(v) for v in item.split(":"))
        x = np.random.default_rng(0).integers(0, 255, [batch, *shape[1:]], dtype=np.uint8)
        for spin in (True, False):
            a, b = cpu_session(args.graph_a, spinning=spin), cpu_session(args.graph_b, spinning=spin)
            for _ in range(5):
                _call_ms(a, x, b)
            alone = statistics.median(_call_ms(a, x) for _ in range(calls))
            interleaved = statistics.median(_call_ms(a, x, b) for _ in range(calls))
            record(out, {"batch": batch, "spinning": spin, "alone_ms": alone, "interleaved_ms": interleaved})
    return finish(args.out, out)


if __name__ == "__main__":
    main()
