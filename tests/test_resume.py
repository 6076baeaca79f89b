"""A run killed with SIGKILL in the middle of stage 1 and resumed ends bit-identical to an
uninterrupted run (CPU). Here channel mode, resumed by the same command again; unstructured mode resumed
with `--resume RUN_DIR` is the GPU check's resume step, run for real by its dry run
(tests/test_gpu_check.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EXE = str(Path(sys.executable).with_name("vpns-deploy"))


# Enough stage-1 epochs that the kill at the first checkpoint lands inside stage 1 with epochs still to
# run (an epoch here is about a second; the watcher polls every 20 ms), few enough to keep CI short.
MASK_EPOCHS = 3
CHANNEL = ["--mode", "channel", "--sparsity", "0.5"]


def _cmd(model: Path, out: Path) -> list[str]:
    return [EXE, "compress", str(model), "--arch", "digits_cnn", "--data", "digits", *CHANNEL,
            "--epochs-mask", str(MASK_EPOCHS), "--epochs-tune", "1", "--batch-size", "64", "--device", "cpu",
            "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _kill_at_first_checkpoint(model: Path, out: Path) -> Path:
    """Start compress, SIGKILL it as soon as its first epoch checkpoint exists; returns that file."""
    ckpt = out.parent / f".{out.name}.partial" / "checkpoint.pt"
    proc = subprocess.Popen(_cmd(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return ckpt


def test_sigkill_mid_stage1_then_resume_matches_uninterrupted(tmp_path, digits_model):
    """Killed in stage 1: other settings on the same --out are refused and the checkpoint kept; the same
    command again resumes it, bit-identical to an uninterrupted run."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(digits_model, full), check=True, capture_output=True, env=_env(), timeout=600)

    ckpt = _kill_at_first_checkpoint(digits_model, cut)
    state = torch.load(ckpt, weights_only=True)["state"]
    assert state["stage"] == "mask" and state["epoch"] < MASK_EPOCHS  # killed inside stage 1
    assert not cut.exists()  # no run directory from a killed run

    other = _cmd(digits_model, cut)[1:]
    other[other.index("--sparsity") + 1] = "0.4"
    refused = CliRunner().invoke(app, other)
    assert refused.exit_code == 2 and "unfinished run with different settings" in refused.stderr
    assert ckpt.exists()  # kept for the user to resume

    resumed = subprocess.run(_cmd(digits_model, cut), capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after mask epoch" in resumed.stderr
    assert not ckpt.parent.exists() and not (cut / "checkpoint.pt").exists()

    for name in ("masks.pt", "model.pt", "prompt.pt"):
        a = torch.load(full / name, weights_only=True)
        b = torch.load(cut / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ma = json.loads((full / "manifest.json").read_text())["metrics"]
    mb = json.loads((cut / "manifest.json").read_text())["metrics"]
    assert ma["top1_plain"] == mb["top1_plain"] and ma["top1_prompted"] == mb["top1_prompted"]
    for key in ("val_acc_plain", "val_acc_prompted", "test_acc_plain"):
        assert [e[key] for e in ma["epochs"]] == [e[key] for e in mb["epochs"]], key
    assert all(e["val_acc_plain"] is not None for e in ma["epochs"])  # the validation split judged every epoch


def test_fingerprint_hashes_only_plain_settings():
    """Equal settings give equal fingerprints; an object (whose str() may carry an address or state the
    run mutates) is refused instead of being hashed through str()."""
    from pipelines.checkpoint import fingerprint

    settings = {"config": {"mode": "channel", "sparsity": 0.5, "speedup": None}, "inputs": {"mean": [0.5]}}
    assert fingerprint(settings) == fingerprint(json.loads(json.dumps(settings)))
    assert fingerprint(settings) != fingerprint({**settings, "train": 1})
    with pytest.raises(TypeError):
        fingerprint({**settings, "model": torch.nn.Linear(1, 1)})
