"""Progress for loops over data: a live rich bar on a terminal, one line per epoch elsewhere (CI logs)."""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and log lines go to stderr; results (tables, paths) to stdout.
log_console = Console(stderr=True)
out_console = Console()


class Reporter:
    """Owns one rich Progress for a whole command; `quiet` keeps only the per-epoch lines."""

    def __init__(self, quiet: bool = False, console: Console = log_console) -> None:
        self.console = console
        live = console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
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
    def task(self, description: str, total: int) -> Iterator["TaskHandle"]:
        task_id = self.progress.add_task(description, total=total, status="")
        try:
            yield TaskHandle(self.progress, task_id)
        finally:
            self.progress.remove_task(task_id)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)  # "[trt]" is text, not a style


class TaskHandle:
    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, status: str = "") -> None:
        self._progress.update(self._id, advance=1, status=status)
