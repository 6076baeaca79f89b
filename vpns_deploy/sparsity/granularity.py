"""What every mask set (one network's masks at one granularity) does, in the order compress calls it.

The lifecycle follows torch.ao.pruning's prepare -> update_mask -> squash_mask -> convert:

1. prepare      `from_config(net, cfg, example)`: attach masks to net in place (a parametrization of
                each weight, or hooks on the producers of each channel group); every mask starts at ones.
2. init scores  `init_scores()` (methods that learn scores), or a fixed importance instead:
                `update_from_magnitude()`.
3. update       `update_from_scores()` after every optimiser step of the mask-finding stage, while
                `set_scores_trainable(True)` lets the scores learn (straight-through gradient).
4. freeze       `freeze()`: scores stop, pruned weights become exactly zero; the mask is fixed.
5. compact      `baked(net)`: a copy of net without masking code (W * mask, or channels removed);
                `masks()`: what the run directory keeps.

Granularities are found by mode in `sparsity.modes.MODES`; methods only talk to this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from vpns_deploy.config import CompressConfig, OptimConfig


@dataclass
class LayerStats:
    """One layer's kept count: weights (unstructured, N:M) or output channels (channel)."""

    name: str
    total: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total


class Granularity(ABC):
    """One network's scores and masks at one granularity; see the module docstring for the order."""

    # -- 1. prepare ---------------------------------------------------------------------------
    @staticmethod
    def prepare_network(net: nn.Module) -> None:
        """Rewrite net, in place, before anything copies it, where this granularity needs to (e.g.
        parameter-free shortcuts as layers it can see). Most need nothing."""

    @classmethod
    @abstractmethod
    def from_config(cls, net: nn.Module, cfg: CompressConfig, example: torch.Tensor) -> Granularity:
        """Attach masks to net (already on its device) for cfg, in place; `example`: one input."""

    # -- 2. init scores -------------------------------------------------------------------------
    @abstractmethod
    def scores(self) -> list[nn.Parameter]:
        """The learnable scores, one tensor per mask."""

    @abstractmethod
    def init_scores(self) -> None:
        """Give the scores their starting values (they then decide the first mask)."""

    def score_lr(self, optim: OptimConfig, auto: float) -> float:
        """The scores' stage-1 learning rate: the one given, else `auto` (config.SCORE_LR_RULE)."""
        return optim.lr_scores if optim.lr_scores is not None else auto

    # -- 3. update ------------------------------------------------------------------------------
    @abstractmethod
    def update_from_scores(self, sparsity: float | None = None) -> None:
        """Set the masks from |scores| at the budget (a new sparsity target if given)."""

    @abstractmethod
    def update_from_magnitude(self, sparsity: float | None = None) -> None:
        """Set the masks from the weights' magnitude instead of scores (no score ever learns)."""

    def set_scores_trainable(self, flag: bool) -> None:
        for s in self.scores():
            s.requires_grad_(flag)

    # -- 4. freeze ------------------------------------------------------------------------------
    @abstractmethod
    def zero_pruned_weights(self) -> None:
        """Make what the mask removes exactly zero, so SGD on the weights keeps it removed."""

    def freeze(self) -> None:
        """Fix the mask: scores stop learning, pruned weights are zero from here on."""
        self.set_scores_trainable(False)
        self.zero_pruned_weights()

    # -- 5. compact / export ----------------------------------------------------------------------
    @abstractmethod
    def baked(self, net: nn.Module) -> nn.Module:
        """A copy of net that loads and exports without this module (masks applied or compacted)."""

    @abstractmethod
    def masks(self) -> dict[str, torch.Tensor]:
        """Every mask as a CPU bool tensor, keyed by layer (or group root): the run's masks.pt."""

    # -- what it reports ------------------------------------------------------------------------
    @property
    @abstractmethod
    def total(self) -> int:
        """How many prunable units (weights or group channels) there are."""

    @abstractmethod
    def sparsity(self) -> float:
        """Removed fraction of the prunable units."""

    @abstractmethod
    def stats(self) -> list[LayerStats]:
        """Per layer: units kept of total."""

    def notes(self) -> list[str]:
        """What the user should hear before training (refused groups, an unreachable target)."""
        return []

    # -- the manifest's record ------------------------------------------------------------------
    @abstractmethod
    def prunable(self) -> str:
        """What this granularity may remove, in words (the manifest's method.prunable)."""

    def structure_facts(self, macs_reduction: float) -> dict:  # noqa: ARG002 - used by granularities that shrink MACs
        """This granularity's own facts for the manifest's structure record (groups, pattern, exempt
        layers, the measured MACs reduction where it is a goal); none by default."""
        return {}

    # -- resume ---------------------------------------------------------------------------------
    def mask_state(self) -> dict[str, torch.Tensor]:
        """State a checkpoint needs beyond the network's own state_dict (which already holds
        parametrized masks and scores); empty when there is none."""
        return {}

    def load_mask_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what mask_state() returned."""


@runtime_checkable
class GroupNormPrunable(Protocol):
    """A granularity that can take Torch-Pruning's iterative group-norm mask (--method tp-groupnorm)."""

    def update_from_group_norm(self) -> None: ...
