"""Nothing lost, nothing executed: the faults a careful user or an adversary meets.

Real processes, real files, real training on the embedded digits; each test fails on the code before
the fix. The slow parts (whole compress runs) are kept to a few epochs of an 8x8 CNN.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipelines.cli import app

EXE = str(Path(sys.executable).with_name("vpns-deploy"))
runner = CliRunner()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _one_line_error(stderr: str, needle: str) -> str:
    """The error is the last line of stderr, one line, after at most the command's progress lines."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(ln.startswith("error") for ln in lines) == 1, stderr
    assert needle in lines[-1], stderr
    return lines[-1]


def _cli_fails(args: list[str], needle: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    return _one_line_error(result.stderr, needle)


def _compress_args(model: Path, out: Path, *extra: str) -> list[str]:
    """A tiny budget unless `extra` overrides it (click keeps an option's last value), so a regression
    that lets a bad input through costs seconds, not a default 30 + 30 epoch run."""
    return ["compress", str(model), "--arch", "digits_cnn", "--data", "digits", "--batch-size", "64",
            "--device", "cpu", "--epochs-mask", "1", "--epochs-tune", "1", "--train-subset", "200",
            "--out", str(out), *extra]


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _edit_manifest(run: Path, edit) -> None:
    mf = run / "manifest.json"
    m = json.loads(mf.read_text())
    m = edit(m)
    mf.write_text(json.dumps(m))


# 1. A run directory is untrusted: a manifest saying "pickled_module" never makes export/report unpickle.

class _Payload:
    """Unpickling this creates the marker file: proof that code from the run directory ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_run_is_never_unpickled_without_trust_pickle(tmp_path, digits_run):
    from vpns_deploy.data.cache import sha256_file

    run = _copy_run(digits_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    torch.save(_Payload(marker), run / "model.pt")

    def edit(m):
        m["artifacts"]["model.pt"].update(format="pickled_module", sha256=sha256_file(run / "model.pt"))
        return m

    _edit_manifest(run, edit)
    for command in ("export", "report"):
        proc = subprocess.run([EXE, command, str(run)], capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 2, proc.stderr
        _one_line_error(proc.stderr, "--trust-pickle")
        assert not marker.exists(), f"{command} executed code from the run directory"
    # The control: the file really is an exploit, which only the user's explicit trust lets run.
    proc = subprocess.run([EXE, "export", str(run), "--trust-pickle"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert marker.exists() and proc.returncode == 2
    _one_line_error(proc.stderr, "not an nn.Module")


# 2. --overwrite replaces only a vpns-deploy run; '.' and an empty recipe out are refused before any work.

def test_overwrite_refuses_an_ordinary_folder_and_a_file(tmp_path, digits_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"mine")
    _cli_fails(_compress_args(digits_model, folder, "--overwrite"), "not a vpns-deploy run directory")
    assert (folder / "holiday.jpg").read_bytes() == b"mine" and len(list(folder.iterdir())) == 1

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    _cli_fails(_compress_args(digits_model, a_file, "--overwrite"), "is a file, not a run directory")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]  # no partial, no lock left


def test_out_dot_and_empty_recipe_out_are_refused_up_front(tmp_path, digits_model, monkeypatch):
    from pipelines.recipe import load_recipe
    from vpns_deploy.errors import UserError

    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        t0 = time.perf_counter()
        _cli_fails(_compress_args(digits_model, Path(out), "--overwrite"), "current directory or one above it")
        assert time.perf_counter() - t0 < 20  # refused before data, model or training
    assert os.listdir(tmp_path) == []
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[run]\nout = ""\n[model]\npath = "{digits_model}"\narch = "digits_cnn"\n'
                      '[data]\nspec = "digits"\n[compress]\nsparsity = 0.9\n')
    with pytest.raises(UserError, match="run.out = '' is not a directory"):
        load_recipe(recipe)


# 3. Two writers on one --out: the second is told who holds it; a finished run is never replaced.

def test_second_compress_on_the_same_out_is_refused_naming_the_first(tmp_path, digits_model):
    out = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    first = subprocess.Popen([EXE, *_compress_args(digits_model, out, "--epochs-mask", "500", "--train-subset",
                                                           "1000", "--seed", "1")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists() and first.poll() is None
        second = subprocess.run([EXE, *_compress_args(digits_model, out, "--epochs-mask", "1", "--seed", "2")],
                                capture_output=True, text=True, env=_env(), timeout=300)
        assert first.poll() is None, "the first run ended before the second one asked for the lock"
        assert second.returncode == 2
        _one_line_error(second.stderr, f"being written by another vpns-deploy process (pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 130 and not out.exists() and not lock.exists()


def test_a_run_that_appears_during_training_is_not_replaced(tmp_path):
    from pipelines.run_create import staged_directory
    from vpns_deploy.errors import UserError

    final = tmp_path / "run"
    with pytest.raises(UserError, match="appeared while this run was being made"):
        with staged_directory(final, overwrite=False) as tmp:
            (tmp / "checkpoint.pt").write_bytes(b"last epoch")
            (tmp / "model.pt").write_text("new")
            final.mkdir()  # e.g. a process that ignored the lock, or a user's mkdir
            (final / "theirs.txt").write_text("theirs")
    assert os.listdir(final) == ["theirs.txt"]
    assert sorted(os.listdir(tmp_path / ".run.partial")) == ["checkpoint.pt", "model.pt"]  # resumable, kept


# 4. One-line errors: unwritable --out, a full disk during a checkpoint, a manifest that is not one.

@pytest.mark.parametrize("content,needle", [
    ("[1, 2]", "holds a JSON list, not a run manifest"),
    ("{}", "lacks the key 'artifacts'"),
    ("drop model.num_classes", "lacks the key 'model.num_classes'"),
])
def test_manifest_schema_is_checked_on_open(tmp_path, digits_run, content, needle):
    run = _copy_run(digits_run, tmp_path / "run")
    if content.startswith("drop"):
        _edit_manifest(run, lambda m: (m["model"].pop("num_classes"), m)[1])
    else:
        (run / "manifest.json").write_text(content)
    before = sorted(p.name for p in run.iterdir())
    for command in ("export", "report"):
        _cli_fails([command, str(run)], needle)
    assert sorted(p.name for p in run.iterdir()) == before


def test_unwritable_out_parent_is_one_line(tmp_path, digits_model):
    if os.geteuid() == 0:  # root writes through chmod; /sys refuses everyone
        parent = Path("/sys/vpns-deploy-test")
        if not Path("/sys").is_dir():
            pytest.skip("running as root and there is no /sys to stand in for a read-only directory")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    _cli_fails(_compress_args(digits_model, parent / "run", "--epochs-mask", "1"), "pass an --out where you may write")


@pytest.fixture()
def small_disk(tmp_path):
    """A real 4 MiB tmpfs: room for one digits checkpoint (2.6 MB) but not for writing the next beside it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_a_checkpoint_keeps_the_last_one_and_resumes(small_disk, digits_model):
    out = small_disk / "run"
    args = _compress_args(digits_model, out, "--epochs-mask", "3", "--epochs-tune", "1", "--train-subset", "200",
                          "--quiet")
    err = _cli_fails(args, "No space left on device")
    assert "checkpoint.pt" in err and "free some disk space" in err
    ckpt = small_disk / ".run.partial" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)["state"]  # the last good checkpoint, intact
    assert (state["stage"], state["epoch"]) == ("mask", 1)
    assert not out.exists() and not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming after mask epoch 1" in result.stderr and (out / "model.pt").is_file()


