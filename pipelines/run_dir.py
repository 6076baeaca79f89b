"""A run directory: its typed manifest and its artifacts, each recorded with its sha256 and verified
when read; several artifacts written together appear with their manifest or not at all (staged()).
Making a whole run directory (its lock, the hidden partial directory): run_create.py."""
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

from pipelines.artifacts import MANIFEST
from pipelines.manifest import Manifest
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.data.cache import sha256_file
from vpns_deploy.errors import UserError

DEFAULT_RUNS = Path("runs")


def source_commit() -> str | None:
    """The git commit the running vpns-deploy source is at ("+dirty" when tracked files differ from it),
    so a result names the code that made it; None for an installed wheel (its version says it)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=+dirty", "--abbrev=7",
                               "--exclude", "*"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    commit = source_commit()
    if commit:
        out["vpns-deploy commit"] = commit
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
    """A run directory and its typed manifest (None while compress is still making the run)."""

    def __init__(self, path: Path, manifest: Manifest | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._draft: dict[str, dict] = {}  # artifacts recorded before the manifest exists

    @property
    def artifacts(self) -> dict[str, dict]:
        return self.manifest.artifacts if self.manifest is not None else self._draft

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """Read and schema-check a run's manifest: a run directory is input like any other file."""
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise UserError(f"{path} is not a run directory (no {MANIFEST})", "pass a directory made by compress")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{mf} is not valid JSON ({exc})", "re-run compress into a fresh directory") from None
        except OSError as exc:
            raise UserError(f"cannot read {mf}: {exc.strerror or exc}", "check its permissions") from None
        return cls(path, Manifest.from_dict(manifest, mf))

    def file(self, name: str) -> Path:
        return self.path / name

    def record(self, name: str, **meta: object) -> None:
        """Record an artifact already written (atomically) into the directory."""
        p = self.file(name)
        self.artifacts[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, **meta}

    def verified(self, name: str) -> Path:
        """The artifact's path, after checking it matches the sha256 the manifest recorded."""
        entry = self.artifacts.get(name)
        p = self.file(name)
        if entry is None or not p.is_file():
            raise UserError(f"{self.path} has no artifact {name}", "re-run the stage that writes it")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise UserError(f"{self.file(MANIFEST)}: artifacts.{name} has no sha256",
                            "re-run the stage that writes it")
        if sha256_file(p) != entry["sha256"]:
            raise UserError(
                f"{p} does not match the sha256 in {MANIFEST} (modified or corrupted)",
                "re-run the stage that writes it",
            )
        return p

    def save(self) -> None:
        if self.manifest is None:
            raise RuntimeError("RunDir.save() before the run's manifest was made")
        self.manifest.other["updated"] = now()
        atomic_write_json(self.file(MANIFEST), self.manifest.to_dict())

    @contextmanager
    def staged(self) -> Iterator["StagedWrite"]:
        """Write several artifacts so that the run shows all of them with its manifest, or none.

        Files go to a hidden staging folder inside the run (`stage.path(name)`); on success each is
        renamed into place and the manifest is saved once; on any failure or Ctrl-C the staging
        folder is removed and the run's files and manifest stay as they were.
        """
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))
        stage = StagedWrite(self, staging)
        try:
            yield stage
            for name in stage.names:
                os.replace(staging / name, self.file(name))
            self.artifacts.update(stage.entries)
            for name in stage.discarded:  # an earlier version of an artifact this write decided against
                self.artifacts.pop(name, None)
                self.file(name).unlink(missing_ok=True)
            self.save()
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class StagedWrite:
    """Artifacts written inside RunDir.staged(): where to write them and their manifest entries."""

    def __init__(self, run: RunDir, staging: Path) -> None:
        self.run, self.dir = run, staging
        self.entries: dict[str, dict] = {}
        self.discarded: set[str] = set()

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def path(self, name: str) -> Path:
        return self.dir / name

    file = path  # so functions written for a RunDir (file/record/manifest) take a StagedWrite unchanged

    @property
    def manifest(self) -> Manifest | None:
        return self.run.manifest

    def record(self, name: str, **meta: object) -> None:
        p = self.path(name)
        self.entries[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, **meta}
        self.discarded.discard(name)

    def discard(self, name: str) -> None:
        """`name` is not part of the run after this write: dropped here, and from the run on success."""
        self.entries.pop(name, None)
        self.path(name).unlink(missing_ok=True)
        self.discarded.add(name)


def latest_run(root: Path = DEFAULT_RUNS) -> Path:
    """The most recently completed run under root (for commands called without RUN_DIR)."""
    runs = [p.parent for p in Path(root).glob(f"*/{MANIFEST}") if not p.parent.name.startswith(".")]
    if not runs:
        raise UserError(f"no run directory found under {root}/", "pass RUN_DIR, or run compress first")
    return max(runs, key=lambda p: (p / MANIFEST).stat().st_mtime)
