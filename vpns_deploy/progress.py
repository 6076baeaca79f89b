"""Progress for loops over data: a live rich bar on a terminal; on a pipe or log, plain lines (a phase's
start with its estimate, then one every PLAIN_LINE_SECONDS), so `| tee` shows progress as it happens.

ETAs come from step counts and measured step times: the seconds per step seen so far in the task, or,
before its first step, the preflight's measured seconds per image (Reporter.pace) times the step's images.
"""
from __future__ import annotations

import datetime
import time
from contextlib import contextmanager
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

# Progress and log lines go to stderr; results (tables, paths) to stdout.
log_console = Console(stderr=True)
out_console = Console()

# Without a terminal, a running task prints a line at most this often: enough to see it move in a log,
# few enough lines to read.
PLAIN_LINE_SECONDS = 20.0


def duration_text(seconds: float | None) -> str:
    """h:mm:ss, or '?' when unknown."""
    if seconds is None:
        return "?"
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


class Reporter:
    """Owns one rich Progress for a whole command; `quiet` keeps only the per-epoch lines."""

    def __init__(self, quiet: bool = False, console: Console = log_console) -> None:
        self.console = console
        live = console.is_terminal and not quiet
        self.plain = not console.is_terminal and not quiet  # periodic plain lines instead of a live bar
        # seconds per image by kind ("train": forward + backward + step, "forward"), set from a preflight
        self.pace: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=console,
            transient=True,
            disable=not live,
        )

    def __enter__(self) -> "Reporter":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    @contextmanager
    def task(self, description: str, total: int, images_per_step: int = 0, kind: str = "train",
             announce: bool = False) -> Iterator["TaskHandle"]:
        """A task of `total` steps of `images_per_step` images each (for the estimate before the first
        step). `announce`: without a terminal, say at once that it started and how long it should take
        (phases that print nothing else until they end)."""
        pace = self.pace.get(kind)
        handle = TaskHandle(self, description, total, pace * images_per_step if pace and images_per_step else None)
        handle.task_id = self.progress.add_task(description, total=total, status="", eta=duration_text(handle.eta()))
        if announce and self.plain:
            unit = "steps" if kind == "train" else "batches"
            self.line(f"{description}: {total} {unit}, eta {duration_text(handle.eta())}")
        try:
            yield handle
        finally:
            self.progress.remove_task(handle.task_id)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)  # "[trt]" is text, not a style


class TaskHandle:
    def __init__(self, reporter: Reporter, description: str, total: int, step_estimate: float | None) -> None:
        self._reporter, self._description, self._total = reporter, description, total
        self._estimate = step_estimate
        self._start = self._last_line = time.perf_counter()
        self.done = 0
        self.task_id = 0

    def eta(self) -> float | None:
        """Seconds left: measured seconds per step so far, else the estimate, else None."""
        left = self._total - self.done
        if self.done:
            return (time.perf_counter() - self._start) / self.done * left
        return self._estimate * left if self._estimate is not None else None

    def advance(self, status: str = "") -> None:
        self.done += 1
        eta = duration_text(self.eta())
        self._reporter.progress.update(self.task_id, advance=1, status=status, eta=eta)
        now = time.perf_counter()
        if self._reporter.plain and now - self._last_line >= PLAIN_LINE_SECONDS and self.done < self._total:
            self._last_line = now
            parts = [self._description, f"{self.done}/{self._total}", status,
                     f"{duration_text(now - self._start)} elapsed, eta {eta}"]
            self._reporter.line("  ".join(p for p in parts if p))
