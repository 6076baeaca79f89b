"""Learning-rate schedules, stepped once per epoch as in the reference (shared/docs/VPNS.md §1).

Per-epoch, not per-iteration: stepping every batch measured worse at the one- and two-epoch stages
a CPU budget allows, in all four comparisons (ResNet-20 HYDRA at 90 %: 79.63 vs 77.67; ResNet-56
channel Torch-Pruning 2 epochs: 77.69 vs 75.63, 4 epochs: 81.05 vs 80.32; VPNs channel 70.81 vs
62.87): annealing to zero inside a short stage costs more than it gives. Milestones never fall
before the end of the first epoch: the stage-1 prompt multistep (x0.1 at 50 % and 72 % of the stage)
would otherwise put both at epoch 0 in a one-epoch stage and train the prompt at 1e-6 throughout.
"""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR

SCHEDULE_STEP = "per-epoch, milestones >= 1"  # recorded in benchmark budgets
PROMPT_MILESTONES = (0.5, 0.72)  # stage-1 prompt schedule, as fractions of the stage (VPNS.md §1)


def cosine(opt: Optimizer, epochs: int) -> LRScheduler:
    """Cosine over the stage's epochs (stepped at each epoch's end)."""
    return CosineAnnealingLR(opt, T_max=max(1, epochs))


def multistep(opt: Optimizer, epochs: int, fractions: tuple[float, ...] = PROMPT_MILESTONES,
              gamma: float = 0.1) -> LRScheduler:
    """x gamma at each fraction of the stage, never before the first epoch has run."""
    return MultiStepLR(opt, milestones=sorted({max(1, int(f * epochs)) for f in fractions}), gamma=gamma)
