"""Channel masks over torch-pruning's coupled groups (shared/docs/VPNS.md §6, made compactable).

One score per group channel (groups: channel_groups.py); a kept/removed mask per group channel. The
masked network multiplies the outputs of the group's last producers (the BN after a conv, or a
conv/linear with no BN after it) by the mask, so a removed channel is exactly zero everywhere it
flows: removing it physically (`compaction.py`) then changes nothing. While scores train, the mask
passes a straight-through gradient to |score|, as in the unstructured mode. Which channels a budget
keeps: channel_budget.py; Torch-Pruning's own group-norm pruner: channel_groupnorm.py.
"""
from __future__ import annotations

import torch
from torch import nn

from vpns_deploy.channel_budget import ChannelBudget
from vpns_deploy.channel_groupnorm import GROUP_NORM_STEPS, group_norm_keep
from vpns_deploy.channel_groups import (  # noqa: F401 - the group API, long imported from here
    ChannelGroup, ChannelPlan, Member, dependency_graph, find_groups, head_layers, plan_channels, traceable,
)
from vpns_deploy.compaction import compact
from vpns_deploy.config import CompressConfig, OptimConfig
from vpns_deploy.errors import UserError
from vpns_deploy.macs import LayerCost, layer_costs
from vpns_deploy.models.cifar_resnet import shortcuts_as_convs
from vpns_deploy.sparsity.granularity import Granularity, LayerStats

SPEEDUP_SHORTFALL = 0.01  # a reached MACs reduction this far below --speedup gets a warning


