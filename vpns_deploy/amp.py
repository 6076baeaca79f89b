"""Mixed precision for training steps (--amp bf16|fp16|off|auto).

Only the network's forward runs under autocast: the prompt is added, and masks (W * mask), scores,
their top-k and every optimiser step stay in fp32, since parameters, masks and the mask
re-selection all live outside autocast's op list or outside the forward. The network's first layer
runs in fp32 too (`fp32_first_layer`): the prompt is a small addition to the image (|P| about 1e-3 to
6e-3 of the [0, 1] range at the budgets measured here) that bf16's 8-bit mantissa would round away
at that layer's input, normalised values near 1 being resolved only to 2^-8. fp16 needs loss scaling
(GradScaler) against underflowing gradients; bf16 has fp32's exponent range and needs none.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from vpns_deploy.config import AMP_CHOICES, AMP_HELP  # noqa: F401 - AMP_HELP re-exported
from vpns_deploy.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(name: str, device: torch.device) -> str:
    """The precision a run trains in: 'bf16', 'fp16' or 'off' (auto decided by the device)."""
    if name not in AMP_CHOICES:
        raise UserError(f"unknown --amp {name!r}", f"pass one of {', '.join(AMP_CHOICES)}")
    if name != "auto":
        return name
    if device.type != "cuda":
        return "off"  # CPU autocast is slower than fp32 on CPUs without bf16/fp16 units (this one: AVX2 only)
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class Amp:
    """autocast + (fp16) GradScaler for one run; `off` is the plain fp32 step, unchanged."""

    precision: str
    device_type: str

    def __post_init__(self) -> None:
        fp16 = self.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=fp16) if fp16 else None

    @property
    def enabled(self) -> bool:
        return self.precision != "off"

    @contextlib.contextmanager
    def autocast(self, model: nn.Module | None = None) -> Iterator[None]:
        """autocast for a forward of `model`, whose first layer stays fp32 (see the module docstring)."""
        if not self.enabled:
            yield
            return
        with fp32_first_layer(model, self.device_type), torch.autocast(self.device_type,
                                                                      dtype=DTYPES[self.precision]):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizers: list[Optimizer]) -> None:
        """Step every optimiser (the scaler skips them all on inf/NaN gradients and lowers its scale)."""
        if self.scaler is None:
            for opt in optimizers:
                opt.step()
            return
        for opt in optimizers:
            if any(p.grad is not None for g in opt.param_groups for p in g["params"]):
                self.scaler.step(opt)  # an optimiser this pass left without gradients (the prompt's in
                # the plain pass) is skipped, as its fp32 step would do nothing; the scaler refuses it
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first convolution or linear layer in module order: the one the (prompted) image reaches."""
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


@contextlib.contextmanager
def fp32_first_layer(model: nn.Module | None, device_type: str) -> Iterator[None]:
    """Inside autocast, run `model`'s first layer with autocast off on fp32 input (hooks, removed on exit)."""
    layer = first_layer(model) if model is not None else None
    if layer is None:
        yield
        return
    contexts: list[torch.autocast] = []

    def before(module: nn.Module, args: tuple) -> tuple:
        ctx = torch.autocast(device_type, enabled=False)
        ctx.__enter__()
        contexts.append(ctx)
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def after(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        contexts.pop().__exit__(None, None, None)

    handles = [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while contexts:  # a forward that raised inside the layer
            contexts.pop().__exit__(None, None, None)


def setup_cuda_speed(device: torch.device) -> None:
    """cuDNN picks the fastest conv algorithm per shape (shapes are fixed within a run)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
