"""The sparsifier interface: every registered granularity keeps the same lifecycle on a real network,
and methods and modes are found in their registries (unknown names are one-line errors)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from vpns_deploy.config import FIXED_MASK_METHODS, METHODS, CompressConfig, parse_mode
from vpns_deploy.errors import UserError
from vpns_deploy.models import load_model
from vpns_deploy.prompts import PromptedNet, VisualPrompt
from vpns_deploy.compress import build_prompt_spec
from vpns_deploy.sparsity.granularity import Granularity
from vpns_deploy.sparsity.methods import METHOD_REGISTRY, Method, get_method
from vpns_deploy.sparsity.modes import MODES, granularity_for
from vpns_deploy.stage_plans import StagePlans


class UserConv(nn.Conv2d):
    """A user's Conv2d subclass: masked like any Conv2d, never skipped for its type."""


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        UserConv(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        UserConv(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8),
    ).eval()


def _cfg(mode: str, method: str = "hydra") -> CompressConfig:
    # channel: blocks of 4 of the 16-channel groups, so half of each can go; l1 keeps the init quick
    return CompressConfig(method=method, mode=mode, sparsity=0.5, channel_round_to=4, channel_init="l1")


def _attach(mode: str, method: str = "hydra") -> tuple[nn.Module, nn.Module, Granularity]:
    """(dense copy, masked net, its mask set) for one registered granularity."""
    net = _tiny_net()
    granularity = granularity_for(mode)
    granularity.prepare_network(net)
    dense = copy.deepcopy(net)
    return dense, net, granularity.from_config(net, _cfg(mode, method), torch.zeros(1, 4, 8, 8))


def _nonzero(net: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in net.parameters())


@pytest.mark.parametrize("mode", [spec.example for spec in MODES])
def test_every_granularity_keeps_the_lifecycle_contract(mode):
    x = torch.rand(6, 4, 8, 8)
    dense, net, masks = _attach(mode)
    # 1. prepare: every mask starts at ones, so the network is unchanged
    assert isinstance(masks, Granularity)
    with torch.no_grad():
        assert torch.allclose(net(x), dense(x), atol=1e-6)
    # 2. init scores -> the first mask at the budget; the Conv2d subclass is pruned like any conv
    masks.init_scores()
    masks.update_from_scores()
    assert masks.sparsity() == pytest.approx(0.5, abs=0.02)
    stats = {s.name: s for s in masks.stats()}
    assert all(stats[name].kept < stats[name].total for name in ("0", "3"))  # both UserConv layers
    # 3. update: scores learn through the mask (straight-through) and a new ranking moves the mask
    masks.set_scores_trainable(True)
    net(x).sum().backward()
    assert any(s.grad is not None and bool(s.grad.abs().sum() > 0) for s in masks.scores())
    first = masks.masks()
    with torch.no_grad():
        for s in masks.scores():
            s.copy_(torch.rand_like(s))
    masks.update_from_scores()
    assert any(not torch.equal(first[k], v) for k, v in masks.masks().items())
    # 4. freeze: nothing learns any more, and the mask's removals are final
    masks.freeze()
    assert not any(s.requires_grad for s in masks.scores())
    # 5. compact: a plain network (no parametrizations, no hooks) with the masked network's outputs
    baked = masks.baked(net).eval()
    assert not any(parametrize.is_parametrized(m) or m._forward_hooks for m in baked.modules())
    with torch.no_grad():
        assert torch.allclose(baked(x), net(x), atol=1e-5)
    assert _nonzero(baked) < _nonzero(dense)
    assert all(v.dtype == torch.bool and v.device.type == "cpu" for v in masks.masks().values())


@pytest.mark.parametrize("mode", [spec.example for spec in MODES])
def test_every_granularity_resumes_from_the_network_state_plus_its_mask_state(mode):
    _, net, masks = _attach(mode)
    masks.init_scores()
    with torch.no_grad():
        for s in masks.scores():
            s.copy_(torch.rand_like(s))
    masks.update_from_scores()
    _, net2, masks2 = _attach(mode)
    net2.load_state_dict(net.state_dict())
    masks2.load_mask_state(masks.mask_state())
    assert masks2.masks().keys() == masks.masks().keys()
    assert all(torch.equal(masks2.masks()[k], v) for k, v in masks.masks().items())
    x = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(net2(x), net(x))


def test_methods_come_from_the_registry_and_name_only_registered_modes():
    assert METHODS == METHOD_REGISTRY.names() == ("vpns", "hydra", "magnitude", "tp-groupnorm")
    assert FIXED_MASK_METHODS == tuple(m.name for m in METHOD_REGISTRY if m.fixed_mask)
    for method in METHOD_REGISTRY:
        assert isinstance(method, Method) and get_method(method.name) is method
        assert all(mode in MODES for mode in method.modes or ())
    assert [m.name for m in METHOD_REGISTRY if m.uses_prompt] == ["vpns"]


@pytest.mark.parametrize("bad, expected", [
    (dict(method="obd"), "unknown method 'obd'; choose one of vpns, hydra, magnitude, tp-groupnorm"),
    (dict(mode="diagonal"), "unknown mode 'diagonal'; pass --mode unstructured, channel, or N:M such as 2:4"),
    (dict(mode="2:2"), "unknown mode '2:2': N:M keeps N of every M"),
    (dict(method="tp-groupnorm", mode="2:4"), "--method tp-groupnorm prunes whole channels"),
    (dict(method="hydra", epochs_mask=0), "hydra needs at least one mask-finding epoch"),
])
def test_an_unknown_or_unfit_method_or_mode_is_a_one_line_error(bad, expected):
    with pytest.raises(UserError) as info:
        CompressConfig(**bad)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_parse_mode_finds_each_registered_granularity_by_its_example():
    assert [parse_mode(spec.example)[0] for spec in MODES] == list(MODES.names())
    assert parse_mode("1:8") == ("nm", (1, 8))


def test_tp_groupnorm_starts_from_torch_pruning_and_refuses_a_weight_mask():
    _, _, channel = _attach("channel", "tp-groupnorm")
    get_method("tp-groupnorm").start(channel)
    assert 0 < channel.sparsity() <= 0.5 + 1e-6  # Torch-Pruning's own stopping point, at most the budget
    _, _, weights = _attach("unstructured")
    with pytest.raises(UserError, match="prunes whole channels"):
        get_method("tp-groupnorm").start(weights)


@pytest.mark.parametrize("name", METHODS)
def test_each_method_builds_its_stages_over_the_shared_plans(name, digits_model, digits_splits):
    cfg = CompressConfig(method=name, mode="channel" if name == "tp-groupnorm" else "unstructured",
                         sparsity=0.5, epochs_mask=2, epochs_tune=3, batch_size=64, channel_round_to=4)
    method = get_method(name)
    loaded = load_model(digits_model, "digits_cnn", 10)
    masks = granularity_for(cfg.mode).from_config(loaded.net, cfg, torch.zeros(1, *digits_splits.train.image_shape))
    prompt = VisualPrompt(build_prompt_spec(cfg, digits_splits.train.image_shape)) if method.uses_prompt else None
    plans = StagePlans(PromptedNet(loaded.net, loaded.inputs, prompt), masks, cfg, 10)
    made = [make() for make in method.stage_plans(plans, cfg)]
    expected = [("tune", 5)] if method.fixed_mask else [("mask", 2), ("tune", 3)]
    assert [(p.name, p.epochs) for p in made] == expected
    assert cfg.tune_epochs_effective == expected[-1][1]
    assert all(p.passes == (("prompted", "plain") if method.uses_prompt else ("plain",)) for p in made)
