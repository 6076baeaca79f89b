"""The method registry: how each method's scores start, whether it uses the prompt, whether its mask
is fixed before training, and which stages it runs (built over trainer.run_stage by a PlanBuilder).

config.METHODS is this registry's names. A new method is one class here (registered with @_method);
it talks to masks only through sparsity.granularity.Granularity, so it runs on every granularity
unless `modes` says otherwise.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from vpns_deploy.errors import UserError
from vpns_deploy.sparsity.registry import Registry

if TYPE_CHECKING:
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.sparsity.granularity import Granularity
    from vpns_deploy.trainer import StagePlan


class PlanBuilder(Protocol):
    """Builds the two kinds of stage over one model, mask set and config (compress.py supplies it)."""

    def mask_stage(self) -> StagePlan:
        """Stage 1: scores (and the prompt, when used) learn; weights frozen."""
        ...

    def tune_stage(self, epochs: int) -> StagePlan:
        """Stage 2: weights (and the prompt, when used) learn under the fixed mask."""
        ...


class Method(ABC):
    """One compression method; subclasses set the class attributes and `start`."""

    name: ClassVar[str]
    description: ClassVar[str]  # what a run of it does, for --help and the manifest (method.description)
    uses_prompt: ClassVar[bool] = False  # a visual prompt learns beside the masks (two passes per batch)
    fixed_mask: ClassVar[bool] = False  # the mask is set before training: no mask-finding stage
    modes: ClassVar[tuple[str, ...] | None] = None  # granularities (sparsity.modes names) it runs on; None: all
    mode_problem: ClassVar[str] = ""  # why `modes` refuses another granularity, and the fix
    mode_fix: ClassVar[str] = ""

    @property
    def passes_per_batch(self) -> int:
        """Optimiser steps per batch: a prompted and an un-prompted pass with the prompt, else one."""
        return 2 if self.uses_prompt else 1

    def tune_epochs(self, cfg: CompressConfig) -> int:
        """A fixed mask has no mask search, so the whole epoch budget goes to fine-tuning; so does a mask
        search cut to one batch (CompressConfig.stage1_one_batch, channel mode's default)."""
        whole = self.fixed_mask or cfg.stage1_one_batch
        return cfg.epochs_mask + cfg.epochs_tune if whole else cfg.epochs_tune

    def check(self, mode: str, epochs_mask: int) -> None:
        """A one-line error when the run cannot work: a granularity it does not take, no stage 1."""
        if self.modes is not None and mode not in self.modes:
            raise UserError(f"--method {self.name} {self.mode_problem}", self.mode_fix)
        if not self.fixed_mask and epochs_mask == 0:
            raise UserError(f"{self.name} needs at least one mask-finding epoch",
                            "pass --epochs-mask >= 1 (or --method magnitude, which needs none)")

    @abstractmethod
    def start(self, masks: Granularity) -> None:
        """The first mask (and scores): lifecycle step 2 of sparsity.granularity."""

    def stage_plans(self, plans: PlanBuilder, cfg: CompressConfig) -> list[Callable[[], StagePlan]]:
        """The stages in order, each made when it starts (making one sets what trains in it)."""
        stages: list[Callable[[], StagePlan]] = [] if self.fixed_mask else [plans.mask_stage]
        tune = self.tune_epochs(cfg)
        if tune > 0:
            stages.append(lambda: plans.tune_stage(tune))
        return stages


METHOD_REGISTRY: Registry[Method] = Registry("method")


def _method(cls: type[Method]) -> type[Method]:
    """Register one instance of cls under cls.name."""
    METHOD_REGISTRY.register(cls.name)(cls())
    return cls


class LearnedScores(Method):
    """Scores start at the granularity's init and learn in stage 1; weights tune in stage 2."""

    def start(self, masks: Granularity) -> None:
        masks.init_scores()
        masks.update_from_scores()


@_method
class VPNs(LearnedScores):
    """VPNs (shared/docs/VPNS.md): the scores learn together with a visual prompt."""

    name, uses_prompt = "vpns", True
    description = "learned weight scores and a visual prompt, two passes per batch (VPNs)."


@_method
class Hydra(LearnedScores):
    """VPNs without the prompt and its un-augmented pass: the control that isolates the prompt. Not HYDRA as
    published (inspire-group/hydra: SGD at lr 0.1 on the scores, a top-k per layer)."""

    name = "hydra"
    description = ("VPNs without the prompt and its un-augmented pass (Adam on the scores, one global "
                   "top-k); not HYDRA as published (SGD at lr 0.1, a top-k per layer).")


@_method
class Magnitude(Method):
    """The largest weights (channels: by their group's L1 norm) kept, then fine-tuning."""

    name, fixed_mask = "magnitude", True
    description = "global |W| top-k (channels: group L1 norm), then fine-tuning."

    def start(self, masks: Granularity) -> None:
        masks.update_from_magnitude()


@_method
class TorchPruningGroupNorm(Method):
    """Torch-Pruning's iterative pruner (BasePruner + GroupMagnitudeImportance(p=2), global) run to the
    budget, then fine-tuning."""

    name, fixed_mask, modes = "tp-groupnorm", True, ("channel",)
    description = "Torch-Pruning's group-norm pruner to the budget, then fine-tuning (--mode channel)."
    mode_problem = "prunes whole channels (Torch-Pruning's group-norm pruner)"
    mode_fix = "pass --mode channel, or --method magnitude for unstructured/N:M"

    def start(self, masks: Granularity) -> None:
        from vpns_deploy.sparsity.granularity import GroupNormPrunable  # torch: only once a run starts

        if not isinstance(masks, GroupNormPrunable):
            raise UserError(f"--method {self.name} {self.mode_problem}", self.mode_fix)
        masks.update_from_group_norm()


def get_method(name: str) -> Method:
    """The registered method, or a one-line error naming the choices."""
    return METHOD_REGISTRY.get(name)
