"""report.json as a typed, versioned record: what `report` measured, read back by compare and sweep.

A report written by another schema is not upgraded: it is a measurement, so `report` measures the
run again (report_is_current says it is not current) rather than guess the numbers it lacks.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from vpns_deploy.errors import UserError

REPORT_SCHEMA = 2  # 1: latency without intervals, no CPU facts; none: older. Both are measured again


@dataclass
class Report:
    created: str
    run: str
    method: str
    mode: str
    test_images: int
    sparsity_target: float
    sparsity_prunable: float
    macs_reduction: float
    ships_prompt: bool
    accuracy: dict  # dense/compressed -> runtime -> top-1
    counts: dict  # dense/compressed -> params, nonzero, macs
    files: dict  # artifact name -> bytes, gzip_bytes
    latency_ms: dict  # dense/compressed/network_only -> batch -> calibration.latency.Latency.to_dict()
    speedup: dict  # batch -> speedup, interval, within_noise, efficiency
    preprocessing_overhead: dict
    machine: dict
    precision: dict = field(default_factory=dict)
    tensorrt: dict = field(default_factory=dict)
    gpu: dict = field(default_factory=dict)  # PyTorch on the CUDA GPU (report_measure.gpu); measured False without one
    structure: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # calibration.cpu.CpuFacts.to_dict()
    prompt_choice: dict | None = None
    head: dict | None = None
    caller_must_feed: dict | None = None
    baseline: dict | None = None  # compress's simplest baseline (vpns_deploy.baseline_check), on its test split
    dense_reference: dict | None = None  # what "dense" is (pipelines/dense_reference.py): kind, label, text
    precision_gate: dict | None = None  # export's tolerance and the precisions it left out, with why
    shipping: dict | None = None  # report_measure.shipping: the fastest graph within tolerance, per batch
    target: dict | None = None  # report_measure.target: compress's --speedup against what this report measured
    slowest_layers: dict | None = None  # report_measure.slowest_layers: ORT's per-node profile, dense vs compressed
    schema: int = REPORT_SCHEMA

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: object, where: Path) -> "Report":
        """One-line error for a report.json that is not one of this schema."""
        if not isinstance(raw, dict) or raw.get("schema") != REPORT_SCHEMA:
            schema = raw.get("schema") if isinstance(raw, dict) else None
            raise UserError(f"{where} is not a schema-{REPORT_SCHEMA} report (schema {schema!r})",
                            "run vpns-deploy report --remeasure on the run")
        names = {f.name: f for f in fields(cls)}
        missing = [n for n, f in names.items() if n not in raw and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"{where} lacks the key {missing[0]!r}", "run vpns-deploy report --remeasure on the run")
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def read(cls, path: Path) -> "Report":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} ({exc})", "run vpns-deploy report --remeasure on the run") from None
        return cls.from_dict(raw, path)

