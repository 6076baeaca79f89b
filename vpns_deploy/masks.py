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


def nm_exemption(module: nn.Module, m: int) -> str | None:
    """Why a layer cannot take an N:M pattern along its input channels, or None if it can."""
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        return "grouped/depthwise conv"
    fan = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
    if fan % m:
        return f"{fan} input channels, not a multiple of {m}"
    return None


@torch.no_grad()
def nm_select(importance: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest of every m consecutive input-channel entries (per output and position)."""
    imp = importance.detach().abs()
    x = imp.permute(0, 2, 3, 1) if imp.dim() == 4 else imp  # input channels last
    rows = x.reshape(-1, m)
    keep = torch.zeros_like(rows)
    keep.scatter_(1, torch.topk(rows, n, dim=1).indices, 1.0)
    keep = keep.view(x.shape)
    return keep.permute(0, 3, 1, 2) if imp.dim() == 4 else keep


@dataclass
class ExemptLayer:
    name: str
    reason: str
    weights: int


class MaskSet:
    """The scored layers of one network and the rule that sets their masks.

    Without a pattern: one global top-k over every layer. With an N:M pattern: per layer, N of every
    M along input channels; layers that cannot take it stay plain (dense) and are listed in `exempt`.
    """

    def __init__(self, layers: list[tuple[str, MaskedLayer]], sparsity: float = 0.5,
                 pattern: tuple[int, int] | None = None, exempt: list[ExemptLayer] | None = None) -> None:
        if not layers:
            raise ValueError("the model has no Conv2d or Linear layer to prune")
        self.layers = layers
        self.sparsity_target = sparsity
        self.pattern = pattern
        self.exempt = exempt or []

    @classmethod
    def attach(cls, net: nn.Module, sparsity: float = 0.5, pattern: tuple[int, int] | None = None) -> "MaskSet":
        """Swap every Conv2d/Linear of net, in place, for its masked twin (same parameter names)."""
        targets = [(n, m) for n, m in net.named_modules() if type(m) in PRUNABLE]
        exempt: list[ExemptLayer] = []
        if pattern is not None:
            reasons = {n: nm_exemption(m, pattern[1]) for n, m in targets}
            exempt = [ExemptLayer(n, r, m.weight.numel()) for n, m in targets if (r := reasons[n])]
            targets = [(n, m) for n, m in targets if reasons[n] is None]
        layers: list[tuple[str, MaskedLayer]] = []
        for name, module in targets:
            masked = (MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear).wrap(module)
            _set_submodule(net, name, masked)
            layers.append((name, masked))
        return cls(layers, sparsity, pattern, exempt)

    @property
    def total(self) -> int:
        return sum(m.weight.numel() for _, m in self.layers) + sum(e.weights for e in self.exempt)

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

    @torch.no_grad()
    def select(self, importance: list[torch.Tensor], sparsity: float | None = None) -> None:
        if sparsity is not None:
            self.sparsity_target = sparsity
        if self.pattern is None:
            self.select_global_topk(importance, self.sparsity_target)
            return
        n, m = self.pattern
        for (_, layer), imp in zip(self.layers, importance):
            layer.mask.copy_(nm_select(imp, n, m))

    def update_from_scores(self, sparsity: float | None = None) -> None:
        self.select(self.scores(), sparsity)

    def update_from_magnitude(self, sparsity: float | None = None) -> None:
        self.select([m.weight for _, m in self.layers], sparsity)

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
        """Removed fraction of all prunable weights (exempt layers count as dense)."""
        st = self.stats()
        dense = sum(e.weights for e in self.exempt)
        return 1.0 - (sum(s.kept for s in st) + dense) / (sum(s.total for s in st) + dense)

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m.mask.detach().to("cpu", torch.bool).clone() for n, m in self.layers}

    def baked(self, net: nn.Module) -> nn.Module:
        """A copy of net with plain layers holding W * mask: loads without this module."""
        out = copy.deepcopy(net)
        for name, _ in self.layers:
            _set_submodule(out, name, out.get_submodule(name).plain())
        return out