# 5. Every number validated before anything runs.

@pytest.mark.parametrize("section,line,needle", [
    ("compress.optim", "lr_weights = -1.0", "lr_weights is a learning rate and must be > 0"),
    ("compress.optim", "lr_prompt_tune = nan", "lr_prompt_tune must be a finite number"),
    ("compress.optim", "momentum = 1.0", "momentum must lie in [0, 1)"),
    ("compress.optim", "wd_tune = -1e-4", "wd_tune is a weight decay and must be >= 0"),
    ("compress", 'mode = "channel"\nspeedup = nan', "--speedup must be a finite number"),
    ("pretrain", "lr = inf", "--lr must be a finite number"),
])
def test_recipe_numbers_are_range_checked(tmp_path, section, line, needle):
    from pipelines.recipe import load_recipe
    from vpns_deploy.errors import UserError

    tables = {"run": 'out = "runs/x"', "model": 'path = "m.pt"\narch = "digits_cnn"', "data": 'spec = "digits"',
              "compress": "sparsity = 0.9", "compress.optim": "", "pretrain": ""}
    tables[section] += "\n" + line
    recipe = tmp_path / "r.toml"
    recipe.write_text("".join(f"[{name}]\n{body}\n" for name, body in tables.items()))
    with pytest.raises(UserError, match=f"\\[{section}\\].*{needle.replace('[', '.').replace(')', '.')}"):
        load_recipe(recipe)


