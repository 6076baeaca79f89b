"""A channel budget in measured latency: the MACs reduction whose compacted network runs --speedup
times faster than the dense one on the target runtime (--budget-by latency).

Why measure: MACs predict latency loosely and differently per network, batch and runtime (the same
2.00x MACs ran 1.68x to 2.94x faster on ONNX Runtime across ResNet-18 and MobileNetV3-Large at batch
1 and 16), and channel counts fall on and off the kernels' fast paths. So the channel allocation stays
the method's (importance scores over a MACs budget, channel_budget.py) and only the size of that
budget is searched: a few candidate budgets are compacted, exported and timed against the dense
network (the probe, export/target_runtime.py), until one lands within TOLERANCE of the target.

The search works on log(MACs reduction) -> log(measured speedup), close to a straight line with steps:
the first candidate is the target itself (slope 1), the next ones a secant through the two measured
points nearest the target, and once the target is bracketed, bisection (a secant can jump past a step).
Without a candidate within TOLERANCE, the least pruned one at least as fast as the target ships. Latency depends only on the widths (kept channels per group), so a
candidate whose widths were measured before (this run or the probe's cache) costs nothing.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from torch import nn

TOLERANCE = 0.05  # a measured speedup within 5 % of the target meets it
MAX_CANDIDATES = 5  # compacted, exported and timed at most this many budgets
MIN_SLOPE, MAX_SLOPE = 0.25, 4.0  # a secant outside these is timing noise; clamp it
# The dense graph is timed with every candidate: its median moving by more than this within one search
# means other work shared the machine, and ratios move with it (measured: dense 1.68 -> 2.44 ms over one
# search under another process's load, which read a network later measured at 3.32x as 2.96x)
BUSY_SPREAD = 1.15


@dataclass(frozen=True)
class Measured:
    """One candidate's speedup over the dense network on the target (median ratio, 95 % interval)."""

    speedup: float
    ci95: tuple[float, float]
    dense_ms: float
    ms: float
    cached: bool  # read from the probe's cache, not timed now


class SpeedupProbe(Protocol):
    """Measures a compacted network against the dense one on the target runtime."""

    def measure(self, widths: tuple[int, ...], build: Callable[[], nn.Module], fresh: bool = False) -> Measured:
        """The speedup of `build()` over the dense network; from the cache when `widths` were measured
        before (then `build` is not called), unless `fresh`."""
        ...

    def prompt_cost(self, build: Callable[[], nn.Module], prompt: nn.Module) -> tuple[float, tuple[float, float]]:
        """`build()`'s latency with `prompt` folded in over without it (> 1: slower), and its 95 % interval."""
        ...

    def describe(self) -> dict:
        """What the measurements are of: runtime, batch, precision, machine (for the manifest)."""
        ...

    def forget(self, widths: list[tuple[int, ...]]) -> None:
        """Drop these widths' points from the cache (timed while the machine was busy)."""
        ...

    def dense_ms_before(self) -> float | None:
        """The dense graph's latency as the cache recorded it before this search (None: nothing cached)."""
        ...


@dataclass(frozen=True)
class Candidate:
    macs_ratio: float  # dense MACs / this candidate's MACs, the budget handed to channel_budget
    widths: tuple[int, ...]
    measured: Measured

    def to_dict(self) -> dict:
        return {"macs_ratio": self.macs_ratio, "widths_kept": sum(self.widths), **asdict(self.measured)}


@dataclass
class LatencyBudget:
    """The search's outcome: the budget chosen, every candidate measured, whether the target is met."""

    target: float
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    reachable: float | None = None  # every candidate ran slower than the target: the fastest one's speedup
    probe: dict = field(default_factory=dict)
    dense_ms_cached: float | None = None  # the dense graph's latency on this machine before (the cache)

    @property
    def met(self) -> bool:
        return self.chosen is not None and abs(self.chosen.measured.speedup / self.target - 1) <= TOLERANCE

    def line(self) -> str:
        """What the user reads: the target, what was reached, and what that costs in MACs."""
        c, p = self.chosen, self.probe
        where = f"{p.get('runtime', 'the target')}, batch {p.get('batch', '?')}"
        got = (f"{c.measured.speedup:.2f}x measured [{c.measured.ci95[0]:.2f}, {c.measured.ci95[1]:.2f}] "
               f"at {c.macs_ratio:.2f}x fewer MACs")
        if self.met:
            return f"latency budget: --speedup {self.target:g} on {where}: {got} ({len(self.candidates)} candidates timed)"
        if self.reachable is not None:
            most = max(c.macs_ratio for c in self.candidates)
            return (f"warning: --speedup {self.target:g} is out of reach on {where}: the fastest of "
                    f"{len(self.candidates)} candidates (up to {most:.2f}x fewer MACs) measured {self.reachable:.2f}x; "
                    f"the run continues at that best reachable point, {got} (a lower --speedup keeps more "
                    "channels and accuracy)")
        return (f"warning: --speedup {self.target:g} on {where}: no budget within {TOLERANCE:.0%} after "
                f"{len(self.candidates)} candidates (latency falls in steps as widths cross kernel block sizes); "
                f"shipping the least pruned network at least that fast: {got}")

    def dense_ms_range(self) -> tuple[float, float] | None:
        """The dense graph's fastest and slowest median over the candidates timed now (not cached)."""
        fresh = [c.measured.dense_ms for c in self.candidates if not c.measured.cached]
        return (min(fresh), max(fresh)) if fresh else None

    def busy_line(self) -> str | None:
        """A warning when the dense graph's own latency moved more than BUSY_SPREAD during the search, or
        away from what it took on this machine before (the cache): with one candidate timed, the search
        alone cannot see a machine that was busy all along."""
        r = self.dense_ms_range()
        if r is None:
            return None
        before = self.dense_ms_cached
        lo, hi = min(r[0], before or r[0]), max(r[1], before or r[1])
        if hi <= BUSY_SPREAD * lo:
            return None
        then = f" (it took {before:.3g} ms when this machine measured it before)" if before is not None else ""
        return (f"warning: the dense graph ran between {r[0]:.3g} and {r[1]:.3g} ms while the candidates were timed"
                f"{then}: something else was using this machine, and the speedups measured may be off by as much "
                "(they are not kept in the latency cache); run compress on a quiet machine (report measures the "
                "shipped graph again)")

    def to_dict(self) -> dict:
        return {"target": self.target, "budget_by": "latency", "tolerance": TOLERANCE, "met": self.met,
                "dense_ms_range": self.dense_ms_range(), "dense_ms_cached": self.dense_ms_cached,
                "busy": self.busy_line() is not None,
                "macs_ratio": self.chosen.macs_ratio if self.chosen else None,
                "measured": asdict(self.chosen.measured) if self.chosen else None,
                "reachable": self.reachable, "probe": self.probe,
                "candidates": [c.to_dict() for c in self.candidates]}


