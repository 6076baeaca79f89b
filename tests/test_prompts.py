"""Prompt geometry: which pixels each variant may touch, and what export folds in."""
from __future__ import annotations

import pytest
import torch

from vpns_deploy.errors import UserError
from vpns_deploy.prompts import PromptSpec, VisualPrompt


def test_pad_prompt_is_an_exact_noop_at_init():
    p = VisualPrompt(PromptSpec("pad", 3, (32, 32), 2))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(p(x), x)
    assert int(p.region.sum()) == 32 * 32 - 28 * 28


def test_expand_pads_the_image_and_learns_only_the_border():
    p = VisualPrompt(PromptSpec("expand", 3, (32, 32), 4))
    x = torch.rand(2, 3, 32, 32)
    y = p(x)
    assert y.shape == (2, 3, 40, 40)
    assert torch.equal(y[..., 4:36, 4:36], x)  # centre untouched
    assert torch.allclose(y[..., :4, :], torch.full_like(y[..., :4, :], 0.5))  # sigmoid(0) on zero padding


def test_fix_prompt_square_matches_pad_parameter_count():
    spec = PromptSpec("fix", 3, (32, 32), 2)
    assert abs(spec.square**2 - (4 * 2 * 32 - 4 * 4)) <= 2 * spec.square
    p = VisualPrompt(spec)
    assert int(p.region.sum()) == spec.square**2


def test_random_prompt_is_random_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    p = VisualPrompt(PromptSpec("random", 3, (32, 32), 2))
    x = torch.zeros(1, 3, 32, 32)
    outs = {tuple(p(x)[0, 0].nonzero()[0].tolist()) for _ in range(10)}
    assert len(outs) > 1
    p.eval()
    assert torch.equal(p(x), p(x))
    # The eval-time mask is the coverage probability of the training-time square.
    p.train()
    p.delta.data.fill_(10.0)  # sigmoid ~ 1, so the added value is the mask itself
    mean = torch.stack([p(x)[0, 0] for _ in range(3000)]).mean(0)
    assert torch.allclose(mean, p.region[0], atol=0.05)


def test_pad_larger_than_half_the_image_is_refused():
    with pytest.raises(UserError, match="--pad"):
        VisualPrompt(PromptSpec("pad", 3, (8, 8), 5))