@pytest.mark.parametrize("extra,needle", [
    (["--mode", "channel", "--speedup", "nan"], "--speedup must be a finite number, got nan"),
    (["--lr-scores", "inf"], "--lr-scores must be > 0"),
    (["--mode", "0:4"], "N = 0 would keep nothing"),
])
def test_cli_numbers_are_checked(tmp_path, digits_model, extra, needle):
    _cli_fails(_compress_args(digits_model, tmp_path / "run", *extra), needle)
    assert os.listdir(tmp_path) == []


# 7. Resuming an interrupted --overwrite.

def test_resume_of_a_killed_overwrite_finishes_it(tmp_path, digits_model, digits_run):
    out = _copy_run(digits_run, tmp_path / "run")
    old_created = json.loads((out / "manifest.json").read_text())["created"]
    ckpt = tmp_path / ".run.partial" / "checkpoint.pt"
    proc = subprocess.Popen([EXE, *_compress_args(digits_model, out, "--epochs-mask", "3", "--epochs-tune", "1",
                                                  "--train-subset", "300", "--overwrite")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert ckpt.exists() and json.loads((out / "manifest.json").read_text())["created"] == old_created

    resumed = subprocess.run([EXE, "compress", "--resume", str(out), "--overwrite"], capture_output=True, text=True,
                             env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after mask epoch" in resumed.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["created"] != old_created and m["config"]["epochs_mask"] == 3 and not ckpt.parent.exists()


# 8. Weak messages made plain.

def _torch_zip(tmp_path: Path) -> bytes:
    from vpns_deploy.models.digits_cnn import DigitsCNN

    torch.save(DigitsCNN().state_dict(), tmp_path / "whole.pt")
    return (tmp_path / "whole.pt").read_bytes()


@pytest.mark.parametrize("kind,needle", [
    ("text", "it is a text file (starts with 'epoch 3 loss 0.1')"),
    ("protocol4", "a plain Python pickle (protocol 4"),
    ("truncated", "the file was truncated or corrupted"),
    ("empty", "the file is empty"),
])
def test_unreadable_model_files_are_explained(tmp_path, kind, needle):
    bad = tmp_path / "model.pt"
    if kind == "text":
        bad.write_text("epoch 3 loss 0.1\n")
    elif kind == "protocol4":
        bad.write_bytes(pickle.dumps({"conv.weight": [0.0] * 4}, protocol=4))
    elif kind == "truncated":
        whole = _torch_zip(tmp_path)
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        bad.write_bytes(b"")
    err = _cli_fails(_compress_args(bad, tmp_path / "run"), needle)
    assert err.endswith("save it with torch.save(model.state_dict(), PATH)")  # not cut mid-sentence


def test_usage_errors_are_one_line(tmp_path, digits_model):
    proc = subprocess.run([EXE, *_compress_args(digits_model, tmp_path / "run", "--sparsity", "abc")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "invalid value for '--sparsity'")
    assert "see vpns-deploy compress --help" in proc.stderr and "╭" not in proc.stderr


def test_nan_weights_are_refused(tmp_path, digits_model):
    sd = torch.load(digits_model, weights_only=True)
    first = next(iter(sd))
    sd[first][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    _cli_fails(_compress_args(tmp_path / "nan.pt", tmp_path / "run"), f"NaN or infinite values (in {first})")


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, digits_model):
    from pipelines.compress_stage import run_compress
    from vpns_deploy.config import CompressConfig, OptimConfig
    from vpns_deploy.errors import UserError
    from vpns_deploy.progress import Reporter

    cfg = CompressConfig(epochs_mask=1, epochs_tune=2, batch_size=64, train_subset=300, device="cpu",
                         optim=OptimConfig(lr_weights=1e30))  # finite, allowed, and certain to diverge
    out = tmp_path / "run"
    with pytest.raises(UserError, match="training diverged: the loss became (nan|inf) in tune 1/2"):
        run_compress(digits_model, "digits_cnn", "digits", cfg, out, reporter=Reporter(quiet=True))
    state = torch.load(tmp_path / ".run.partial" / "checkpoint.pt", weights_only=True)["state"]
    assert (state["stage"], state["epoch"]) == ("mask", 1)  # the last epoch that ended finite
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point())
    assert not out.exists()


def test_train_subset_below_the_class_count(tmp_path, digits_model):
    _cli_fails(_compress_args(digits_model, tmp_path / "run", "--train-subset", "5"),
               "--train-subset 5 is fewer images than the data's 10 classes")


def test_sweep_refuses_a_point_given_twice(tmp_path, digits_model):
    _cli_fails(["sweep", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--sparsity", "0.5,0.7,0.5",
                "--epochs-mask", "1", "--epochs-tune", "1", "--train-subset", "200", "--out", str(tmp_path / "sweep")], "--sparsity lists 0.5 more than once")
    assert not (tmp_path / "sweep").exists()


def test_staged_artifacts_appear_with_the_manifest_or_not_at_all(tmp_path, digits_run):
    """RunDir.staged(): what a multi-file writer (export) uses so a failed check leaves the run as it was."""
    from pipelines.run_dir import RunDir

    run_path = _copy_run(digits_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_path.iterdir()}
    run = RunDir.open(run_path)
    with pytest.raises(RuntimeError, match="parity check failed"):
        with run.staged() as stage:
            stage.path("model.onnx").write_bytes(b"new graph")
            stage.record("model.onnx")
            raise RuntimeError("parity check failed")
    assert {p.name: p.read_bytes() for p in run_path.iterdir()} == before  # nothing replaced, no staging left

    with run.staged() as stage:
        stage.path("extra.bin").write_bytes(b"x")
        stage.record("extra.bin", precision="fp32")
    assert RunDir.open(run_path).verified("extra.bin").read_bytes() == b"x"
    assert not [p for p in run_path.iterdir() if p.name.startswith(".staging-")]


def test_ctrl_c_in_export_says_what_export_left(tmp_path, digits_run):
    run = _copy_run(digits_run, tmp_path / "run")
    manifest = (run / "manifest.json").read_bytes()
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # --graph-resize adds resize-parity work after each graph, so the interrupt lands mid-export even on idle cores
    # A background shell (`nohup make test &`) starts its jobs with SIGINT ignored, and Python keeps an ignored
    # SIGINT, so the child would never see the Ctrl-C: give it the default disposition, as a terminal would.
    proc = subprocess.Popen([EXE, "export", str(run), "--precision", "fp32,fp16,int8", "--graph-resize"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:  # interrupt once the first graph is written, mid-way through the command
        seen.append(line)
        if line.startswith("model.onnx:"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("interrupted: export did not finish") and "no run directory" not in last, last
    assert (run / "manifest.json").read_bytes() == manifest
    # all-or-nothing: the graph written before the interrupt never reached the run (staged, then dropped)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
