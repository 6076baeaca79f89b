"""What `compress` does differently under torchrun: one checkpoint for every rank, one writer, one display."""
from __future__ import annotations

from rich.console import Console

from pipelines.checkpoint import FileCheckpoint
from vpns_deploy.distributed import DistContext, broadcast_state
from vpns_deploy.progress import Reporter


class RankCheckpoint:
    """Rank 0 reads and writes the file; every rank resumes from rank 0's copy, sent over the process
    group (so ranks on other nodes need no shared file system, and read it with weights_only)."""

    def __init__(self, inner: FileCheckpoint, ctx: DistContext) -> None:
        self.inner, self.ctx = inner, ctx

    def load(self) -> dict | None:
        return broadcast_state(self.inner.load() if self.ctx.is_main else None, self.ctx)

    def save(self, state: dict) -> None:
        if self.ctx.is_main:
            self.inner.save(state)


def silent_reporter() -> Reporter:
    """Ranks other than 0 print nothing (their errors still reach stderr through the CLI)."""
    return Reporter(quiet=True, console=Console(stderr=True, quiet=True))


def distributed_record(ctx: DistContext, checksums: dict[str, list[str]]) -> dict:
    """The manifest's `distributed` entry: the job's shape and every rank's state checksum per stage."""
    return {"world_size": ctx.world, "backend": ctx.backend,
            "rank_checksums": checksums,
            "ranks_identical": all(len(set(v)) == 1 for v in checksums.values())}