class ChannelMaskSet(nn.Module, Granularity):
    """Scores and masks of every channel group of one network, applied through forward hooks
    (mode channel of sparsity.modes)."""

    def __init__(self, net: nn.Module, example: torch.Tensor, sparsity: float | None = 0.5,
                 speedup: float | None = None, min_keep: float = 0.1, round_to: int = 1,
                 init: str = CompressConfig.channel_init, widths: str = CompressConfig.channel_widths) -> None:
        super().__init__()
        self.plan = plan_channels(net, example)
        self.groups = self.plan.groups
        if not self.groups:
            why = "; ".join(self.plan.refusal_lines()) or "no conv/linear output channels outside the head"
            raise UserError(f"channel mode found no prunable channel group in this model ({why})",
                            "use --mode unstructured or 2:4 for it")
        self.score_params = nn.ParameterList(
            [nn.Parameter(torch.zeros(g.size, device=example.device), requires_grad=False) for g in self.groups]
        )
        for i, g in enumerate(self.groups):
            self.register_buffer(f"mask_{i}", torch.ones(g.size, device=example.device))
        self.init, self.widths = init, widths
        # widths "init": each group's channel count, fixed by the first selection (0: not fixed yet)
        self.register_buffer("fixed_counts", torch.zeros(len(self.groups), dtype=torch.long))
        self.costs: dict[str, LayerCost] = layer_costs(net, example)
        # The reference is the user's network: frozen channel copies stand in for parameter-free
        # shortcuts there, so they cost nothing in it (but their MACs count once compacted).
        modules = dict(net.named_modules())  # cost names include attention projections, not modules
        dense_macs = sum(c.macs() for n, c in self.costs.items() if not getattr(modules.get(n), "frozen", False))
        self.budget = ChannelBudget(self.groups, self.costs, dense_macs, min_keep, max(1, round_to), sparsity, speedup)
        self._example = example[:1].detach().cpu()
        self._net_ref = [net]  # not a submodule: the mask set must not own the network
        self._handles = [self._hook(net, g, i, m) for i, g in enumerate(self.groups) for m in g.members
                         if m.masks_output]

    @staticmethod
    def prepare_network(net: nn.Module) -> None:
        """Option-A (parameter-free) shortcuts become 0/1 convs, so the groups come out right."""
        shortcuts_as_convs(net)

    @classmethod
    def from_config(cls, net: nn.Module, cfg: CompressConfig, example: torch.Tensor) -> ChannelMaskSet:
        return cls(net, example, None if cfg.speedup else cfg.sparsity, cfg.speedup, cfg.channel_min_keep,
                   cfg.channel_round_to, cfg.channel_init, cfg.channel_widths)

    @property
    def sizes(self) -> list[int]:
        return self.budget.sizes

    @property
    def dense_macs(self) -> int:
        return self.budget.dense_macs

    # -- masks --------------------------------------------------------------------------------
    def group_mask(self, i: int) -> torch.Tensor:
        return getattr(self, f"mask_{i}")

    def _effective(self, i: int) -> torch.Tensor:
        m = self.group_mask(i)
        s = self.score_params[i]
        if s.requires_grad:
            a = s.abs()
            m = m + (a - a.detach())
        return m

    def _hook(self, net: nn.Module, group: ChannelGroup, i: int, member: Member):
        module = net.get_submodule(member.name)

        def fn(mod: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            g = self._effective(i)
            dim = output.dim() - 1 if isinstance(mod, nn.Linear) else 1  # a Linear's channels are last
            full = torch.ones(output.shape[dim], device=output.device, dtype=output.dtype)
            full = full.index_put((member.idxs.to(output.device),), g[member.root_idxs.to(g.device)].to(output.dtype))
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * full.view(shape)

        return module.register_forward_hook(fn)

    def prunable(self) -> str:
        return ("output channels of every coupled channel group found by torch-pruning (residual streams "
                "included); the classifier's outputs never")

    def structure_facts(self, macs_reduction: float) -> dict:
        target = self.budget.speedup_target
        return {"groups": [{"root": g.root, "channels": g.size, "kept": int(self.group_mask(i).sum())}
                           for i, g in enumerate(self.groups)],
                "speedup_target": target, "macs_reduction": macs_reduction,
                "speedup_reached": macs_reduction if target else None,
                "kept_whole": [{"reason": r, "roots": roots} for r, roots in self.plan.refused.items()],
                "notes": self.notes()}

    def notes(self) -> list[str]:
        """What the user should hear before training: groups kept whole, and a --speedup out of reach."""
        lines, b = self.plan.refusal_lines(), self.budget
        if b.speedup_target is not None:
            reached = b.dense_macs / max(1, self.macs())
            if reached < b.speedup_target * (1 - SPEEDUP_SHORTFALL):
                lines.append(
                    f"warning: --speedup {b.speedup_target:g} is out of reach for this network: every channel "
                    f"group keeps at least {b.min_keep:.0%} of its channels (in multiples of {b.round_to})"
                    + (" and some groups are kept whole" if self.plan.refused else "")
                    + f", so the MACs go down {reached:.2f}x at most; continuing at {reached:.2f}x")
        return lines

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- the Granularity lifecycle (sparsity/granularity.py) -------------------------------------
    @property
    def total(self) -> int:
        return self.budget.total

    def scores(self) -> list[nn.Parameter]:
        return list(self.score_params)

    @torch.no_grad()
    def magnitude(self) -> list[torch.Tensor]:
        """L1 norm of each group channel's filters, summed over the group's producing layers."""
        net = self._net_ref[0]
        out = []
        for g in self.groups:
            imp = torch.zeros(g.size, device=self.group_mask(0).device)
            for m in g.members:
                module = net.get_submodule(m.name)
                if m.side != "out" or not isinstance(module, (nn.Conv2d, nn.Linear)):
                    continue
                if getattr(module, "frozen", False):
                    continue  # a 0/1 channel copy carries no importance
                w = module.weight.detach().flatten(1).abs().sum(1)
                imp.index_add_(0, m.root_idxs.to(imp.device), w[m.idxs.to(w.device)].to(imp.dtype))
            out.append(imp)
        return out


    def group_norm_keep(self, steps: int = GROUP_NORM_STEPS) -> list[torch.Tensor]:
        """The keep masks Torch-Pruning's iterative group-norm pruner reaches at this set's budget."""
        return group_norm_keep(self._net_ref[0], self._example, self.budget, self.plan.frozen, steps)

    @torch.no_grad()
    def init_scores(self) -> None:
        """Scores start at Torch-Pruning's group-norm mask: kept channels in (1, 2], removed in [0, 1].

        Within each side the order is the group's L1 importance over its max, so the first mask is
        the library's and stage 1 (scores + prompt) refines it from there. init "l1": the group's
        L1 importance over its mean, so the first mask is the one-shot L1 ranking.
        """
        if self.init == "l1":
            for s, imp in zip(self.score_params, self.magnitude()):
                s.copy_(imp / imp.mean().clamp_min(1e-12))
            return
        kept = self.group_norm_keep()
        for s, imp, k in zip(self.score_params, self.magnitude(), kept):
            s.copy_(k.to(s.device) + imp / imp.max().clamp_min(1e-12))

    init_scores_scaled = init_scores  # the name bench/ and tests call it by

    def score_lr(self, optim: OptimConfig, auto: float) -> float:
        """Channel scores start near 1 (not sqrt(6/fan_in)), so they take their own, larger rate."""
        return optim.lr_channel_scores

    @torch.no_grad()
    def select(self, importance: list[torch.Tensor]) -> None:
        """Masks from importance at the budget (channel_budget.ChannelBudget.select)."""
        for i, m in enumerate(self.budget.select(importance)):
            self.group_mask(i).copy_(m.to(self.group_mask(i).device))

    def macs_of(self, masks: list[torch.Tensor]) -> int:
        """MACs of the network these group masks would leave (one image)."""
        return self.budget.macs_of(masks)

    def update_from_scores(self, sparsity: float | None = None) -> None:
        """Global selection; with widths "init" only the first one is global, and later ones keep
        each group's count and re-pick which of its channels survive (per-group top-k, as the
        original HYDRA does per layer)."""
        if sparsity is not None:
            self.budget.sparsity_target = sparsity
        if self.widths == "init" and bool((self.fixed_counts > 0).all()):
            self._select_within_groups(self.scores())
            return
        self.select(self.scores())
        if self.widths == "init":
            for i in range(len(self.groups)):
                self.fixed_counts[i] = int(self.group_mask(i).sum())

    @torch.no_grad()
    def _select_within_groups(self, importance: list[torch.Tensor]) -> None:
        for i, (t, c) in enumerate(zip(importance, self.fixed_counts.tolist())):
            mask = torch.zeros_like(self.group_mask(i))
            mask[torch.topk(t.detach().abs(), c, sorted=False).indices.to(mask.device)] = 1.0
            self.group_mask(i).copy_(mask)

    def update_from_magnitude(self, sparsity: float | None = None) -> None:
        if sparsity is not None:
            self.budget.sparsity_target = sparsity
        self.select(self.magnitude())

    @torch.no_grad()
    def update_from_group_norm(self) -> None:
        """--method tp-groupnorm: the mask Torch-Pruning's iterative group-norm pruner reaches at the
        budget (group_norm_keep), exactly: the library's own stopping point, not re-filled to the budget."""
        for i, keep in enumerate(self.group_norm_keep()):
            self.group_mask(i).copy_(keep.to(self.group_mask(i).device))

    # -- a budget in measured latency (latency_budget.py) -------------------------------------
    def retarget(self, macs_ratio: float) -> None:
        """Budget the next selection at `macs_ratio` fewer MACs, widths free to change again."""
        self.retarget_kept(macs_ratio)
        self.fixed_counts.zero_()

    def retarget_kept(self, macs_ratio: float) -> None:
        """A resumed run's chosen budget back in place, the restored widths kept."""
        self.budget.speedup_target = macs_ratio
        self.budget.sparsity_target = None

    def kept_widths(self) -> tuple[int, ...]:
        """Kept channels per group: all a compacted network's latency depends on."""
        return tuple(int(self.group_mask(i).sum()) for i in range(len(self.groups)))

    @torch.no_grad()
    def floor_ratio(self) -> float:
        """The largest MACs reduction the budget allows: every group at its floor (min_keep, round_to)."""
        b = self.budget
        gid, ch, floor = b.order(self.magnitude())
        masks = b.masks_for(gid, [ch[gid == i] for i in range(len(b.sizes))], floor)
        return b.dense_macs / max(1, b.macs_of(masks))

    def zero_pruned_weights(self) -> None:
        """Nothing to do: removed channels are zeroed at their producers' outputs by the hooks."""

    def kept(self) -> int:
        return int(sum(self.group_mask(i).sum().item() for i in range(len(self.groups))))

    def sparsity(self) -> float:
        """Fraction of group channels removed."""
        return 1.0 - self.kept() / self.total

    def macs(self) -> int:
        return self.macs_of([self.group_mask(i) for i in range(len(self.groups))])

    def stats(self) -> list[LayerStats]:
        """Per conv/linear layer: output channels kept of total."""
        removed: dict[str, int] = {}
        for i, g in enumerate(self.groups):
            r = self.group_mask(i).cpu() == 0
            for mem in g.members:
                if mem.side == "out" and mem.name in self.costs:
                    removed[mem.name] = removed.get(mem.name, 0) + int(r[mem.root_idxs].sum())
        return [LayerStats(n, c.out_channels, c.out_channels - removed.get(n, 0)) for n, c in self.costs.items()]

    def masks(self) -> dict[str, torch.Tensor]:
        """Group masks keyed by their root layer: what compaction needs, and all it needs."""
        return {g.root: self.group_mask(i).detach().to("cpu", torch.bool).clone() for i, g in enumerate(self.groups)}

    def baked(self, net: nn.Module) -> nn.Module:
        """A physically smaller copy of net: removed channels are gone, not zero."""
        return compact(net, self.masks(), self._example)


    def mask_state(self) -> dict[str, torch.Tensor]:
        """Scores, masks and fixed widths live here, not in the network."""
        return self.state_dict()

    def load_mask_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)
