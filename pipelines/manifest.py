"""The run contract: manifest.json as typed, versioned dataclasses, validated when a run is opened.

A run directory is untrusted input, so everything the stages read from its manifest is checked here
once (a wrong or missing key is one `error:` line naming it) and then read through typed fields,
never through string keys scattered over the pipeline. The JSON layout is unchanged from schema 1;
schema 2 adds `fingerprint`: one digest of the settings a run was made with, used both to tell a
finished run apart from one a recipe now asks for (stages) and to decide whether a checkpoint may be
resumed (compress). Schema 3 adds `stages`: each finished stage's fingerprint (pipelines/stage_keys.py:
its settings and its inputs' digests) with the artifacts it read and wrote, so every stage is "done"
the same way.

Schema 1 and 2 manifests load through `upgrade()`: the fingerprint is computed from what they record;
their compress stage is recorded from it, their export/report had no fingerprint and are made again once.
Manifests with no schema version at all are refused: they come from before the run layout was fixed,
nothing says which keys they hold, and re-creating them is one command.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.artifacts import COMPRESS_OUTPUTS, PROMPT_PT
from vpns_deploy.errors import UserError

SCHEMA_VERSION = 3
TOOL = "vpns-deploy"  # only a directory whose manifest says this may be replaced by --overwrite

# What a manifest must hold before anything in it is used (key -> type; dotted keys are nested).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "artifacts": dict, "config": dict, "model": dict, "data": dict,
    "model.arch": (str, type(None)), "model.num_classes": int, "model.inputs": dict,
    "data.spec": str, "data.image_shape": list, "data.classes": list, "config.mode": str, "config.seed": int,
    "config.method": str, "config.sparsity": (int, float),
}
RECREATE = "re-create it: vpns-deploy compress (the same command) into a fresh --out, or vpns-deploy run RECIPE"


def fingerprint(settings: dict) -> str:
    """sha256 of plain JSON settings. Anything else is refused (TypeError) rather than hashed through
    str(): an object's str() can carry a memory address or state the run changes, so a killed run
    and its rerun would never match."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def run_fingerprint(config: dict, model_sha256: str | None, arch: str | None, data_fingerprint: str | None,
                    input_overrides: dict) -> str:
    """THE fingerprint of a compress run: equal exactly when everything that shapes its result is.

    Both questions use it: "is this run already made?" (stages, from a recipe, before loading
    anything heavy) and "may this checkpoint be resumed?" (compress). The worker count and the
    preflight are left out: neither changes a result (draws are made in the main process; the
    preflight trains a copy)."""
    return fingerprint({"config": identity(config), "model_sha256": model_sha256, "arch": arch,
                        "data": data_fingerprint, "input_overrides": input_overrides})


TARGET_FIELDS = ("budget_by", "target_runtime", "target_batch", "target_probe_seconds")  # used with --speedup only


def identity(config: dict) -> dict:
    """The config fields that decide a run's result. Left out: the worker count and the preflight
    (they change no result), the latency target's settings unless --speedup is a measured latency (unused:
    a MACs budget is what --speedup meant before they existed) and an unset max_drop (a check, not a
    setting), so runs made before these options keep their identity and are still found, skipped, resumed."""
    out = {k: v for k, v in config.items() if k not in ("workers", "preflight")}
    if out.get("max_drop") is None:
        out.pop("max_drop", None)
    latency = out.get("speedup") is not None and out.get("mode") == "channel" and out.get("budget_by") == "latency"
    if not latency:  # a MACs budget is what --speedup meant before budget_by existed
        for k in TARGET_FIELDS:
            out.pop(k, None)
    return out


@dataclass
class ModelRecord:
    num_classes: int
    inputs: dict  # InputSpec.to_dict()
    arch: str | None = None  # None: a pickled module
    source: str | None = None
    sha256: str | None = None
    inputs_from: str = ""
    input_overrides: dict = field(default_factory=lambda: dict.fromkeys(("input_size", "mean", "std", "interpolation")))


@dataclass
class DataRecord:
    spec: str
    image_shape: list
    classes: list
    fingerprint: str | None = None
    details: dict = field(default_factory=dict)  # counts, augmentation, storage: recorded, shown, not decided on


