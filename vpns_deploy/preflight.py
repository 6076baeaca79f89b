"""Preflight: measure one training step of the real model before a long run starts.

A run whose batch does not fit in memory is otherwise killed by the kernel after many minutes, with
nothing kept and nothing said. So before any file is written, the actual network runs a forward and
backward pass (and an optimiser step) at small batches on the run's device, at the run's input
size; its peak memory (the process's resident set on the CPU, torch's allocator peak on CUDA) and its
time are fitted linearly in the batch size (activations scale with the batch) and projected to the
run's batch. The small batches keep the preflight itself from ever needing much memory.
"""
from __future__ import annotations

import copy
import ctypes
import gc
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim import SGD

from vpns_deploy.config import PREFLIGHT_MEMORY_ENV, PREFLIGHT_MEMORY_MARGIN
from vpns_deploy.errors import UserError
from vpns_deploy.prompts import PromptedNet
from vpns_deploy.run_work import Phase

# The batches measured, each clamped to the run's batch: the first two always; the third only when
# the fit through the first two says it fits in half the free memory. The fit runs through the last
# two: per image, batches of 2-8 cost more than large ones (EfficientNet-Lite0 at 128 px: the fit through
# 2 and 8 projected a step at batch 128 25 % above its measured peak).
SMALL_BATCHES = (2, 8, 32)
# Copies of the parameters a run holds beside the measured network, its gradients and SGD momentum:
# the dense reference, the magnitude baseline's copy, scores, their gradients and Adam's two moments.
# Counted, not measured (small beside the activations of any batch worth a preflight).
EXTRA_PARAM_COPIES = 6
GIB = 2**30


@dataclass(frozen=True)
class Fit:
    """value(batch) = at_small + per_image * (batch - small): one linear fit in the batch size."""

    small: int
    at_small: float
    per_image: float

    def at(self, batch: int) -> float:
        return self.at_small + self.per_image * (batch - self.small)

    def largest_batch(self, limit: float) -> int:
        """The largest batch whose value stays within limit (0: not even one image)."""
        if self.per_image <= 0:
            return 0 if self.at(1) > limit else 1 << 30
        return max(0, math.floor((limit - self.at_small) / self.per_image) + self.small)


@dataclass(frozen=True)
class StepCost:
    """What one batch costs at the run's settings, measured at small batches and projected."""

    device: str
    batch: int  # the run's batch (clamped to the training set's size)
    measured_at: tuple[int, ...]
    memory: Fit  # peak bytes of a training step (process resident set on the CPU, allocated on CUDA)
    eval_memory: Fit  # peak bytes of a no-grad forward pass
    train_seconds_per_image: float  # forward + backward + optimiser step
    forward_seconds_per_image: float  # no-grad forward, as evaluation and BN re-estimation run
    extra_bytes: int  # the run's other parameter copies (EXTRA_PARAM_COPIES), not measured
    available_bytes: int  # memory the run may still take (MemAvailable, cgroup, CUDA free), before margin
    base_bytes: int  # what the process already held before the preflight (data, model)

    def peak_bytes(self, batch: int, eval_batch: int) -> float:
        """The run's projected peak: the larger of a training step and an evaluation batch, plus extras."""
        return max(self.memory.at(batch), self.eval_memory.at(eval_batch)) + self.extra_bytes

    def fits(self, batch: int, eval_batch: int) -> bool:
        return self.peak_bytes(batch, eval_batch) - self.base_bytes <= self.available_bytes * PREFLIGHT_MEMORY_MARGIN


# --- memory the process may use ------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1)) * 1024  # type: ignore[union-attr]


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), None when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - int(usage))
    return None


