"""Pick the torch device: CUDA when present, CPU otherwise."""
from __future__ import annotations

import torch

from vpns_deploy.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}", "pass --device auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible", "pass --device cpu or auto")
    return torch.device(name)