@dataclass
class ExportRecord:
    created: str
    ships_prompt: bool
    graphs: dict = field(default_factory=dict)
    precisions: list = field(default_factory=lambda: ["fp32"])
    graph_resize: bool = False
    calib_images: int | None = None
    prompt_choice: dict | None = None
    caller_must_feed: dict | None = None
    tensorrt: dict | None = None
    int8_format: dict | None = None  # export.int8_format.Int8Format.to_dict(): the format shipped and why
    max_precision_drop: float | None = None  # the accuracy gate's tolerance (export/precision_gate.py)
    left_out: dict = field(default_factory=dict)  # precision -> why it was not shipped (the gate's reason)

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass
class StageRecord:
    """A finished stage: its fingerprint, the artifacts it read (verified again before it counts as
    done) and the artifacts it wrote."""

    fingerprint: str
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@dataclass
class Manifest:
    model: ModelRecord
    data: DataRecord
    config: dict  # CompressConfig.to_dict(); compress_config() rebuilds the dataclass
    fingerprint: str
    artifacts: dict = field(default_factory=dict)  # name -> {"sha256", "bytes", **meta}
    method: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    prompt: dict | None = None
    export: ExportRecord | None = None
    stages: dict = field(default_factory=dict)  # stage name -> StageRecord
    seed: int | None = None
    schema: int = SCHEMA_VERSION
    tool: str = TOOL
    other: dict = field(default_factory=dict)  # created, command, device, versions, timings: for people

    @property
    def mode(self) -> str:
        return self.config["mode"]  # REQUIRED: checked on open, as the three below

    @property
    def method_name(self) -> str:
        return self.config["method"]

    @property
    def sparsity_target(self) -> float:
        return float(self.config["sparsity"])

    @property
    def run_seed(self) -> int:
        return int(self.config["seed"])

    @property
    def pattern(self) -> tuple[int, int] | None:
        p = self.metrics.get("structure", {}).get("pattern")
        return tuple(p) if p else None

    @property
    def prompt_decision(self) -> dict | None:
        return self.metrics.get("prompt_decision")

    def compress_config(self):
        """The CompressConfig the run was made with (validated as on the command line)."""
        from vpns_deploy.config import config_from_dict

        return config_from_dict(self.config)

    def to_dict(self) -> dict:
        out = {"schema": self.schema, "tool": self.tool, "fingerprint": self.fingerprint, **self.other,
               "config": self.config, "model": _plain(self.model), "data": _data_dict(self.data),
               "prompt": self.prompt, "method": self.method, "seed": self.seed, "metrics": self.metrics,
               "artifacts": self.artifacts, "stages": {k: _plain(v) for k, v in self.stages.items()}}
        if self.export is not None:
            out["export"] = _plain(self.export)
        return out

    @classmethod
    def from_dict(cls, raw: object, where: Path) -> "Manifest":
        """Validate (one-line UserError naming the first bad key) and type a manifest read from JSON."""
        m = upgrade(check(raw, where), where)
        known = {"schema", "tool", "fingerprint", "config", "model", "data", "prompt", "method", "seed",
                 "metrics", "artifacts", "export", "stages"}
        data = dict(m["data"])
        head = {k: data.pop(k) for k in ("spec", "image_shape", "classes", "fingerprint") if k in data}
        return cls(model=_build(ModelRecord, m["model"]), data=DataRecord(**head, details=data),
                   config=m["config"], fingerprint=m["fingerprint"], artifacts=m["artifacts"],
                   method=_section(m, "method", where), metrics=_section(m, "metrics", where),
                   prompt=m.get("prompt") or None, export=_export(m.get("export"), where), seed=m.get("seed"),
                   stages=_stages(m.get("stages"), where),
                   schema=m["schema"], tool=m.get("tool", TOOL), other={k: v for k, v in m.items() if k not in known})


def check(raw: object, where: Path) -> dict:
    """One-line error naming the first key a manifest lacks (or holds with the wrong type)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} holds a JSON {type(raw).__name__}, not a run manifest (an object)",
                        "pass a directory made by compress, or re-run compress")
    for key, kind in REQUIRED.items():
        value: object = raw
        for part in key.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            raise UserError(f"{where} lacks the key {key!r}: not a complete vpns-deploy manifest",
                            "re-run compress into a fresh directory")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{where}: {key!r} has the wrong type ({type(value).__name__})",
                            "re-run compress into a fresh directory")
    for name, entry in raw["artifacts"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise UserError(f"{where}: artifacts.{name} has no sha256", "re-run compress into a fresh directory")
    return raw


def upgrade(m: dict, where: Path) -> dict:
    """An older schema's manifest in the current layout (a copy), or a one-line refusal."""
    schema = m.get("schema")
    if schema is None:
        raise UserError(f"{where} has no schema version: the run was made by a vpns-deploy from before the run "
                        "layout was fixed", RECREATE)
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA_VERSION:
        raise UserError(f"{where} has schema {schema!r}; this vpns-deploy reads schemas 1 to {SCHEMA_VERSION}",
                        "use the vpns-deploy that made the run, or " + RECREATE)
    m = dict(m)
    if schema == 1:  # schema 2 added the fingerprint; everything it hashes was recorded already
        model, data = m["model"], m["data"]
        m["fingerprint"] = run_fingerprint(m["config"], model.get("sha256"), model["arch"], data.get("fingerprint"),
                                           model.get("input_overrides") or ModelRecord(0, {}).input_overrides)
    if not isinstance(m.get("fingerprint"), str):
        raise UserError(f"{where} lacks the key 'fingerprint': not a complete vpns-deploy manifest", RECREATE)
    if schema < 3:  # schema 3 added the stage records; compress's is its fingerprint and its files
        made = [n for n in (*COMPRESS_OUTPUTS, PROMPT_PT) if n in m["artifacts"]]
        m["stages"] = {"compress": {"fingerprint": m["fingerprint"], "inputs": [], "outputs": made}}
    m["schema"] = SCHEMA_VERSION
    return m


_MISSING = object()


def _section(m: dict, key: str, where: Path) -> dict:
    value = m.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key!r} has the wrong type ({type(value).__name__})", "re-run compress")
    return value


def _export(raw: object, where: Path) -> ExportRecord | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("ships_prompt"), bool) \
            or not isinstance(raw.get("created"), str):
        raise UserError(f"{where}: 'export' lacks created/ships_prompt", "run vpns-deploy export on the run again")
    return _build(ExportRecord, raw)


def _stages(raw: object, where: Path) -> dict:
    if not isinstance(raw, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("fingerprint"), str) for r in raw.values()):
        raise UserError(f"{where}: 'stages' is not a map of stage records with fingerprints",
                        "re-run the stages into a fresh directory")
    return {name: _build(StageRecord, r) for name, r in raw.items()}


def _build(cls, raw: dict):
    """A record dataclass from its JSON object; keys it does not know are dropped (newer writers)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


def _plain(record) -> dict:
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _data_dict(d: DataRecord) -> dict:
    return {"spec": d.spec, "fingerprint": d.fingerprint, "classes": d.classes, "image_shape": d.image_shape,
            **d.details}
