"""The two VPNs stages on real data: what each trains, what it must leave alone."""
from __future__ import annotations

import copy

import pytest
import torch

from vpns_deploy.compress import build_prompt_spec, compress
from vpns_deploy.stage_plans import mask_stage, score_lr, tune_stage
from vpns_deploy.config import REFERENCE_LR_SCORES, CompressConfig, OptimConfig, auto_lr_scores
from vpns_deploy.data.batches import num_batches
from vpns_deploy.errors import UserError
from vpns_deploy.masks import MaskSet
from vpns_deploy.models import load_model
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet, VisualPrompt
from vpns_deploy.trainer import run_stage

CPU = torch.device("cpu")


def _setup(digits_model, digits_splits, method="vpns"):
    cfg = CompressConfig(method=method, sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64)
    loaded = load_model(digits_model, "digits_cnn", 10)
    masks = MaskSet.attach(loaded.net)
    prompt = VisualPrompt(build_prompt_spec(cfg, digits_splits.train.image_shape)) if cfg.uses_prompt else None
    model = PromptedNet(loaded.net, loaded.inputs, prompt)
    masks.init_scores_scaled()
    masks.update_from_scores(cfg.sparsity)
    return cfg, model, masks


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_trains_scores_and_prompt_with_weights_frozen(digits_model, digits_splits):
    cfg, model, masks = _setup(digits_model, digits_splits)
    before = _snapshot(model)
    plan = mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), cfg.batch_size))
    hist = run_stage(model, plan, digits_splits, cfg.batch_size, CPU, cfg.seed, Reporter(quiet=True))
    after = _snapshot(model)
    weights = [k for k in before if k.endswith(("weight", "bias")) and "prompt" not in k]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)  # conv, linear, BN affine
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))  # BN drifts
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("scores"))
    assert not torch.equal(before["prompt.delta"], after["prompt.delta"])
    # The record says how far the prompt moved: mean |prompt| over its frame, in pixel units.
    frame = model.prompt.region.expand_as(model.prompt.delta) > 0
    assert hist[0].prompt_mean_abs == pytest.approx(float(after["prompt.delta"].abs()[frame].mean()))
    assert hist[0].prompt_mean_abs > 0
    assert masks.sparsity() == pytest.approx(0.8, abs=1e-4)
    steps = -(-len(digits_splits.train) // cfg.batch_size)
    assert hist[0].optimizer_steps == 2 * steps  # prompted + un-prompted pass per batch


def test_stage2_keeps_mask_fixed_and_pruned_weights_exactly_zero(digits_model, digits_splits):
    cfg, model, masks = _setup(digits_model, digits_splits)
    run_stage(model, mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), 64)), digits_splits, 64, CPU, 0, Reporter(quiet=True))
    mask_before = masks.masks()
    scores_before = [s.detach().clone() for s in masks.scores()]
    kept_before = [m.weight[m.mask.bool()].clone() for _, m in masks.layers]
    run_stage(model, tune_stage(model, masks, cfg, 2), digits_splits, 64, CPU, 0, Reporter(quiet=True))
    mask_after = masks.masks()
    assert all(torch.equal(mask_before[k], mask_after[k]) for k in mask_before)
    assert all(torch.equal(a, b) for a, b in zip(scores_before, masks.scores()))
    for _, m in masks.layers:
        assert torch.count_nonzero(m.weight[~m.mask.bool()]) == 0
    assert any(not torch.equal(a, m.weight[m.mask.bool()]) for a, (_, m) in zip(kept_before, masks.layers))


def test_pad_prompt_changes_only_the_frame(digits_model, digits_splits):
    cfg, model, masks = _setup(digits_model, digits_splits)
    run_stage(model, mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), 64)), digits_splits, 64, CPU, 0, Reporter(quiet=True))
    p = model.prompt
    pad = p.spec.pad
    add = p.additive()
    assert add.abs().sum() > 0
    assert torch.count_nonzero(add[:, pad:-pad, pad:-pad]) == 0
    x = torch.rand(3, 1, 8, 8) * 0.5 + 0.25
    y = p(x)
    assert torch.equal(y[..., pad:-pad, pad:-pad], x[..., pad:-pad, pad:-pad])
    assert not torch.equal(y, x)


