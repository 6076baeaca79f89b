"""A run directory: artifacts, each recorded with its sha256 in manifest.json, created all-or-nothing."""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from vpns_deploy.atomic import current_umask, atomic_write_json
from vpns_deploy.data.cache import sha256_file
from vpns_deploy.errors import UserError

MANIFEST = "manifest.json"
DEFAULT_RUNS = Path("runs")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("vpns-deploy", "torch", "torchvision", "onnx", "onnxscript", "onnxruntime-gpu",
                 "onnxruntime", "torch-pruning"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDir:
    def __init__(self, path: Path, manifest: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else {"artifacts": {}}

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise UserError(f"{path} is not a run directory (no {MANIFEST})", "pass a directory made by compress")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{mf} is not valid JSON ({exc})", "re-run compress into a fresh directory") from None
        return cls(path, manifest)

    def file(self, name: str) -> Path:
        return self.path / name

    def record(self, name: str, **meta: object) -> None:
        """Record an artifact already written (atomically) into the directory."""
        p = self.file(name)
        self.manifest.setdefault("artifacts", {})[name] = {
            "sha256": sha256_file(p), "bytes": p.stat().st_size, **meta
        }

    def verified(self, name: str) -> Path:
        """The artifact's path, after checking it matches the sha256 the manifest recorded."""
        entry = self.manifest.get("artifacts", {}).get(name)
        p = self.file(name)
        if entry is None or not p.is_file():
            raise UserError(f"{self.path} has no artifact {name}", "re-run the stage that writes it")
        if sha256_file(p) != entry["sha256"]:
            raise UserError(
                f"{p} does not match the sha256 in {MANIFEST} (modified or corrupted)",
                "re-run the stage that writes it",
            )
        return p

    def save(self) -> None:
        self.manifest["updated"] = now()
        atomic_write_json(self.file(MANIFEST), self.manifest)


CHECKPOINT = "checkpoint.pt"


def partial_path(final: Path) -> Path:
    """Where a run is built until it is complete; hidden, never taken for a run directory."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


@contextmanager
def staged_directory(final: Path, overwrite: bool) -> Iterator[Path]:
    """Build a run in its hidden partial directory and rename it into place only when complete.

    If the body fails after a training checkpoint was written there, the partial directory stays so
    the same command resumes it; otherwise it is removed. The checkpoint is dropped on success.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists", "pass --out to another directory or --overwrite")
    partial = partial_path(final)
    partial.mkdir(parents=True, exist_ok=True)
    os.chmod(partial, 0o777 & ~current_umask())
    try:
        yield partial
    except BaseException:
        if not (partial / CHECKPOINT).exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / CHECKPOINT).unlink(missing_ok=True)
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, trash / "run")
        os.replace(partial, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, final)


def latest_run(root: Path = DEFAULT_RUNS) -> Path:
    """The most recently completed run under root (for commands called without RUN_DIR)."""
    runs = [p.parent for p in Path(root).glob(f"*/{MANIFEST}") if not p.parent.name.startswith(".")]
    if not runs:
        raise UserError(f"no run directory found under {root}/", "pass RUN_DIR, or run compress first")
    return max(runs, key=lambda p: (p / MANIFEST).stat().st_mtime)
