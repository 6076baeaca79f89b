"""Every stage's fingerprint, one way: a digest of its own settings and of the digests of what it consumes.

    compress  consumes files outside the run (the model checkpoint, the data catalog): its fingerprint
              is manifest.run_fingerprint (their digests + its configuration), the run's identity and
              the key a checkpoint must match to be resumed.
    export    consumes compress: compress's fingerprint, the sha256 of every file compress wrote, and
              its own settings (prompt folded or not, precisions, resize, calibration images, data, TensorRT).
    report    consumes export: export's fingerprint, the sha256 of every file export read and wrote,
              its own settings (latency budget, data) and the machine that measures (CPU, instruction sets,
              cores, GPUs, ONNX Runtime): a run copied elsewhere is measured again.

A stage is done when the manifest's record of it (StageRecord) holds the fingerprint asked for now and
every artifact it read and wrote still verifies against its sha256: a changed setting, a re-made
upstream stage or a modified file makes it run again. Both the stage that writes a record and the
graph that asks "is it done?" compute the fingerprint with the functions here, so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

from calibration.cpu import measuring_machine
from export.precision import INT8_RECIPE
from export.precision_gate import GATE_RULE
from pipelines.manifest import Manifest, StageRecord, fingerprint
from pipelines.run_dir import RunDir
from vpns_deploy.config import DEFAULT_MAX_PRECISION_DROP
from vpns_deploy.errors import UserError


def stage_fingerprint(stage: str, settings: dict, inputs: dict[str, str | None]) -> str:
    """The digest of a stage's own settings and its inputs' digests (upstream fingerprints, sha256)."""
    return fingerprint({"stage": stage, "settings": settings, "inputs": inputs})


def consumed(m: Manifest, upstream: str) -> tuple[dict[str, str | None], list[str]]:
    """What a stage that reads `upstream`'s results consumes: the digests that enter its fingerprint
    (upstream's fingerprint, the recorded sha256 of every file upstream read and wrote) and those files."""
    rec = m.stages.get(upstream)
    if rec is None:
        return {upstream: None}, []
    names = list(dict.fromkeys([*rec.inputs, *rec.outputs]))
    return {upstream: rec.fingerprint, **{n: m.artifacts.get(n, {}).get("sha256") for n in names}}, names


@dataclass(frozen=True)
class ExportSettings:
    """What shapes export's files, as resolved for this run (the prompt: folded or not, whoever decided)."""

    ships_prompt: bool
    precisions: tuple[str, ...]
    graph_resize: bool
    calib_images: int
    data_spec: str | None
    trt: bool
    max_drop: float = DEFAULT_MAX_PRECISION_DROP

    def to_dict(self) -> dict:
        lower = any(p != "fp32" for p in self.precisions)
        return {"ships_prompt": self.ships_prompt, "precisions": list(self.precisions),
                "graph_resize": self.graph_resize, "data": self.data_spec, "trt": self.trt,
                # the calibration set and the int8 recipe only shape an int8 graph; the gate any lower one
                "calib_images": self.calib_images if "int8" in self.precisions else None,
                "int8_recipe": INT8_RECIPE if "int8" in self.precisions else None,
                "max_precision_drop": float(self.max_drop) if lower else None,
                "precision_gate": GATE_RULE if lower else None}


def export_record(m: Manifest, settings: ExportSettings, outputs: list[str] | None = None) -> StageRecord:
    """Export's record for these settings (outputs: what it wrote; None while only asking)."""
    digests, names = consumed(m, "compress")
    return StageRecord(stage_fingerprint("export", settings.to_dict(), digests), names, outputs or [])


def report_record(m: Manifest, latency_budget: float, data_spec: str | None,
                  outputs: list[str] | None = None, machine: dict | None = None) -> StageRecord:
    """Report's record for these settings: a measurement of exactly the graphs and networks export left,
    on this machine (machine: calibration.cpu.measuring_machine() unless given)."""
    digests, names = consumed(m, "export")
    settings = {"latency_budget": float(latency_budget), "data": data_spec,
                "machine": machine if machine is not None else measuring_machine()}
    return StageRecord(stage_fingerprint("report", settings, digests), names, outputs or [])


def is_done(run: RunDir, stage: str, wanted: str) -> bool:
    """The manifest records `stage` with the fingerprint `wanted`, and every file it read and wrote verifies."""
    rec = run.manifest.stages.get(stage) if run.manifest is not None else None
    if rec is None or rec.fingerprint != wanted:
        return False
    try:
        for name in dict.fromkeys([*rec.inputs, *rec.outputs]):
            run.verified(name)
    except UserError:
        return False
    return True
