"""Measured speedups kept across runs, keyed by everything a latency depends on besides the widths.

A key holds the machine (CPU model and instruction sets, the cores this process may use, the GPUs,
the ONNX Runtime build: calibration.cpu.measuring_machine), the runtime and its threads, the input
shape, the batch, the precision and the dense network's structure; within it each point is keyed by
the widths (kept channels per group). So a second run of the same network on the same machine and
target (another seed, a sweep's next point, a resumed run) reuses what was timed, while another
machine, runtime, batch or input size never does. The cache lives under $XDG_CACHE_HOME/vpns-deploy
(~/.cache/vpns-deploy); a file that does not read back as this module wrote it is ignored and
rewritten, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vpns_deploy.atomic import atomic_write_json

VERSION = 3  # 2: graphs timed in turns (version 1: call by call); 3: intervals resample whole rounds


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "vpns-deploy" / "latency"


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass
class LatencyCache:
    """The measured points of one key (one file)."""

    key: dict
    root: Path | None = None

    @property
    def path(self) -> Path:
        return (self.root or cache_root()) / f"{digest(self.key)[:24]}.json"

    def _points(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION or data.get("key") != self.key:
            return {}
        points = data.get("points")
        return points if isinstance(points, dict) else {}

    @staticmethod
    def point_key(widths: tuple[int, ...]) -> str:
        return digest(list(widths))[:24]

    def get(self, widths: tuple[int, ...]) -> dict | None:
        p = self._points().get(self.point_key(widths))
        ok = isinstance(p, dict) and all(isinstance(p.get(k), (int, float)) for k in ("speedup", "dense_ms", "ms"))
        return p if ok else None

    def put(self, widths: tuple[int, ...], point: dict) -> None:
        points = self._points() | {self.point_key(widths): point}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"version": VERSION, "key": self.key, "points": points})

    def dense_ms(self) -> float | None:
        """The dense graph's median latency over the points kept here (each measured it alongside its
        candidate): what it took on this machine before; None when nothing is kept."""
        values = sorted(p["dense_ms"] for p in self._points().values()
                        if isinstance(p, dict) and isinstance(p.get("dense_ms"), (int, float)))
        return values[len(values) // 2] if values else None

    def forget(self, widths: list[tuple[int, ...]]) -> None:
        """Drop points (measured while the machine was busy: later runs must time them again)."""
        points, gone = self._points(), {self.point_key(w) for w in widths}
        kept = {k: v for k, v in points.items() if k not in gone}
        if len(kept) != len(points):
            atomic_write_json(self.path, {"version": VERSION, "key": self.key, "points": kept})
