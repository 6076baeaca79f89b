"""Channel groups: which channels of a network must be removed together (group discovery).

torch-pruning's DependencyGraph finds the channel groups that must go together (a conv's filters,
its BN, the next conv's inputs, and every layer tied to them through residual additions). This
module turns them into ChannelGroups (root layer, size, members with their index maps), refuses the
groups that masking cannot remove exactly (kept whole, with the reason), and finds the head, whose
outputs are never pruned. The mask set over these groups is channels.ChannelMaskSet.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


@dataclass
class Member:
    """One layer touched by a group: which of its channels (idxs) map to which group channel."""

    name: str
    side: str  # "out" or "in"
    idxs: torch.Tensor
    root_idxs: torch.Tensor
    masks_output: bool = False


@dataclass
class ChannelGroup:
    root: str  # the conv/linear whose output channels index the group
    size: int
    members: list[Member]


@contextmanager
def traceable(net: nn.Module) -> Iterator[nn.Module]:
    """Grad on and every parameter requiring it inside: torch-pruning traces grad_fn, and a frozen
    net (or a caller under torch.no_grad) has none."""
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    for p in net.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield net
    finally:  # by name: pruning inside replaces the pruned layers' Parameter objects
        for n, p in net.named_parameters():
            p.requires_grad_(flags[n])


# Modules whose channels can be masked (zeroed at a producer's output) and then removed with the same
# result: convolutions, linears and per-channel BatchNorm. Anything else that holds parameters and is
# coupled to a group (LayerNorm/GroupNorm normalise across channels, so a zeroed channel still moves
# their statistics; MultiheadAttention ties channels to heads; bare parameters such as ViT's class
# token) keeps that group whole.
MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)
ROOT_TYPES = [nn.Conv2d, nn.Linear]


@dataclass
class ChannelPlan:
    """What channel mode does with one network: the groups it prunes, the layers whose outputs it
    never prunes (the head, and the producers of refused groups), and why groups were refused."""

    groups: list[ChannelGroup]
    heads: list[str]
    frozen: list[str]
    refused: dict[str, list[str]]  # reason -> root layers of the groups kept whole for it

    def refusal_lines(self) -> list[str]:
        return [f"channel mode keeps {len(roots)} channel group(s) whole ({', '.join(roots[:3])}"
                f"{', ...' if len(roots) > 3 else ''}): {reason}" for reason, roots in self.refused.items()]


def _install_reshape_guard() -> None:
    """torch-pruning 1.6.1 divides by a zero channel count at some reshapes (ShuffleNet's channel
    shuffle), both while building a graph and at every get_pruning_group, and adds None to an int at
    a concatenation whose inputs' channel counts it cannot infer (Swin's patch merging, a cat of four
    strided slices along the last dimension). Such a node is recorded on the graph
    (`unmappable_reshapes`) instead, and plan_channels keeps its groups whole."""
    from torch_pruning.dependency import index_mapping

    for name, error in (("update_reshape_index_mapping", ZeroDivisionError), ("update_concat_index_mapping", TypeError)):
        original = getattr(index_mapping, name)
        if not getattr(original, "vpns_guard", False):
            setattr(index_mapping, name, _guarded(original, error))


def _guarded(original, error: type[Exception]):
    def guarded(graph, node):
        try:
            return original(graph, node)
        except error:
            if not hasattr(graph, "unmappable_reshapes"):
                graph.unmappable_reshapes = []
            if not any(node.module is m for m in graph.unmappable_reshapes):
                graph.unmappable_reshapes.append(node.module)

    guarded.vpns_guard = True  # type: ignore[attr-defined]
    return guarded


_install_reshape_guard()


def dependency_graph(net: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of net (eval mode, autograd on)."""
    was_training = net.training
    net.eval()
    try:
        with traceable(net):
            return tp.DependencyGraph().build_dependency(net, example_inputs=example[:1])
    finally:
        net.train(was_training)


