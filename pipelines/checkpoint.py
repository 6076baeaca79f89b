"""Per-epoch training checkpoints in a run's partial directory, tied to the settings that made them."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pipelines.manifest import fingerprint  # noqa: F401 - the hash primitive, re-exported for callers
from vpns_deploy.atomic import atomic_torch_save
from vpns_deploy.errors import UserError


class FileCheckpoint:
    """`fingerprint`: manifest.run_fingerprint of the run's settings (the same digest its manifest
    records when done). `invocation` is what `compress --resume RUN_DIR` needs to call the same run again."""

    def __init__(self, path: Path, fingerprint: str, invocation: dict | None = None) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.invocation = invocation or {}

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # torn or foreign file: not resumable (atomic saves make this rare)
            return None

    def load(self) -> dict | None:
        state = self._read()
        return None if state is None else state["state"]

    def save(self, state: dict) -> None:
        atomic_torch_save(self.path, {"fingerprint": self.fingerprint, "invocation": self.invocation, "state": state})

    def claim(self, overwrite: bool) -> bool:
        """Check an existing partial run before starting; True when there is a checkpoint to resume."""
        state = self._read()
        partial = self.path.parent
        if state is None:
            shutil.rmtree(partial, ignore_errors=True)  # nothing resumable there
            return False
        if state["fingerprint"] == self.fingerprint:
            return True
        if overwrite:
            shutil.rmtree(partial, ignore_errors=True)
            return False
        raise UserError(
            f"{partial} holds an unfinished run with different settings",
            "re-run with the same settings to resume it, or pass --overwrite to discard it",
        )


def read_invocation(path: Path) -> dict | None:
    """The settings an unfinished run was started with (None: no readable checkpoint there)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, torn or foreign
        return None
    return saved.get("invocation") or None