Select = Callable[[float], tuple[tuple[int, ...], Callable[[], nn.Module]]]


def _next_ratio(target: float, points: list[Candidate]) -> float:
    """The MACs reduction predicted to meet `target`. Once measured points lie on both sides of it, the
    geometric midpoint of the tightest bracket (latency falls in steps where widths cross a kernel's block
    size, so a secant can jump past a step); before that, slope 1 from one point, else the secant
    through the two measured points nearest the target in log space."""
    below = [c.macs_ratio for c in points if c.measured.speedup < target]
    above = [c.macs_ratio for c in points if c.measured.speedup >= target]
    if below and above and max(below) < min(above):
        return math.sqrt(max(below) * min(above))
    y = math.log(target)
    near = sorted(points, key=lambda c: abs(math.log(c.measured.speedup) - y))
    a = near[0]
    xa, ya = math.log(a.macs_ratio), math.log(a.measured.speedup)
    slope = 1.0
    others = [c for c in near[1:] if abs(math.log(c.macs_ratio) - xa) > 1e-6]
    if others:
        b = others[0]
        slope = (ya - math.log(b.measured.speedup)) / (xa - math.log(b.macs_ratio))
        slope = min(MAX_SLOPE, max(MIN_SLOPE, slope))
    return math.exp(xa + (y - ya) / slope)


def choose(target: float, candidates: list[Candidate]) -> Candidate:
    """Within tolerance: the closest. Else the least pruned candidate that is at least as fast as the
    target (a promise kept, with speed to spare), else the fastest (the best reachable point)."""
    within = [c for c in candidates if abs(c.measured.speedup / target - 1) <= TOLERANCE]
    if within:
        return min(within, key=lambda c: abs(math.log(c.measured.speedup / target)))
    faster = [c for c in candidates if c.measured.speedup >= target]
    if faster:
        return min(faster, key=lambda c: c.macs_ratio)
    return max(candidates, key=lambda c: c.measured.speedup)


def search(target: float, select: Select, probe: SpeedupProbe, max_ratio: float,
           say: Callable[[str], None] = lambda _: None) -> LatencyBudget:
    """Find the MACs reduction (<= max_ratio: every group at its floor) whose compacted network meets
    `target` on the probe's runtime. `select(ratio)` sets the masks at that budget and returns their
    widths and a builder of the compacted network; on return the masks are left at the chosen budget."""
    out = LatencyBudget(target, probe=probe.describe(), dense_ms_cached=probe.dense_ms_before())
    ratio = min(target, max_ratio)
    tried: dict[tuple[int, ...], Candidate] = {}
    while len(out.candidates) < MAX_CANDIDATES:
        widths, build = select(ratio)
        if widths in tried:  # the budget moved less than one block of channels: nothing new to measure
            break
        m = probe.measure(widths, build)
        c = Candidate(ratio, widths, m)
        tried[widths] = c
        out.candidates.append(c)
        say(f"latency budget: {ratio:.2f}x fewer MACs -> {m.speedup:.2f}x measured"
            f"{' (cached)' if m.cached else ''} (target {target:g}x)")
        if abs(m.speedup / target - 1) <= TOLERANCE:
            break
        if m.speedup < target and ratio >= max_ratio * (1 - 1e-6):
            break  # every group at its floor, still too slow
        ratio = min(max_ratio, max(1.0 + 1e-6, _next_ratio(target, out.candidates)))
    out.chosen = choose(target, out.candidates)
    fastest = max(out.candidates, key=lambda c: c.measured.speedup)
    if fastest.measured.speedup < target * (1 - TOLERANCE):
        out.reachable = fastest.measured.speedup
    select(out.chosen.macs_ratio)
    return out
