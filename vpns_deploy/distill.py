"""Knowledge distillation for stage 2: the masked network learns from the dense network's logits.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)
(Hinton et al. 2015; the T^2 keeps the soft term's gradient scale independent of T). The teacher is the
dense network as it entered compress (with --head map, its logits go through the same frozen label
map), in eval mode, without the prompt: it is what the user already has. Its forward passes cost
wall-clock time but no optimiser steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vpns_deploy.prompts import PromptedNet


class Distiller:
    """The stage-2 loss with a frozen teacher."""

    def __init__(self, teacher: PromptedNet, temperature: float, alpha: float) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x, prompted=False)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                        reduction="batchmean", log_target=True) * t * t
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(student_logits, y)