def graph_heads(dg: tp.DependencyGraph) -> list[nn.Module]:
    """The layers producing the logits: every conv/linear from which the graph's output is reached
    without passing another conv/linear (a Linear classifier, SqueezeNet's 1x1 conv, ...)."""
    heads = []
    for module, node in dg.module2node.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        stack, seen = list(node.outputs), set()
        if not stack:
            heads.append(module)
            continue
        while stack:
            n = stack.pop()
            if id(n) in seen or isinstance(n.module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
                continue
            seen.add(id(n))
            if not n.outputs:
                heads.append(module)
                break
            stack.extend(n.outputs)
    return heads


def head_layers(net: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose outputs are the classes (never pruned along their outputs), from the graph."""
    return graph_heads(dependency_graph(net, example))


def _refusal(module: object, failed: list) -> str | None:
    """Why a group touching this graph node cannot be masked, or None when it can."""
    if any(module is f for f in failed):
        return "a reshape or concatenation torch-pruning cannot map (e.g. a channel shuffle, a patch merging)"
    if isinstance(module, nn.Parameter):
        return "a bare parameter (e.g. a class token or a layer scale) is tied to the channels"
    if isinstance(module, nn.Conv2d) and 1 < module.groups and not module.groups == module.in_channels == module.out_channels:
        # RegNet/ResNeXt: removing any channels but whole groups' worth breaks the grouping, and
        # torch-pruning then fails ("INDICES element is out of DATA bounds"); depthwise ones are fine.
        return "a grouped (not depthwise) convolution ties its channels in groups"
    if isinstance(module, nn.Module) and not isinstance(module, MASKABLE):
        if any(True for _ in module.parameters(recurse=False)):
            return (f"{type(module).__name__} layers cannot be channel-pruned here"
                    + (" (they normalise across channels)" if isinstance(module, NORM_LAYERS) else ""))
    return None


def plan_channels(net: nn.Module, example: torch.Tensor) -> ChannelPlan:
    """The prunable channel groups of net (the head's outputs and unmaskable groups excluded)."""
    dg = dependency_graph(net, example)
    names = {m: n for n, m in net.named_modules()}
    heads = graph_heads(dg)
    frozen: list[nn.Module] = list(heads)
    refused: dict[str, list[str]] = {}
    candidates = []
    for root, g in _all_groups(dg, heads):
        if g is None:
            reason = _refused_downstream(dg, root) or ("torch-pruning cannot follow their channels through the "
                                                       "graph (a channel split and shuffle)")
            refused.setdefault(reason, []).append(names.get(root, "?"))
            frozen.append(root)
            continue
        failed = getattr(dg, "unmappable_reshapes", [])
        reasons = [r for item in g.items if (r := _refusal(item.dep.target.module, failed))]
        if reasons:
            refused.setdefault(reasons[0], []).append(names.get(g[0].dep.target.module, "?"))
            frozen += [item.dep.target.module for item in g.items
                       if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
                       and dg.is_out_channel_pruning_fn(item.dep.handler)]
            continue
        candidates.append(g)
    groups = [_group(dg, g, names, net) for g in candidates]
    unique = list(dict.fromkeys(frozen))
    return ChannelPlan(groups, [names[m] for m in heads], [names[m] for m in unique if m in names], refused)


def _refused_downstream(dg: tp.DependencyGraph, root: nn.Module) -> str | None:
    """Why root's channels meet an unmaskable layer before the next conv/linear, or None.

    Cheap, and it matters: on Swin, torch-pruning's group for a residual stream grows past 8 GB
    before it returns (measured), and that group is refused for its LayerNorms anyway."""
    stack, seen = list(dg.module2node[root].outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen or isinstance(n.module, (nn.Conv2d, nn.Linear)):
            continue
        seen.add(id(n))
        reason = _refusal(n.module, getattr(dg, "unmappable_reshapes", []))
        if reason:
            return reason
        stack.extend(n.outputs)
    return None


def _all_groups(dg: tp.DependencyGraph, ignored: list[nn.Module]) -> Iterator[tuple[nn.Module, object]]:
    """DependencyGraph.get_all_groups, except that a root whose group torch-pruning fails to compute
    (it raises inside its index mappings on ShuffleNet) comes out as (root, None) instead of raising."""
    visited: set[int] = set()
    for m in list(dg.module2node):
        if any(m is i for i in ignored) or not isinstance(m, tuple(ROOT_TYPES)) or id(m) in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        if _refused_downstream(dg, m):
            yield m, None  # its group would be refused anyway; torch-pruning can take GBs to build it
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (IndexError, ZeroDivisionError, ValueError, RuntimeError):
            yield m, None
            continue
        prunable = True
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable &= not any(dep.target.module is i for i in ignored)
        if prunable:
            yield m, group


def _group(dg: tp.DependencyGraph, g, names: dict, net: nn.Module) -> ChannelGroup:
    root = g[0].dep.target.module
    members: list[Member] = []
    for item in g.items:
        module = item.dep.target.module
        if module not in names or not isinstance(module, MASKABLE):
            continue  # parameter-free ops: zeros flow through them
        side = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
        if isinstance(module, NORM_LAYERS):
            side = "out"
        members.append(Member(names[module], side, torch.tensor(item.idxs, dtype=torch.long),
                              torch.tensor(item.root_idxs, dtype=torch.long)))
    # Mask the last producer of each chain: a BN, or a conv/linear that feeds no BN of the group.
    out_names = {m.name for m in members if m.side == "out"}
    for m in members:
        if m.side != "out":
            continue
        module = net.get_submodule(m.name)
        if isinstance(module, NORM_LAYERS):
            m.masks_output = True
        else:
            fed = {names.get(o.module) for o in dg.module2node[module].outputs}
            m.masks_output = not any(
                n in out_names and isinstance(net.get_submodule(n), NORM_LAYERS) for n in fed if n
            )
    return ChannelGroup(names[root], len(g[0].idxs), members)


def find_groups(net: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The prunable channel groups of net (see plan_channels)."""
    return plan_channels(net, example).groups

