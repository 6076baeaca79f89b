"""Preflight before a long run: the projection from small measured batches, the one-line refusal that
leaves nothing behind, progress lines on a pipe before the first epoch, and the recorded reference."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vpns_deploy.config import PREFLIGHT_MEMORY_ENV, PREFLIGHT_MEMORY_MARGIN, CompressConfig
from vpns_deploy.errors import UserError
from vpns_deploy.models import load_model
from vpns_deploy.preflight import Fit, StepCost, measure_step, verdict
from vpns_deploy.run_work import SplitSizes, compressed_steps, dense_finetune_epochs, run_phases

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, stdout and stderr one pipe (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _cost(available: int) -> StepCost:
    """A projection with round numbers: 100 MiB per image on top of 1 GiB held."""
    return StepCost(device="cpu", batch=256, measured_at=(2, 8, 32), memory=Fit(2, 1024 * MIB + 200 * MIB, 100 * MIB),
                    eval_memory=Fit(2, 1024 * MIB, 10 * MIB), train_seconds_per_image=0.01,
                    forward_seconds_per_image=0.003, extra_bytes=0, available_bytes=available, base_bytes=1024 * MIB)


def test_refusal_names_the_largest_batch_that_fits_and_a_smaller_input():
    cost = _cost(available=8192 * MIB)
    phases = run_phases(CompressConfig(), SplitSizes(2000, 200, 500))
    with pytest.raises(UserError) as exc:
        verdict(cost, phases, 500, 240)
    message = str(exc.value)
    batch = int(message.split("--batch-size ")[1].split()[0])
    room = cost.available_bytes * PREFLIGHT_MEMORY_MARGIN
    assert cost.peak_bytes(batch, 500) - cost.base_bytes <= room < cost.peak_bytes(batch + 1, 500) - cost.base_bytes
    side = int(message.split("--input-size ")[1].split()[0])
    assert side < 240 and side % 32 == 0 and "\n" not in message
    assert verdict(_cost(available=64 * 1024 * MIB), phases, 500, 240).startswith("preflight: batch 256")


def test_objects_a_process_froze_itself_stay_frozen(tmp_path):
    from vpns_deploy.models import get_arch

    torch.save(get_arch("cifar_resnet20").build(10).state_dict(), tmp_path / "r20.pt")
    loaded = load_model(tmp_path / "r20.pt", "cifar_resnet20", 10)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        measure_step(loaded.net, loaded.inputs, (3, 32, 32), 8, torch.device("cpu"))
        assert frozen > 0 and gc.get_freeze_count() > frozen // 2  # not thawed (frees may shrink it a little)
    finally:
        gc.unfreeze()


def test_projection_from_small_batches_matches_a_measured_step(tmp_path):
    """The linear fit in the batch size, from steps at batches 2, 8 and 32, against a real step at batch 128
    of the same network (ResNet-20 at 32 px: activations of about 2 MiB per image): never far below it,
    at most half the growth above it."""
    from vpns_deploy.models import get_arch
    from vpns_deploy.preflight import _measure
    from vpns_deploy.prompts import PromptedNet

    torch.save(get_arch("cifar_resnet20").build(10).state_dict(), tmp_path / "r20.pt")
    loaded = load_model(tmp_path / "r20.pt", "cifar_resnet20", 10)
    big, cpu = 128, torch.device("cpu")
    assert gc.get_freeze_count() == 0
    cost = measure_step(loaded.net, loaded.inputs, (3, 32, 32), big, cpu)
    assert gc.get_freeze_count() == 0  # the objects it froze to measure quickly are thawed again
    model = PromptedNet(loaded.net.to(memory_format=torch.channels_last), loaded.inputs, None)
    opt = torch.optim.SGD(loaded.net.parameters(), lr=1e-6, momentum=0.9)
    x, y = torch.rand(big, 3, 32, 32), torch.zeros(big, dtype=torch.long)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x, prompted=False), y).backward()
        opt.step()

    step()
    _, peak = _measure(step, cpu)
    growth = peak - cost.base_bytes
    assert cost.measured_at == (2, 8, 32) and growth > 100 * MIB
    # Reading low lets a run start that runs out of memory: bounded at a quarter of the growth. Reading
    # high refuses a batch that would fit: a nuisance, bounded at half (the slope from batches 8 to 32
    # can run above the one to 128: over by 27 % of the growth has been measured).
    error = (cost.memory.at(big) - peak) / growth
    assert -0.25 < error < 0.5, (cost.memory.at(big) / MIB, peak / MIB, growth / MIB)


def test_dense_finetune_gets_the_compressed_models_optimiser_steps():
    cfg = CompressConfig(epochs_mask=2, epochs_tune=3, batch_size=50)
    assert compressed_steps(cfg, 1000) == (2 + 3) * 20 * 2  # VPNs: two passes per batch
    assert dense_finetune_epochs(cfg, 1000) == 10
    phases = {p.name: p for p in run_phases(CompressConfig(head="new", dense_reference="finetune", epochs_mask=2,
                                                           epochs_tune=3, batch_size=50), SplitSizes(1000, 0, 100))}
    assert phases["dense fine-tune"].steps == phases["mask"].steps + phases["tune"].steps
    assert phases["head warm-up"].train_images == 0  # only the head trains: forward cost
    with pytest.raises(UserError, match="--dense-reference finetune needs"):
        CompressConfig(head="map", dense_reference="finetune")


def test_impossible_memory_fails_in_one_line_and_leaves_nothing(digits_model, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    done = _cli("compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--head", "new",
                "--epochs-mask", "1", "--epochs-tune", "1", "--out", str(runs / "x"),
                env={PREFLIGHT_MEMORY_ENV: str(1 * MIB)})
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 2, done.stdout
    assert len(lines) == 1 and lines[0].startswith("error: batch ") and "MiB is free" in lines[0], lines
    assert list(runs.iterdir()) == []  # no .x.partial, no .x.lock


def test_piped_progress_shows_the_phases_and_an_eta_before_the_first_epoch(digits_model, tmp_path):
    out = tmp_path / "run"
    done = _cli("compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--head", "new",
                "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "64", "--train-subset", "400",
                "--out", str(out))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.strip().startswith("mask 1/1  loss"))
    before = lines[:first_epoch]
    assert before[0].startswith("preflight: batch 64 at 8 px on cpu") and "optimiser steps, about 0:" in before[0]
    starts = [line for line in before if re.match(r"[^ ].*: \d+ (steps|batches), eta \d+:\d\d:\d\d$", line)]
    assert [s.split(":")[0] for s in starts] == ["head 1/1", "dense reference, test top-1",
                                                 "baseline (magnitude mask, no training)", "mask 1/1"]
    assert not any("━" in line for line in lines)  # plain lines, no live bar
    reference = json.loads((out / "manifest.json").read_text())["metrics"]["dense_reference"]
    assert reference["kind"] == "as-given" and reference["label"] == "dense, head warm-up only"
    assert reference["text"].startswith("backbone + new head warmed up for 6 steps") and "not fine-tuned" in reference["text"]
