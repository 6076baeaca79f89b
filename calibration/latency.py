"""Latency of runtimes, bounded in time, with a confidence interval, and speedups that say when
they are noise.

Graphs that are compared (dense vs compressed) are timed interleaved, so a change in machine load
(other processes on a shared 2-core machine) lands on both and not on whichever happened to run
second: timed one after the other, the same demo's batch-1 "speedup" read 1.28x and then 0.65x.
They take turns in blocks (the order reversed every round): each graph runs back to back for about
BLOCK_MS, after one untimed call that brings its weights back into the caches, as a deployed model
serving one request after another does. Alternating single calls instead timed every call on caches
the other graph had just filled: on EfficientNet-Lite0 at batch 1 (ONNX Runtime, 2 threads) that
read a 3.5x faster compressed graph as 2.4x to 2.9x, differently each time; blocks read 3.51x to
3.62x over five repeats. Every graph gets `budget_s` seconds (split over the batch sizes); a call
slower than the budget still runs MIN_TIMED times.

Intervals resample whole rounds, not single calls: calls in one turn share the machine's state, so
treating them as independent draws narrows the interval past what a repeat shows; and a speedup takes
the same rounds of both graphs, which ran side by side, so load that hits both cancels as it does in
the median ratio itself.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from calibration.runtime import Runtime
from vpns_deploy.errors import UserError

LATENCY_BATCHES = (1, 64)  # what every report and benchmark times: one image, and a serving batch
DEFAULT_BUDGET_S = 30.0  # per graph, over all its batch sizes (`report --latency-budget`)
MIN_RUNS = 20  # timed calls wanted before the budget may stop a graph
MIN_TIMED = 3  # timed calls every graph gets, budget or not (a median and an interval need a few)
MIN_ROUNDS = 10  # rounds before the budget may stop graphs that all take multi-call turns (the interval
# resamples rounds: one round has no spread); at under 13 ms a call, ten rounds are well under a second
MAX_RUNS = 1000  # timed calls that stop a fast graph before its budget: a tight interval, a second or less
BLOCK_MS = 20.0  # a graph's turn: back-to-back calls for about this long
MAX_BLOCK = 50  # calls in one turn at most (a sub-0.4-ms graph)
BOOTSTRAP = 2000
CONFIDENCE = 0.95


def check_budget(budget_s: float) -> float:
    """A latency budget is a positive, finite number of seconds (one-line error otherwise)."""
    if not 0 < budget_s < float("inf"):
        raise UserError(f"--latency-budget (recipes: report.latency_budget) must be > 0 seconds, got {budget_s}",
                        "e.g. --latency-budget 30")
    return budget_s


@dataclass(frozen=True)
class Latency:
    batch: int
    runs: int
    warmup: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    ci95_ms: tuple[float, float]  # bootstrap interval of the median, rounds resampled
    seconds: float  # wall time spent on this graph at this batch, warm-up included
    budget_stopped: bool  # fewer than MIN_RUNS timed calls because the budget ran out
    times_ms: tuple[float, ...] = field(default=(), repr=False)  # in the order timed
    block: int = 1  # timed calls per turn: times_ms holds runs / block rounds of `block` calls each

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch

    def to_dict(self) -> dict:
        out = asdict(self) | {"per_image_ms": self.per_image_ms, "ci95_ms": list(self.ci95_ms)}
        out.pop("times_ms")
        return out


def _interval(resampled: np.ndarray) -> tuple[float, float]:
    """The percentile bootstrap interval from a statistic's values over the resamples."""
    lo, hi = np.percentile(resampled, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(lo), float(hi)


def _rounds(times_ms, block: int) -> np.ndarray:
    """Timed calls as rounds x calls per turn (a ragged tail, which measure_interleaved never leaves,
    is dropped)."""
    t = np.asarray(times_ms)
    block = max(1, block)
    return t[: len(t) // block * block].reshape(-1, block)


def _round_draws(n: int, rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP resamples of n round indices, with replacement."""
    return rng.integers(0, n, size=(BOOTSTRAP, n))


def _medians(rounds: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The median of every resample's calls (the drawn rounds, all their calls)."""
    return np.median(rounds[draws].reshape(len(draws), -1), axis=1)


def _latency(batch: int, times: list[float], warmup: int, seconds: float, block: int = 1) -> Latency:
    t = np.asarray(times)
    rounds = _rounds(t, block)
    ci = _interval(_medians(rounds, _round_draws(len(rounds), np.random.default_rng(0))))
    return Latency(batch, len(t), warmup, float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                   float(t.min()), ci, seconds, len(t) < MIN_RUNS, tuple(float(x) for x in t), block)


def measure_interleaved(runtimes: dict[str, Runtime], batches: dict[str, np.ndarray], budget_s: float,
                        tick: Callable[[str], None] | None = None) -> dict[str, Latency]:
    """Each runtime's latency on its batch, their turns interleaved (block_size calls each, after one
    untimed call); `budget_s` seconds per runtime.

    Stops when every runtime has MAX_RUNS timed calls, or when the budget is spent and each has at
    least MIN_TIMED (and MIN_ROUNDS rounds where every turn is several calls). `tick(status)` is called
    once per timed call (progress)."""
    timers = {name: rt.timer(batches[name]) for name, rt in runtimes.items()}
    start = time.perf_counter()
    warm = 0
    last = {name: 0.0 for name in timers}
    rounds = max(rt.warmup for rt in runtimes.values())  # fewer where they would eat a tenth of the budget
    while warm < rounds and (warm == 0 or time.perf_counter() - start < 0.1 * budget_s * len(timers)):
        for name, once in timers.items():
            last[name] = once()
        warm += 1
    blocks = {name: block_size(ms) for name, ms in last.items()}
    times: dict[str, list[float]] = {name: [] for name in timers}
    deadline = start + budget_s * len(timers)
    order = list(timers)
    n, rounds = 0, 0
    min_rounds = MIN_ROUNDS if min(blocks.values()) > 1 else MIN_TIMED
    while True:
        for name in order:  # the order flips every round: neither graph always runs right after the other
            once = timers[name]
            if blocks[name] > 1:
                once()  # the caches the other graph filled are this graph's again
            times[name].extend(once() for _ in range(blocks[name]))
        order.reverse()
        rounds += 1
        before, n = n, min(len(t) for t in times.values())
        for _ in range(n - before if tick else 0):  # one tick per timed call: MAX_RUNS ticks fill a bar
            tick(f"{n} timed calls each")
        if n >= MAX_RUNS or (n >= MIN_TIMED and rounds >= min_rounds and time.perf_counter() >= deadline):
            break
    seconds = (time.perf_counter() - start) / len(timers)
    return {name: _latency(int(batches[name].shape[0]), t, warm, seconds, blocks[name]) for name, t in times.items()}


def block_size(call_ms: float) -> int:
    """Timed calls in one turn: about BLOCK_MS of them, at least one, at most MAX_BLOCK. A graph slower
    than BLOCK_MS takes single-call turns without the untimed call (its caches matter little)."""
    return max(1, min(MAX_BLOCK, round(BLOCK_MS / max(call_ms, 1e-3))))


def tile_batch(images: np.ndarray, n: int) -> np.ndarray:
    """n images (the sample repeated as needed), contiguous: a timing input of any batch size."""
    reps = -(-n // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:n])


def latency_by_batch(runtimes: dict[str, Runtime], sample: np.ndarray, budget_s: float = DEFAULT_BUDGET_S,
                     batches: tuple[int, ...] = LATENCY_BATCHES, tick: Callable[[str], None] | None = None,
                     samples: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Latency]]:
    """name -> batch (as a string: the JSON layout) -> Latency; the budget is split over the batches.
    `samples`: a runtime's own input where it takes another than `sample` (a float network-only graph)."""
    check_budget(budget_s)
    inputs = {name: (samples or {}).get(name, sample) for name in runtimes}
    out: dict[str, dict[str, Latency]] = {name: {} for name in runtimes}
    for b in batches:
        tiled = {name: tile_batch(x, b) for name, x in inputs.items()}
        for name, lat in measure_interleaved(runtimes, tiled, budget_s / len(batches), tick).items():
            out[name][str(b)] = lat
    return out


@dataclass(frozen=True)
class Speedup:
    """reference / candidate median latency, with a bootstrap interval over the rounds both graphs took."""

    speedup: float
    ci95: tuple[float, float]

    @property
    def within_noise(self) -> bool:
        """The interval holds 1.0: this measurement cannot tell the two graphs apart."""
        return self.ci95[0] <= 1.0 <= self.ci95[1]

    def to_dict(self) -> dict:
        return {"speedup": self.speedup, "ci95": list(self.ci95), "within_noise": self.within_noise}


def speedup(reference: Latency, candidate: Latency) -> Speedup:
    """Timed in one interleaved measurement (the same number of rounds), both graphs' resamples draw
    the same rounds; otherwise each draws its own."""
    rng = np.random.default_rng(0)
    ref, cand = _rounds(reference.times_ms, reference.block), _rounds(candidate.times_ms, candidate.block)
    draws = _round_draws(len(ref), rng)
    other = draws if len(cand) == len(ref) else _round_draws(len(cand), rng)
    lo, hi = _interval(_medians(ref, draws) / _medians(cand, other))
    return Speedup(reference.median_ms / candidate.median_ms, (lo, hi))
