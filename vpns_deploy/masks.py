"""Learned weight masks (shared/docs/VPNS.md §2): every weight matrix scored, a global top-k.

Every weight matrix is prunable: the weight of any non-transposed convolution or nn.Linear (by
isinstance, so subclasses such as MultiheadAttention's out-projection count) and the bare
in-projection Parameters of nn.MultiheadAttention; the stem and the classifier included (as in the
reference). BatchNorm/LayerNorm, biases, tokens, position embeddings and bias tables never are.

The mask is a torch.nn.utils.parametrize parametrization of the weight (as torch.ao.pruning does),
so the effective weight W * mask is what every reader of `module.weight` sees, including modules
that never call their own forward (MultiheadAttention reads `out_proj.weight` directly; Swin reads
`qkv.weight`). While its scores train, the mask carries a straight-through gradient,
dL/ds = sign(s) * (dL/dW_eff * W), so pruned weights can come back.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from vpns_deploy.errors import UserError
from vpns_deploy.global_topk import select_largest
from vpns_deploy.sparsity.granularity import Granularity, LayerStats

if TYPE_CHECKING:
    from vpns_deploy.config import CompressConfig

# Bare weight matrices of MultiheadAttention (in_proj_weight, or q/k/v when their sizes differ).
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
EMPTY_LAYERS_OPTION = "--allow-empty-layers"


class WeightMask(nn.Module):
    """The parametrization W -> W * mask, with a straight-through gradient to |scores| while they train."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight.detach()))
        self.scores = nn.Parameter(torch.zeros_like(weight.detach()), requires_grad=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        m = self.mask
        if self.scores.requires_grad:
            a = self.scores.abs()
            m = m + (a - a.detach())  # value: the mask; gradient: straight through to |s|
        return weight * m


class MaskedWeight:
    """One scored weight matrix: `weight` (the raw parameter), `mask`, `scores`, looked up live so
    they follow .to(), load_state_dict() and resumes."""

    def __init__(self, module: nn.Module, param: str) -> None:
        self.module, self.param = module, param

    @property
    def parametrization(self) -> WeightMask:
        return self.module.parametrizations[self.param][0]  # type: ignore[index]

    @property
    def weight(self) -> nn.Parameter:
        return self.module.parametrizations[self.param].original  # type: ignore[index]

    @property
    def mask(self) -> torch.Tensor:
        return self.parametrization.mask

    @property
    def scores(self) -> nn.Parameter:
        return self.parametrization.scores


def weight_matrices(net: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(layer name, module, parameter name) of every weight matrix of net, in module order.

    The layer name is the module's name for a `weight`, "<module>.<parameter>" for the others.
    """
    found = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and not module.transposed):
            found.append((name, module, "weight"))
        elif isinstance(module, nn.MultiheadAttention):
            for p in MHA_WEIGHTS:
                if getattr(module, p, None) is not None:
                    found.append((f"{name}.{p}" if name else p, module, p))
    return found


def _fan_in(module: nn.Module, param: str) -> int:
    if isinstance(module, _ConvNd):
        return module.in_channels
    return int(getattr(module, param).shape[1])


def nm_exemption(module: nn.Module, m: int, param: str = "weight") -> str | None:
    """Why a weight matrix cannot take an N:M pattern along its input channels, or None if it can."""
    if isinstance(module, _ConvNd) and module.groups > 1:
        return "grouped/depthwise conv"
    fan = _fan_in(module, param)
    if fan % m:
        return f"{fan} input channels, not a multiple of {m}"
    return None


@torch.no_grad()
def nm_select(importance: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest of every m consecutive input-channel entries (per output and position)."""
    imp = importance.detach().abs()
    x = imp.movedim(1, -1)  # input channels last: (out, *kernel, in)
    rows = x.reshape(-1, m)
    keep = torch.zeros_like(rows)
    keep.scatter_(1, torch.topk(rows, n, dim=1).indices, 1.0)
    return keep.view(x.shape).movedim(-1, 1)


@dataclass
class ExemptLayer:
    name: str
    reason: str
    weights: int


class MaskSet(Granularity):
    """The scored weight matrices of one network and the rule that sets their masks (modes
    unstructured and N:M of sparsity.modes).

    Without a pattern: one global top-k over every matrix. With an N:M pattern: per matrix, N of
    every M along input channels; matrices that cannot take it stay dense and are listed in `exempt`.

    Unless `allow_empty`, no layer is ever left without a weight (its output would be a constant):
    a budget smaller than the number of layers is refused up front, and otherwise each layer's most
    important weight is always among the kept ones. Where no layer would empty, this is exactly the
    plain global top-k (a layer's best weight outranks the rest of that layer).
    """

    def __init__(self, layers: list[tuple[str, MaskedWeight]], sparsity: float = 0.5,
                 pattern: tuple[int, int] | None = None, exempt: list[ExemptLayer] | None = None,
                 allow_empty: bool = False) -> None:
        if not layers:
            raise UserError("the model has no convolution, linear or attention weight to prune",
                            "pass a model with Conv/Linear layers")
        self.layers = layers
        self.sparsity_target = sparsity
        self.pattern = pattern
        self.exempt = exempt or []
        self.allow_empty = allow_empty
        if pattern is None:
            self._check_budget(sparsity)

    def prunable(self) -> str:
        if self.pattern is None:
            return "every Conv2d and Linear weight (stem and classifier included); BN and biases never"
        return "every Conv2d and Linear weight whose layer's input channels divide by M; others stay dense"

    def structure_facts(self, macs_reduction: float) -> dict:  # noqa: ARG002 - masking leaves MACs unchanged
        if self.pattern is None:
            return {}
        return {"pattern": list(self.pattern), "exempt": [vars(e) for e in self.exempt]}

    @classmethod
    def attach(cls, net: nn.Module, sparsity: float = 0.5, pattern: tuple[int, int] | None = None,
               allow_empty: bool = False) -> "MaskSet":
        """Parametrize every weight matrix of net, in place, with a WeightMask."""
        targets = weight_matrices(net)
        exempt: list[ExemptLayer] = []
        if pattern is not None:
            reasons = {n: nm_exemption(mod, pattern[1], p) for n, mod, p in targets}
            exempt = [ExemptLayer(n, r, getattr(mod, p).numel()) for n, mod, p in targets if (r := reasons[n])]
            targets = [(n, mod, p) for n, mod, p in targets if reasons[n] is None]
        layers: list[tuple[str, MaskedWeight]] = []
        for name, module, param in targets:
            parametrize.register_parametrization(module, param, WeightMask(getattr(module, param)))
            layers.append((name, MaskedWeight(module, param)))
        return cls(layers, sparsity, pattern, exempt, allow_empty)

    @classmethod
    def from_config(cls, net: nn.Module, cfg: CompressConfig, example: torch.Tensor) -> MaskSet:
        return cls.attach(net, cfg.sparsity, cfg.pattern, cfg.allow_empty_layers)

    @property
    def total(self) -> int:
        return sum(m.weight.numel() for _, m in self.layers) + sum(e.weights for e in self.exempt)

    def _keep_count(self, sparsity: float) -> int:
        n = sum(m.weight.numel() for _, m in self.layers)
        return n - math.floor(sparsity * n)

    def _check_budget(self, sparsity: float) -> None:
        keep = self._keep_count(sparsity)
        if not self.allow_empty and keep < len(self.layers):
            n = sum(m.weight.numel() for _, m in self.layers)
            most = 1.0 - len(self.layers) / n
            raise UserError(
                f"sparsity {sparsity:g} keeps {keep} of {n:,} weights, fewer than the {len(self.layers)} "
                f"prunable layers: some layer would have no weight left and output a constant",
                f"pass a sparsity of at most {math.floor(most * 1e6) / 1e6:g}, or {EMPTY_LAYERS_OPTION} "
                "(recipe: compress.allow_empty_layers = true) if that is what you want",
            )

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for _, m in self.layers]

    @torch.no_grad()
    def init_scores(self) -> None:
        """HYDRA's scaled init: s = sqrt(6 / fan_in) * W / max|W|, per layer."""
        for _, m in self.layers:
            w = m.weight
            fan_in = w[0].numel()
            m.scores.copy_(math.sqrt(6.0 / fan_in) * w / w.abs().max().clamp_min(1e-12))

    init_scores_scaled = init_scores  # the name bench/ and tests call it by

    @torch.no_grad()
    def select_global_topk(self, importance: list[torch.Tensor], sparsity: float) -> None:
        """Keep exactly N - floor(sparsity * N) weights with the largest importance, over all layers
        (each layer's largest first unless allow_empty, see the class docstring)."""
        self._check_budget(sparsity)
        select_largest(importance, [m.mask for _, m in self.layers], self._keep_count(sparsity), not self.allow_empty)

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

    @torch.no_grad()
    def zero_pruned_weights(self) -> None:
        """Make W outside the mask exactly zero; with a fixed mask it then stays zero under SGD."""
        for _, m in self.layers:
            m.weight.mul_(m.mask)

    def stats(self) -> list[LayerStats]:
        """Every weight matrix, exempt (dense) ones included."""
        return ([LayerStats(n, m.mask.numel(), int(m.mask.sum().item())) for n, m in self.layers]
                + [LayerStats(e.name, e.weights, e.weights) for e in self.exempt])

    def empty_layers(self) -> list[str]:
        return [n for n, m in self.layers if not bool(m.mask.any())]

    def sparsity(self) -> float:
        """Removed fraction of every weight matrix (exempt ones count as dense)."""
        st = self.stats()
        return 1.0 - sum(s.kept for s in st) / sum(s.total for s in st)

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m.mask.detach().to("cpu", torch.bool).clone() for n, m in self.layers}

    def baked(self, net: nn.Module) -> nn.Module:
        """A copy of net with plain weights holding W * mask: loads without this module."""
        out = copy.deepcopy(net)
        for module in out.modules():
            if parametrize.is_parametrized(module):
                _unparametrize(module)
        return out


def _unparametrize(module: nn.Module) -> None:
    """Replace a copied module's WeightMask parametrizations by plain Parameters holding W * mask.

    Not parametrize.remove_parametrizations: a deep copy shares its dynamically made class with the
    original, and removal deletes the property from that class, breaking the original too.
    """
    plist = module.parametrizations  # type: ignore[attr-defined]
    if not all(isinstance(plist[p][0], WeightMask) and len(plist[p]) == 1 for p in plist):
        raise ValueError(f"{type(module).__name__} carries parametrizations other than its weight mask")
    with torch.no_grad():
        values = {p: (getattr(module, p).detach().clone(), plist[p].original.requires_grad) for p in plist}
    del module._modules["parametrizations"]
    module.__class__ = type(module).__bases__[0]  # parametrize's injected subclass -> the original class
    rest = dict(module._parameters)
    module._parameters.clear()  # weights first, then biases: the order torch's own layers register
    for p, (value, grad) in values.items():
        module.register_parameter(p, nn.Parameter(value, requires_grad=grad))
    module._parameters.update(rest)
