"""The granularity registry, keyed by mode: what `--mode` may say and which mask set serves it.

An entry names its mask-set class as "module:Class" and imports it on first use, so that config.py can
parse `--mode` without torch_pruning (seconds to import) while one table stays the only list of modes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpns_deploy.errors import UserError
from vpns_deploy.sparsity.registry import Registry

if TYPE_CHECKING:
    from vpns_deploy.sparsity.granularity import Granularity

Pattern = tuple[int, int]


@dataclass(frozen=True)
class ModeSpec:
    """One granularity: its registry name, the class that implements it, how `--mode` spells it."""

    name: str
    granularity: str  # "module:Class", a vpns_deploy.sparsity.granularity.Granularity
    help: str  # how --mode spells it, for help and errors
    example: str  # one --mode value that selects it (tests run every granularity through it)

    def parse(self, mode: str) -> tuple[bool, Pattern | None]:
        """(whether `mode` names this granularity, its N:M pattern or None)."""
        return mode == self.name, None

    def resolve(self) -> type[Granularity]:
        module, _, cls = self.granularity.partition(":")
        return getattr(importlib.import_module(module), cls)


class NMSpec(ModeSpec):
    """N:M: written "N:M" (e.g. 2:4) with 0 < N < M; anything else N:M-shaped is a one-line error."""

    def parse(self, mode: str) -> tuple[bool, Pattern | None]:
        n_text, sep, m_text = mode.partition(":")
        if not (sep and n_text.isdigit() and m_text.isdigit()):
            return False, None
        n, m = int(n_text), int(m_text)
        if 0 < n < m:
            return True, (n, m)
        raise UserError(f"unknown mode {mode!r}: N:M keeps N of every M consecutive weights, so N must be at least 1 "
                        f"and below M ({'N = 0 would keep nothing' if n == 0 else 'N >= M would prune nothing'})",
                        "pass e.g. --mode 2:4")


MODES: Registry[ModeSpec] = Registry("mode")
for _spec in (
    ModeSpec("unstructured", "vpns_deploy.masks:MaskSet", "unstructured", "unstructured"),
    ModeSpec("channel", "vpns_deploy.channels:ChannelMaskSet", "channel", "channel"),
    NMSpec("nm", "vpns_deploy.masks:MaskSet", "N:M such as 2:4", "2:4"),
):
    MODES.register(_spec.name)(_spec)

MODES_HELP = ", ".join(s.help for s in list(MODES)[:-1]) + f", or {list(MODES)[-1].help}"


def parse_mode(mode: str) -> tuple[str, Pattern | None]:
    """(granularity name, (N, M) or None); a one-line error for anything no granularity takes."""
    for spec in MODES:
        named, pattern = spec.parse(mode)
        if named:
            return spec.name, pattern
    raise UserError(f"unknown mode {mode!r}", f"pass --mode {MODES_HELP} (N < M)")


def granularity_for(mode: str) -> type[Granularity]:
    """The mask-set class that serves `mode` (imported now)."""
    return MODES.get(parse_mode(mode)[0]).resolve()
