"""Multiply-accumulates of conv and linear layers: the cost that channel pruning removes.

Only weight matrices count: Conv2d, Linear, and MultiheadAttention's in- and out-projections (which
its forward applies without calling a submodule). BN, ReLU, pooling, additions and attention's own
activation x activation products are left out (O(activations) for CNNs, a few % of a CIFAR ResNet).
One MAC = one multiply + one add.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCost:
    """What a layer's MACs depend on: MACs = out * (in / groups) * per_pair."""

    name: str
    out_channels: int
    in_channels: int
    groups: int
    per_pair: int  # kernel area x output positions (1 for a linear layer on a vector)
    params_per_pair: int  # kernel area (1 for linear)
    bias: bool

    def macs(self, out_kept: int | None = None, in_kept: int | None = None) -> int:
        o = self.out_channels if out_kept is None else out_kept
        i = self.in_channels if in_kept is None else in_kept
        if self.groups > 1:  # depthwise-like: each output sees in/groups inputs, fixed
            return o * (self.in_channels // self.groups) * self.per_pair
        return o * i * self.per_pair


@torch.no_grad()
def layer_costs(net: nn.Module, example: torch.Tensor) -> dict[str, LayerCost]:
    """Per conv/linear layer, its shape and output size, from one forward pass on `example`."""
    costs: dict[str, LayerCost] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if isinstance(module, nn.MultiheadAttention):
                _attention_costs(name, module, inputs, costs)
            elif isinstance(module, nn.Conv2d):
                area = module.kernel_size[0] * module.kernel_size[1]
                positions = output.shape[-2] * output.shape[-1]
                costs[name] = LayerCost(name, module.out_channels, module.in_channels, module.groups,
                                        area * positions, area, module.bias is not None)
            else:
                positions = output.numel() // output.shape[0] // module.out_features
                costs[name] = LayerCost(name, module.out_features, module.in_features, 1, positions, 1,
                                        module.bias is not None)
        return fn

    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = net.training
    net.eval()
    try:
        net(example[:1])
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return costs


def _attention_costs(name: str, mha: nn.MultiheadAttention, inputs: tuple, costs: dict[str, LayerCost]) -> None:
    """In-projection (q, k, v) and out-projection of one attention call, per token."""
    query, key = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    seq_dim = 1 if mha.batch_first else 0
    q_tokens = query.shape[seq_dim] if query.dim() == 3 else query.shape[0]
    kv_tokens = key.shape[seq_dim] if key.dim() == 3 else key.shape[0]
    e, bias = mha.embed_dim, mha.in_proj_bias is not None
    prefix = f"{name}." if name else ""
    costs[f"{prefix}in_proj_weight"] = LayerCost(f"{prefix}in_proj_weight", e, e, 1, q_tokens + 2 * kv_tokens, 1, bias)
    costs[f"{prefix}out_proj"] = LayerCost(f"{prefix}out_proj", e, e, 1, q_tokens, 1, mha.out_proj.bias is not None)


def count_macs(net: nn.Module, example: torch.Tensor) -> int:
    """MACs of one image through net's conv and linear layers."""
    return sum(c.macs() for c in layer_costs(net, example).values())


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
