"""Physical channel removal: the masked network becomes a smaller plain network, same outputs.

torch-pruning does the surgery (every coupled layer of a group shrinks together); this module only
turns group masks into its pruning calls. The result holds ordinary nn.Conv2d / BatchNorm2d /
nn.Linear layers of the new widths, so it loads and exports without any masking code.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vpns_deploy.channel_groups import dependency_graph, graph_heads, traceable


def without_hooks(net: nn.Module) -> nn.Module:
    """A deep copy of net without the mask hooks (what torch-pruning and compaction work on)."""
    out = copy.deepcopy(net)
    for m in out.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return out


def compact(net: nn.Module, group_masks: dict[str, torch.Tensor], example: torch.Tensor) -> nn.Module:
    """A copy of net with every channel whose group mask is False removed.

    `group_masks` maps each group's root layer name to its keep mask (ChannelMaskSet.masks()).
    Runs with autograd on: torch-pruning traces the graph through it.
    """
    out = without_hooks(net).cpu().eval()
    with traceable(out):  # a fully frozen net (stage 1 only) has no grad_fn to trace
        _prune(out, group_masks, example)
    return out


def _prune(out: nn.Module, group_masks: dict[str, torch.Tensor], example: torch.Tensor) -> None:
    dg = dependency_graph(out, example.cpu())
    heads = set(graph_heads(dg))
    for root_name, keep in group_masks.items():
        module = out.get_submodule(root_name)
        if module in heads:
            raise ValueError(f"{root_name} is the classifier; its outputs cannot be pruned")
        removed = torch.nonzero(~keep.bool()).flatten().tolist()
        if not removed:
            continue
        if len(removed) == keep.numel():
            raise ValueError(f"the mask of group {root_name} removes every channel")
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, idxs=removed)
        group.prune()
