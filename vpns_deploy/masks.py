"""Learned weight masks (shared/docs/VPNS.md §2): scored conv/linear layers and a global top-k.

Every nn.Conv2d and nn.Linear is prunable, the stem and the classifier included (as in the
reference); BatchNorm and biases never are. A layer's effective weight is W * mask. While its scores
train, the mask carries a straight-through gradient, dL/ds = sign(s) * (dL/dW_eff * W), so pruned
weights can come back.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)


class _MaskedWeight:
    weight: nn.Parameter
    scores: nn.Parameter
    mask: torch.Tensor

    def _add_mask_state(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight))  # type: ignore[attr-defined]
        self.scores = nn.Parameter(torch.zeros_like(self.weight), requires_grad=False)

    def masked_weight(self) -> torch.Tensor:
        m = self.mask
        if self.scores.requires_grad:
            a = self.scores.abs()
            m = m + (a - a.detach())  # value: the mask; gradient: straight through to |s|
        return self.weight * m


class MaskedConv2d(_MaskedWeight, nn.Conv2d):
    @classmethod
    def wrap(cls, conv: nn.Conv2d) -> "MaskedConv2d":
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        new.weight, new.bias = conv.weight, conv.bias
        new._add_mask_state()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def plain(self) -> nn.Conv2d:
        out = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, self.bias is not None, self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        _copy_masked(self, out)
        return out


class MaskedLinear(_MaskedWeight, nn.Linear):
    @classmethod
    def wrap(cls, lin: nn.Linear) -> "MaskedLinear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None,
                  device=lin.weight.device, dtype=lin.weight.dtype)
        new.weight, new.bias = lin.weight, lin.bias
        new._add_mask_state()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def plain(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        _copy_masked(self, out)
        return out


MaskedLayer = MaskedConv2d | MaskedLinear


def _copy_masked(src: MaskedLayer, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight * src.mask)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@dataclass
class LayerStats:
    name: str
    total: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total


class MaskSet:
    """The scored layers of one network and the global top-k that sets their masks."""

    def __init__(self, layers: list[tuple[str, MaskedLayer]]) -> None:
        if not layers:
            raise ValueError("the model has no Conv2d or Linear layer to prune")
        self.layers = layers

    @classmethod
    def attach(cls, net: nn.Module) -> "MaskSet":
        """Swap every Conv2d/Linear of net, in place, for its masked twin (same parameter names)."""
        targets = [(n, m) for n, m in net.named_modules() if type(m) in PRUNABLE]
        layers: list[tuple[str, MaskedLayer]] = []
        for name, module in targets:
            masked = (MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear).wrap(module)
            _set_submodule(net, name, masked)
            layers.append((name, masked))
        return cls(layers)

    @property
    def total(self) -> int:
        return sum(m.weight.numel() for _, m in self.layers)

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for _, m in self.layers]

    @torch.no_grad()
    def init_scores_scaled(self) -> None:
        """HYDRA's scaled init: s = sqrt(6 / fan_in) * W / max|W|, per layer."""
        for _, m in self.layers:
            w = m.weight
            fan_in = w[0].numel()
            m.scores.copy_(math.sqrt(6.0 / fan_in) * w / w.abs().max().clamp_min(1e-12))

    @torch.no_grad()
    def select_global_topk(self, importance: list[torch.Tensor], sparsity: float) -> None:
        """Keep exactly N - floor(sparsity * N) weights with the largest importance, over all layers."""
        flat = torch.cat([t.detach().abs().flatten() for t in importance])
        keep = flat.numel() - math.floor(sparsity * flat.numel())
        chosen = torch.zeros_like(flat)
        chosen[torch.topk(flat, keep, sorted=False).indices] = 1
        offset = 0
        for _, m in self.layers:
            n = m.mask.numel()
            m.mask.copy_(chosen[offset : offset + n].view_as(m.mask))
            offset += n

    def update_from_scores(self, sparsity: float) -> None:
        self.select_global_topk(self.scores(), sparsity)

    def update_from_magnitude(self, sparsity: float) -> None:
        self.select_global_topk([m.weight for _, m in self.layers], sparsity)

    def set_scores_trainable(self, flag: bool) -> None:
        for s in self.scores():
            s.requires_grad_(flag)

    @torch.no_grad()
    def zero_pruned_weights(self) -> None:
        """Make W outside the mask exactly zero; with a fixed mask it then stays zero under SGD."""
        for _, m in self.layers:
            m.weight.mul_(m.mask)

    def stats(self) -> list[LayerStats]:
        return [LayerStats(n, m.mask.numel(), int(m.mask.sum().item())) for n, m in self.layers]

    def sparsity(self) -> float:
        st = self.stats()
        return 1.0 - sum(s.kept for s in st) / sum(s.total for s in st)

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m.mask.detach().to("cpu", torch.bool).clone() for n, m in self.layers}

    def baked(self, net: nn.Module) -> nn.Module:
        """A copy of net with plain layers holding W * mask: loads without this module."""
        out = copy.deepcopy(net)
        for name, _ in self.layers:
            _set_submodule(out, name, out.get_submodule(name).plain())
        return out