def test_hydra_has_no_prompt_and_one_step_per_batch(digits_model, digits_splits):
    cfg = CompressConfig(method="hydra", sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64)
    loaded = load_model(digits_model, "digits_cnn", 10)
    result = compress(loaded, digits_splits, cfg, CPU, Reporter(quiet=True))
    assert result.model.prompt is None
    steps = -(-len(digits_splits.train) // 64)
    assert [r.optimizer_steps for r in result.history] == [steps, steps]
    assert [r.test_acc_prompted for r in result.history] == [None, None]
    assert [r.prompt_mean_abs for r in result.history] == [None, None]
    # No --lr-scores: the score rate follows the stage-1 step count (one pass per batch for HYDRA).
    assert result.history[0].lr["0"] == pytest.approx(auto_lr_scores(steps))


def test_default_score_lr_is_the_references_at_its_budget_and_larger_for_short_stages():
    assert auto_lr_scores(30 * 392) == REFERENCE_LR_SCORES  # 30 epochs of CIFAR at batch 256, two passes
    assert auto_lr_scores(392) == pytest.approx(1e-3)  # the measured 1-2 epoch stage (0.4 / 392, capped)
    assert auto_lr_scores(1000) == pytest.approx(4e-4)  # lr x steps = 0.4 between the bounds
    assert auto_lr_scores(3) == 1e-3  # a few noisy steps never reshuffle the mask: capped
    masks = MaskSet.attach(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    vpns, hydra = CompressConfig(epochs_mask=1), CompressConfig(method="hydra", epochs_mask=2)
    assert score_lr(masks, vpns, 196) == score_lr(masks, hydra, 196)  # same steps, same rate
    given = CompressConfig(optim=OptimConfig(lr_scores=5e-4))
    assert score_lr(masks, given, 196) == 5e-4


def test_magnitude_spends_the_whole_budget_on_tuning(digits_model, digits_splits):
    cfg = CompressConfig(method="magnitude", sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64)
    result = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, CPU, Reporter(quiet=True))
    assert [r.stage for r in result.history] == ["tune", "tune"]
    assert result.masks.sparsity() == pytest.approx(0.8, abs=1e-4)


def test_same_seed_same_result(digits_model, digits_splits):
    def once():
        cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=128)
        res = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, CPU, Reporter(quiet=True))
        return res.masks.masks(), copy.deepcopy(res.model.prompt.delta.detach())

    (m1, p1), (m2, p2) = once(), once()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert torch.equal(p1, p2)


def test_mask_batches_fraction_shortens_only_stage_1_and_its_score_rate_follows(digits_model, digits_splits):
    """The split of a run's optimiser steps between the stages, finer than whole epochs."""
    cfg = CompressConfig(method="hydra", sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64,
                         mask_batches_fraction=0.5)
    result = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, CPU, Reporter(quiet=True))
    steps = -(-len(digits_splits.train) // 64)
    assert [r.optimizer_steps for r in result.history] == [round(steps / 2), steps]
    assert result.history[0].lr["0"] == pytest.approx(auto_lr_scores(round(steps / 2)))
    assert result.stage_plans["mask"]["batches_per_epoch"] == round(steps / 2)
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match="mask_batches_fraction"):
            CompressConfig(mask_batches_fraction=bad)


def test_zero_prompt_control_keeps_the_prompt_exactly_zero_but_runs_both_passes(digits_model, digits_splits):
    """The transfer benchmark's control: everything as VPNs except that the prompt never moves."""
    loaded = load_model(digits_model, "digits_cnn", 10)
    cfg = CompressConfig(sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64, prompt_trainable=False)
    result = compress(loaded, digits_splits, cfg, CPU, Reporter(quiet=True))
    assert torch.count_nonzero(result.model.prompt.delta) == 0
    steps = -(-len(digits_splits.train) // cfg.batch_size)
    assert [r.optimizer_steps for r in result.history] == [2 * steps, 2 * steps]
    assert "prompt" not in result.stage_plans["mask"]["trains"]


@pytest.mark.parametrize("trains_in", ["mask", "tune"])
def test_prompt_moves_only_in_the_stage_prompt_trains_in_names(digits_model, digits_splits, trains_in):
    """The "which stage the prompt trains in" probe: the other stage still runs both passes, but no
    optimiser holds the prompt and it gets no gradient, so it ends that stage exactly as it began it."""
    from dataclasses import replace

    cfg, model, masks = _setup(digits_model, digits_splits)
    cfg = replace(cfg, prompt_trains_in=trains_in)
    moved = {}
    for stage in ("mask", "tune"):
        before = model.prompt.delta.detach().clone()
        plan = (mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), 64)) if stage == "mask"
                else tune_stage(model, masks, cfg, 1))
        hist = run_stage(model, plan, digits_splits, 64, CPU, 0, Reporter(quiet=True))
        moved[stage] = not torch.equal(before, model.prompt.delta)
        assert ("prompt" in plan.describe["trains"]) == (stage == trains_in)
        assert hist[0].optimizer_steps == 2 * num_batches(len(digits_splits.train), 64)  # both passes
    assert moved == {"mask": trains_in == "mask", "tune": trains_in == "tune"}
    with pytest.raises(Exception, match="unknown prompt_trains_in"):
        replace(cfg, prompt_trains_in="never")


def test_paper_hydra_score_optimizer_is_sgd(digits_model, digits_splits):
    cfg, model, masks = _setup(digits_model, digits_splits, method="hydra")
    cfg = CompressConfig(method="hydra", sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64,
                         optim=OptimConfig(score_optimizer="sgd", lr_scores=0.01))
    plan = mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), cfg.batch_size))
    assert type(plan.optimizers[0][0]).__name__ == "SGD" and plan.describe["score_optimizer"] == "sgd"
    before = [s.detach().clone() for s in masks.scores()]
    run_stage(model, plan, digits_splits, cfg.batch_size, CPU, cfg.seed, Reporter(quiet=True))
    assert any(not torch.equal(b, s) for b, s in zip(before, masks.scores()))


