"""Channel mode: coupled groups, masks that equal removal, physical compaction, MACs, --speedup."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from vpns_deploy.channels import ChannelMaskSet
from vpns_deploy.macs import count_macs, layer_costs
from vpns_deploy.models.cifar_resnet import ChannelCopyConv, CifarResNet, PadShortcut, shortcuts_as_convs


def _randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine, so a wrongly kept or dropped channel shows."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _resnet20_conv_shortcuts(seed: int = 0) -> nn.Module:
    """A seeded random ResNet-20 with its option-A shortcuts as 0/1 convs (what channel mode prunes)."""
    torch.manual_seed(seed)
    net = CifarResNet(20)
    shortcuts_as_convs(net)
    return net


def _masked_vs_compacted(net: nn.Module, images: torch.Tensor, random_scores: bool = False,
                         **kw) -> tuple[ChannelMaskSet, nn.Module, float]:
    net.eval()
    masks = ChannelMaskSet(net, images[:1], **kw)
    if random_scores:  # any channel of any group may go, residual streams included
        masks.select([torch.rand(n) for n in masks.sizes])
    else:
        masks.init_scores_scaled()
        masks.update_from_scores()
    with torch.no_grad():
        masked = net(images)
    small = masks.baked(net).eval()
    with torch.no_grad():
        diff = (small(images) - masked).abs().max().item()
    return masks, small, diff


def test_channel_copy_conv_equals_the_pad_shortcut():
    x = torch.randn(3, 16, 8, 8)
    pad = PadShortcut(32)
    conv = ChannelCopyConv(16, 32, pad.pad)
    assert torch.equal(conv(x), pad(x))
    assert not conv.weight.requires_grad


def test_resnet20_groups_cover_the_residual_streams_separately():
    net = CifarResNet(20)
    assert shortcuts_as_convs(net) == 2
    masks = ChannelMaskSet(net, torch.zeros(1, 3, 32, 32))
    sizes = sorted(g.size for g in masks.groups)
    # 9 block-internal groups (16/32/64) + 3 streams, one per stage (not merged into one group).
    assert sizes == [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64]
    stream = next(g for g in masks.groups if g.root == "conv1")
    members = {m.name for m in stream.members}
    assert {"bn1", "layer1.0.bn2", "layer1.2.conv2", "layer2.0.shortcut", "layer2.0.conv1"} <= members
    assert not any(n.startswith("layer2.1") for n in members)


@pytest.mark.parametrize("seed", [0, 1])
def test_compaction_equals_masking_on_resnet20_random_weights(seed):
    net = _resnet20_conv_shortcuts(seed)
    _randomise_bn(net, seed)
    images = torch.rand(16, 3, 32, 32) * 4 - 2
    masks, small, diff = _masked_vs_compacted(net, images, random_scores=True, sparsity=0.5)
    assert diff <= 1e-4
    # The residual streams really shrank, and the result holds plain layers only.
    assert small.conv1.out_channels < 16 and small.linear.in_features < 64
    assert small.linear.out_features == 10
    assert not any(hasattr(m, "scores") or hasattr(m, "mask") for m in small.modules())
    assert not any(m._forward_hooks for m in small.modules())


def test_compaction_equals_masking_on_pretrained_resnet20(resnet20_path, cifar_splits):
    from vpns_deploy.models import load_model
    from vpns_deploy.prompts import PromptedNet

    loaded = load_model(resnet20_path, "cifar_resnet20", 10)
    net = loaded.net
    shortcuts_as_convs(net)
    x = cifar_splits.test.images[:32].float() / 255  # real test images in [0, 1]
    normalised = PromptedNet(nn.Identity(), loaded.inputs, None)(x)
    masks, small, diff = _masked_vs_compacted(net, normalised, speedup=2.0)
    assert diff <= 1e-4
    assert masks.sparsity() > 0.1


def test_compaction_of_a_fully_frozen_network_keeps_its_flags():
    """Stage 1 alone (--epochs-tune 0) leaves every weight frozen: compaction must still trace it."""
    net = _resnet20_conv_shortcuts()
    for p in net.parameters():
        p.requires_grad_(False)
    images = torch.rand(4, 3, 32, 32)
    _, small, diff = _masked_vs_compacted(net, images, sparsity=0.5)
    assert diff <= 1e-4
    assert not any(p.requires_grad for p in small.parameters())
    assert not small.layer2[0].shortcut.weight.requires_grad


def test_compaction_equals_masking_on_torchvision_resnet18():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    _randomise_bn(net)
    images = torch.randn(4, 3, 64, 64)
    # init "l1": what is tested is compaction, not the initial mask (Torch-Pruning's pruner costs ~15 s here)
    masks, small, diff = _masked_vs_compacted(net, images, sparsity=0.4, init="l1")
    assert diff <= 1e-4
    assert small.conv1.out_channels < 64 and small.fc.out_features == 10
    assert count_macs(small, images) < count_macs(net, images) * 0.8


def test_mac_count_matches_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    x = torch.zeros(1, 3, 32, 32)
    hand = 8 * 3 * 9 * 32 * 32 + 16 * 8 * 9 * 16 * 16 + 16 * 1 * 9 * 16 * 16 + 16 * 10
    assert count_macs(net, x) == hand
    assert len(layer_costs(net, x)) == 4


def test_mask_mac_estimate_equals_the_compacted_count():
    net = _resnet20_conv_shortcuts()
    x = torch.randn(2, 3, 32, 32)
    masks = ChannelMaskSet(net, x, sparsity=0.6, round_to=1)
    masks.init_scores_scaled()
    masks.update_from_scores()
    assert masks.macs() == count_macs(masks.baked(net), x)


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_speedup_reaches_the_requested_mac_reduction(target):
    torch.manual_seed(0)
    net = CifarResNet(56)
    x = torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(net, x)  # the user's network, option-A shortcuts (0 MACs)
    shortcuts_as_convs(net)
    # init "l1": the budget's selection decides the MACs reached, whatever the scores (the group-norm
    # init, tested below, would spend ~20 s in Torch-Pruning's pruner per target)
    masks = ChannelMaskSet(net, x, sparsity=None, speedup=target, init="l1")
    masks.init_scores_scaled()
    masks.update_from_scores()
    achieved = dense_macs / count_macs(masks.baked(net), x)
    assert achieved == pytest.approx(target, rel=0.03)
    assert achieved >= target * 0.999  # never short of the target by more than rounding


def test_initial_mask_is_torch_prunings_group_norm_result():
    """Scores start at the mask Torch-Pruning's own iterative pruner reaches (independently run here)."""
    import torch_pruning as tp

    from vpns_deploy.channels import head_layers

    torch.manual_seed(0)
    net = CifarResNet(20)
    _randomise_bn(net)
    x = torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(net, x)
    shortcuts_as_convs(net)
    reference = copy.deepcopy(net)
    pruner = tp.pruner.BasePruner(
        reference, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=1.0, max_pruning_ratio=0.9, iterative_steps=400, ignored_layers=head_layers(reference, x),
        round_to=16)
    while count_macs(reference, x) > dense_macs / 2:
        pruner.step()
    masks = ChannelMaskSet(net, x, sparsity=None, speedup=2.0, round_to=16)
    masks.init_scores_scaled()
    masks.update_from_scores()
    small = masks.baked(net)
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    ref_widths = {n: m.out_channels for n, m in reference.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths == ref_widths
    # The same channels, not only the same counts: the weights left are the same.
    for (n, a), b in zip(small.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), n
    # Kept channels outrank removed ones by construction, so the first mask is exactly that.
    for i, s in enumerate(masks.scores()):
        kept = masks.group_mask(i).bool()
        if (~kept).any():
            assert s[kept].min() > s[~kept].max()


def test_every_group_keeps_a_rounded_floor():
    net = _resnet20_conv_shortcuts()
    masks = ChannelMaskSet(net, torch.zeros(1, 3, 32, 32), sparsity=0.95, round_to=8)
    masks.init_scores_scaled()
    masks.update_from_scores()
    for i, g in enumerate(masks.groups):
        kept = int(masks.group_mask(i).sum())
        assert kept >= 8 and kept % 8 == 0, (g.root, kept)


def test_straight_through_gradient_reaches_channel_scores():
    net = _resnet20_conv_shortcuts()
    masks = ChannelMaskSet(net, torch.zeros(1, 3, 32, 32), sparsity=0.5)
    masks.init_scores_scaled()
    masks.update_from_scores()
    masks.set_scores_trainable(True)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    grads = [s.grad for s in masks.scores()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_channel_run_compacts_exports_and_reports(tmp_path, digits_model):
    """compress --mode channel --speedup on real digits: smaller model on disk, ORT parity, efficiency."""
    import json

    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from pipelines.load_run import load_run
    from pipelines.report_stage import run_report
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    out = tmp_path / "digits-channel"
    cfg = CompressConfig(mode="channel", speedup=1.5, budget_by="macs", epochs_mask=1, epochs_tune=1, batch_size=64,
                         channel_round_to=4)
    run_compress(digits_model, "digits_cnn", "digits", cfg, out, reporter=Reporter(quiet=True))
    manifest = json.loads((out / "manifest.json").read_text())
    structure = manifest["metrics"]["structure"]
    assert structure["macs_reduction"] == pytest.approx(1.5, rel=0.03)
    loaded = load_run(out)  # rebuilt from masks.pt + the compacted state dict, no masking code
    assert sum(p.numel() for p in loaded.compressed.parameters()) == structure["params"]["compressed"]
    assert structure["params"]["compressed"] < structure["params"]["dense"]
    baseline = manifest["metrics"]["baseline"]  # measured under a channel mask of the same MACs budget
    assert 0.0 <= baseline["test_top1"] <= 1.0 and baseline["below"] == (baseline["shipped_test_top1"] < baseline["test_top1"])
    # the prompt folded in whatever validation decided (since BN statistics follow training's augmentation,
    # validation prefers the plain digits network): parity must hold for the prompted compacted graph
    export = run_export(out, with_prompt=True, reporter=Reporter(quiet=True))
    assert export["graphs"]["model.onnx"]["prompt_folded"]
    assert export["graphs"]["model.onnx"]["parity"]["max_abs_diff"] <= 1e-3
    report = run_report(out, reporter=Reporter(quiet=True), print_table=False, latency_budget=1.0)
    assert report["macs_reduction"] == pytest.approx(structure["macs_reduction"], rel=0.02)
    assert set(report["speedup"]) == {"1", "64"}
    assert all(v["efficiency"] > 0 for v in report["speedup"].values())
    assert "MACs per image" in (out / "report.md").read_text()


def test_channel_init_choices():
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.errors import UserError

    with pytest.raises(UserError, match="channel_init"):
        CompressConfig(mode="channel", channel_init="random")
    net = _resnet20_conv_shortcuts()
    masks = ChannelMaskSet(net, torch.zeros(1, 3, 32, 32), sparsity=0.5, init="l1")
    masks.init_scores_scaled()
    for s, imp in zip(masks.scores(), masks.magnitude()):
        assert torch.allclose(s.mean(), torch.tensor(1.0)) and torch.equal(s.argsort(), imp.argsort())


def test_widths_init_keeps_each_groups_count_and_repicks_channels():
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.errors import UserError

    with pytest.raises(UserError, match="channel_widths"):
        CompressConfig(mode="channel", channel_widths="free")
    net = _resnet20_conv_shortcuts()
    masks = ChannelMaskSet(net, torch.zeros(1, 3, 32, 32), sparsity=0.5, round_to=4, widths="init")
    masks.init_scores_scaled()
    masks.update_from_scores()
    counts = [int(masks.group_mask(i).sum()) for i in range(len(masks.groups))]
    before = [masks.group_mask(i).clone() for i in range(len(masks.groups))]
    with torch.no_grad():
        for s in masks.scores():
            s.copy_(torch.rand_like(s))  # scores reshuffled, as stage 1 might
    masks.update_from_scores()
    assert [int(masks.group_mask(i).sum()) for i in range(len(masks.groups))] == counts
    assert any(not torch.equal(b, masks.group_mask(i)) for i, b in enumerate(before))
    for i, s in enumerate(masks.scores()):  # each group keeps its highest scores
        kept = masks.group_mask(i).bool()
        if (~kept).any():
            assert s[kept].min() >= s[~kept].max()


def test_tp_groupnorm_method_is_torch_prunings_mask_then_fine_tuning(digits_model, digits_splits):
    """--method tp-groupnorm: no mask stage, the group-norm mask at the budget, all epochs fine-tune;
    refused outside channel mode."""
    from vpns_deploy.compress import compress
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.errors import UserError
    from vpns_deploy.models import load_model
    from vpns_deploy.progress import Reporter

    with pytest.raises(UserError, match="--mode channel"):
        CompressConfig(method="tp-groupnorm", mode="unstructured")
    cfg = CompressConfig(method="tp-groupnorm", mode="channel", speedup=1.5, budget_by="macs", epochs_mask=1, epochs_tune=1,
                         batch_size=64, channel_round_to=4)
    loaded = load_model(digits_model, "digits_cnn", 10)
    reference = ChannelMaskSet(copy.deepcopy(loaded.net), torch.zeros(1, *digits_splits.train.image_shape),
                               sparsity=None, speedup=1.5, round_to=4)
    expected = [k.bool() for k in reference.group_norm_keep()]
    result = compress(loaded, digits_splits, cfg, torch.device("cpu"), Reporter(quiet=True))
    assert [r.stage for r in result.history] == ["tune", "tune"]  # epochs_mask + epochs_tune of fine-tuning
    for i, keep in enumerate(expected):
        assert torch.equal(result.masks.group_mask(i).bool().cpu(), keep)
    assert result.history[-1].test_acc_plain > 0.5


def test_channel_split_tune_is_the_default_one_batch_of_stage_1_then_all_epochs_tune(digits_model, digits_splits):
    """Channel mode's default split (channel_split "tune"): stage 1 runs exactly one batch and its epochs go
    to stage 2; "even" keeps the paper's split; other modes and fixed-mask methods are untouched."""
    from vpns_deploy.compress import compress
    from vpns_deploy.config import CompressConfig, config_from_dict
    from vpns_deploy.errors import UserError
    from vpns_deploy.models import load_model
    from vpns_deploy.progress import Reporter

    base = dict(mode="channel", speedup=1.5, budget_by="macs", epochs_mask=2, epochs_tune=1, batch_size=64, channel_round_to=4)
    assert CompressConfig(**base).channel_split == "tune"
    assert (CompressConfig(**base).mask_epochs, CompressConfig(**base).tune_epochs_effective) == (1, 3)
    assert CompressConfig(**{**base, "method": "hydra"}).tune_epochs_effective == 3
    assert CompressConfig(**{**base, "method": "magnitude"}).tune_epochs_effective == 3
    assert CompressConfig(**{**base, "channel_split": "even"}).tune_epochs_effective == 1
    assert CompressConfig(epochs_mask=2, epochs_tune=1).tune_epochs_effective == 1  # unstructured: unchanged
    with pytest.raises(UserError, match="channel_split"):
        CompressConfig(**{**base, "channel_widths": "learned"})
    with pytest.raises(UserError, match="channel_split"):
        CompressConfig(**{**base, "channel_split": "half"})
    recorded = CompressConfig(**{**base, "channel_split": "even"}).to_dict()
    del recorded["channel_split"]  # a run recorded before the field existed was made with the even split
    assert config_from_dict(recorded).channel_split == "even"

    def stages(cfg: CompressConfig) -> list[tuple[str, int]]:
        loaded = load_model(digits_model, "digits_cnn", 10)
        history = compress(loaded, digits_splits, cfg, torch.device("cpu"), Reporter(quiet=True)).history
        return [(r.stage, r.optimizer_steps, r.test_acc_plain is not None) for r in history]

    batches = -(-len(digits_splits.train) // 64)
    tune = stages(CompressConfig(**base))  # the one-batch stage 1 is not measured on the test split
    assert tune == [("mask", 2, False)] + [("tune", 2 * batches, False)] * 2 + [("tune", 2 * batches, True)]
    even = stages(CompressConfig(**{**base, "channel_split": "even"}))
    assert even == [("mask", 2 * batches, False), ("mask", 2 * batches, True), ("tune", 2 * batches, True)]
    tune, even = [t[:2] for t in tune], [t[:2] for t in even]
    assert sum(s for _, s in tune) == sum(s for _, s in even) + 2  # equal optimiser steps, plus that batch