def available_bytes(device: torch.device) -> int:
    """Memory a run may still take: CUDA's free memory on a GPU; otherwise /proc/meminfo MemAvailable,
    capped by the cgroup's limit. PREFLIGHT_MEMORY_ENV (bytes) replaces the CPU figure (tests)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    given = os.environ.get(PREFLIGHT_MEMORY_ENV)
    if given:
        try:
            return int(given)
        except ValueError:
            raise UserError(f"{PREFLIGHT_MEMORY_ENV}={given!r} is not a number of bytes",
                            f"set it to an integer, or unset it") from None
    meminfo = Path("/proc/meminfo").read_text()
    avail = int(re.search(r"^MemAvailable:\s+(\d+)", meminfo, re.M).group(1)) * 1024  # type: ignore[union-attr]
    room = _cgroup_room()
    return min(avail, room) if room is not None else avail


# --- peak memory of one call -----------------------------------------------------------------------------

@contextmanager
def _peak_rss() -> Iterator[Callable[[], int]]:
    """The process's peak resident set while the body runs. Linux resets its high-water mark (VmHWM)
    on a write of 5 to /proc/self/clear_refs; where that is refused, a thread samples VmRSS every ms."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        sampler = None
    except OSError:
        peak = [_status_kib("VmRSS")]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.001):
                peak[0] = max(peak[0], _status_kib("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    result = [0]
    try:
        yield lambda: result[0]
    finally:
        if sampler is None:
            result[0] = _status_kib("VmHWM")
        else:
            stop.set()
            sampler.join()
            result[0] = max(peak[0], _status_kib("VmRSS"))


def _release_freed_memory() -> None:
    """Hand memory that was freed but kept by glibc's allocator back to the system (malloc_trim), so
    the resident set measures what a step needs, not what earlier work (data decoding) left behind:
    a step reusing kept memory would show no growth with the batch."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may under-read, the margin covers some
        pass


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Collect once, then leave everything alive now out of later collections (gc.freeze): each
    measurement's collection then walks only what the steps made, not the run's data and modules
    (12 full collections cost 2.3 of a 16 s ResNet-20 run's 5 s preflight). A process that froze objects
    itself keeps them frozen: nothing is frozen or thawed here then."""
    gc.collect()
    mine = gc.get_freeze_count() == 0
    if mine:
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


def _measure(fn: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """(seconds, peak bytes) of fn: process resident set on the CPU, allocator peak on CUDA."""
    gc.collect()
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, int(torch.cuda.max_memory_allocated(device))
    with _peak_rss() as peak:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return seconds, peak()


def _measure_warm(fn: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """(fastest time, largest peak) of fn's second and third calls: the first at a new shape pays
    one-time costs (kernel selection and compilation, allocator pools); the fastest of two is the
    least disturbed by other processes on a shared machine."""
    fn()
    (t1, m1), (t2, m2) = _measure(fn, device), _measure(fn, device)
    return min(t1, t2), max(m1, m2)


def _fit(points: dict[int, float]) -> Fit:
    """The line through the two largest batches measured."""
    *_, (b1, v1), (b2, v2) = [(0, 0.0), *sorted(points.items())]
    if b1 == 0:
        return Fit(b2, v2, v2 / b2)
    return Fit(b1, v1, max(0.0, (v2 - v1) / (b2 - b1)))


# --- the measurement ---------------------------------------------------------------------------------------

def measure_step(loaded_net: torch.nn.Module, inputs, image_shape: tuple[int, ...], batch: int,
                 device: torch.device) -> StepCost:
    """Train a copy of the network for one step at each of SMALL_BATCHES (clamped to `batch`) on random
    images of the run's shape, and project to `batch`. The run's network, RNG state and data are
    untouched, so a run with a preflight ends bit-identical to one without."""
    base = (int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else _status_kib("VmRSS"))
    available = available_bytes(device)
    sizes = sorted({min(batch, b) for b in SMALL_BATCHES[:2]})
    with _gc_frozen(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        net = copy.deepcopy(loaded_net).to(device, memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(True)
        model = PromptedNet(net, inputs, None).to(device)
        opt = SGD(net.parameters(), lr=1e-6, momentum=0.9)

        def train(b: int) -> Callable[[], None]:
            x = torch.rand(b, *image_shape, device=device)
            y = torch.zeros(b, dtype=torch.long, device=device)  # class 0 exists in every head

            def step() -> None:
                model.train()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x, prompted=False, mapped=False), y).backward()
                opt.step()
            return step

        def forward(b: int) -> Callable[[], None]:
            x = torch.rand(b, *image_shape, device=device)

            @torch.no_grad()
            def run() -> None:
                model.eval()
                model(x, prompted=False, mapped=False)
            return run

        steps = {b: _measure_warm(train(b), device) for b in sizes}
        forwards = {b: _measure_warm(forward(b), device) for b in sizes}
        third = min(batch, SMALL_BATCHES[2])
        if third > sizes[-1] and _fit({b: m for b, (_, m) in steps.items()}).at(third) - base <= 0.5 * available:
            sizes.append(third)
            steps[third] = _measure_warm(train(third), device)
            forwards[third] = _measure_warm(forward(third), device)
        params = sum(p.numel() * p.element_size() for p in net.parameters())
        del model, net, opt
    gc.collect()
    top = sizes[-1]
    return StepCost(
        device=str(device), batch=batch, measured_at=tuple(sizes),
        memory=_fit({b: m for b, (_, m) in steps.items()}), eval_memory=_fit({b: m for b, (_, m) in forwards.items()}),
        train_seconds_per_image=steps[top][0] / top, forward_seconds_per_image=forwards[top][0] / top,
        extra_bytes=EXTRA_PARAM_COPIES * params, available_bytes=available, base_bytes=base,
    )


# --- the verdict ---------------------------------------------------------------------------------------

def gib(n: float) -> str:
    """Bytes as GiB (one decimal), or MiB below 1 GiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def run_seconds(cost: StepCost, phases: list[Phase]) -> float:
    """The run's projected length: measured seconds per image times the images of every phase."""
    return sum(p.train_images * cost.train_seconds_per_image + p.forward_images * cost.forward_seconds_per_image
               for p in phases)


def _fixes(cost: StepCost, eval_batch: int, side: int) -> str:
    """Settings that fit: the largest batch, else a smaller input side (activations scale with pixels)."""
    room = cost.base_bytes + cost.available_bytes * PREFLIGHT_MEMORY_MARGIN - cost.extra_bytes
    if cost.eval_memory.at(eval_batch) > room:
        return "even evaluation does not fit: free memory, or pass a smaller --input-size"
    fits = min(cost.memory.largest_batch(room), cost.batch - 1)
    fixes = []
    if fits >= 1:
        fixes.append(f"--batch-size {fits} (about {gib(cost.peak_bytes(fits, eval_batch))})")
    fixed = cost.memory.at_small - cost.memory.per_image * cost.memory.small  # what no image changes
    scale = (room - fixed) / max(1.0, cost.memory.per_image * cost.batch)
    smaller = int(side * math.sqrt(scale)) // 32 * 32 if scale > 0 else 0
    if 32 <= smaller < side:
        fixes.append(f"--input-size {smaller} at batch {cost.batch}")
    if not fixes:
        return "free memory, or use a smaller model"
    return f"pass {' or '.join(fixes)}; --no-preflight runs it anyway"


def verdict(cost: StepCost, phases: list[Phase], eval_batch: int, side: int) -> str:
    """The one line printed before training; a UserError (before anything is written) when the run's
    projected peak memory exceeds PREFLIGHT_MEMORY_MARGIN of what is available."""
    from vpns_deploy.progress import duration_text

    peak = cost.peak_bytes(cost.batch, eval_batch)
    where = "on the GPU" if cost.device.startswith("cuda") else "resident"
    measured = ", ".join(str(b) for b in cost.measured_at)
    if not cost.fits(cost.batch, eval_batch):
        raise UserError(
            f"batch {cost.batch} at {side} px needs about {gib(peak)} {where} on {cost.device} at its peak, "
            f"{gib(peak - cost.base_bytes)} more than the process holds now (projected from training steps "
            f"measured at batch {measured}), but {gib(cost.available_bytes)} is free (at most "
            f"{PREFLIGHT_MEMORY_MARGIN:.0%} of it is planned for)",
            _fixes(cost, eval_batch, side))
    steps = sum(p.steps for p in phases)
    step = cost.train_seconds_per_image * cost.batch
    step_text = f"{step:.1f} s" if step >= 0.1 else f"{step * 1000:.0f} ms"
    return (f"preflight: batch {cost.batch} at {side} px on {cost.device}: one training step about "
            f"{step_text}, peak memory about {gib(peak)} of {gib(cost.available_bytes + cost.base_bytes)} "
            f"(measured at batch {measured}); the run: {steps:,} optimiser steps, about "
            f"{duration_text(run_seconds(cost, phases))}")