def test_bn_recalibration_matches_the_exact_statistics_of_the_images(digits_model, digits_splits):
    """After a mask moves, re-estimated statistics are those of the masked network on training images."""
    from torch import nn

    from vpns_deploy.batchnorm import recalibrate_bn
    from vpns_deploy.data.batches import to_unit_float

    cfg, model, masks = _setup(digits_model, digits_splits, method="hydra")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    first = bns[0]
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model(to_unit_float(digits_splits.train.images), prompted=False)  # upstream of BN 1 has no BN
    hook.remove()
    x = seen[0]
    n = len(digits_splits.train)
    used = recalibrate_bn(model, digits_splits.train, n, n, CPU, seed=0)  # one batch: exact mean and var
    assert used == n
    assert torch.allclose(first.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert all(m.momentum == 0.1 for m in bns)  # restored
    assert not model.training  # the mode it was in


def test_every_epoch_is_evaluated_with_recalibrated_statistics(digits_model, digits_splits):
    """bn_images > 0: the stage ends with statistics re-estimated on the final network, not momentum's,
    from training images augmented as in training (un-augmented ones give other statistics)."""
    from vpns_deploy.batchnorm import recalibrate_bn

    cfg, model, masks = _setup(digits_model, digits_splits, method="hydra")
    plan = mask_stage(model, masks, cfg, num_batches(len(digits_splits.train), 64))
    plan.bn_images = 300
    run_stage(model, plan, digits_splits, 64, CPU, cfg.seed, Reporter(quiet=True))
    after = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")}
    recalibrate_bn(model, digits_splits.train, 300, 64, CPU, cfg.seed + plan.epochs, policy=digits_splits.augment)
    again = {k: v for k, v in model.state_dict().items() if k.endswith("running_mean")}
    assert all(torch.allclose(after[k], again[k], atol=1e-6) for k in after)
    recalibrate_bn(model, digits_splits.train, 300, 64, CPU, cfg.seed + plan.epochs)  # un-augmented
    clean = {k: v for k, v in model.state_dict().items() if k.endswith("running_mean")}
    assert not all(torch.allclose(after[k], clean[k], atol=1e-6) for k in after)


def test_distillation_loss_known_answers(digits_model, digits_splits):
    """alpha 0 is plain cross-entropy; a student equal to its teacher has zero soft loss."""
    import torch.nn.functional as F

    from vpns_deploy.distill import Distiller

    loaded = load_model(digits_model, "digits_cnn", 10)
    teacher = PromptedNet(copy.deepcopy(loaded.net), loaded.inputs, None)
    x = digits_splits.train.images[:32].float() / 255
    y = digits_splits.train.labels[:32]
    with torch.no_grad():
        same = teacher.eval()(x, prompted=False)
    assert Distiller(teacher, 4.0, 1.0).loss(same, x, y).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn_like(same)
    assert Distiller(teacher, 4.0, 0.0).loss(other, x, y).item() == pytest.approx(F.cross_entropy(other, y).item())
    assert Distiller(teacher, 4.0, 1.0).loss(other, x, y).item() > 0.01


def test_distill_runs_stage2_from_the_dense_teacher(digits_model, digits_splits):
    """--distill: stage 2 records its loss, the teacher stays dense, the result differs from plain CE."""
    base = CompressConfig(method="hydra", sparsity=0.8, epochs_mask=1, epochs_tune=1, batch_size=64, bn_images=0)
    plain = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, base, CPU, Reporter(quiet=True))
    from dataclasses import replace

    cfg = replace(base, distill=True)
    result = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, CPU, Reporter(quiet=True))
    assert "KL(dense teacher" in result.stage_plans["tune"]["loss"]
    assert "cross-entropy" == plain.stage_plans["tune"]["loss"]
    w_plain = dict(plain.model.net.named_parameters())
    w_kd = dict(result.model.net.named_parameters())
    assert any(not torch.equal(w_plain[k], w_kd[k]) for k in w_kd if not k.endswith("scores"))
    assert result.history[-1].test_acc_plain > 0.5


def test_distillation_is_off_unless_asked_and_the_flags_decide(digits_model, digits_splits):
    """No method distils by default (magnitude + fine-tune loses 3.5 points with it at 70 %, docs/benchmarks.md);
    --distill turns it on for any method, and the stage plan says which loss ran."""
    from dataclasses import replace

    assert not any(CompressConfig(method=m).distill for m in ("magnitude", "vpns", "hydra"))
    assert CompressConfig(method="magnitude", distill=True).distill and CompressConfig(distill=True).distill
    cfg = CompressConfig(method="magnitude", sparsity=0.8, epochs_mask=0, epochs_tune=1, batch_size=64, bn_images=0)
    result = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, CPU, Reporter(quiet=True))
    assert result.stage_plans["tune"]["loss"] == "cross-entropy"
    on = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, replace(cfg, distill=True), CPU,
                  Reporter(quiet=True))
    assert "KL(dense teacher" in on.stage_plans["tune"]["loss"]
