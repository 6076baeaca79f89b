"""--amp: the forward runs in bf16/fp16 while scores, masks, their top-k and the prompt stay fp32.
CPU autocast runs the same code path as CUDA's here (only the device type differs)."""
from __future__ import annotations

import pytest
import torch

from vpns_deploy.amp import Amp, resolve_amp
from vpns_deploy.errors import UserError
from vpns_deploy.masks import MaskSet
from vpns_deploy.models.digits_cnn import DigitsCNN
from vpns_deploy.models.registry import get_arch
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt
from vpns_deploy.trainer import StagePlan, train_step


def test_auto_is_off_on_the_cpu_and_bad_names_are_refused():
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UserError, match="unknown --amp 'fp8'"):
        resolve_amp("fp8", torch.device("cpu"))


def _stage1(precision: str):
    torch.manual_seed(0)
    net = DigitsCNN()
    masks = MaskSet.attach(net, 0.9)
    masks.init_scores_scaled()
    masks.update_from_scores()
    prompt = VisualPrompt(PromptSpec("pad", 1, (8, 8), 1))
    model = PromptedNet(net, get_arch("digits_cnn").inputs, prompt)
    for p in model.parameters():
        p.requires_grad_(False)
    masks.set_scores_trainable(True)
    prompt.delta.requires_grad_(True)
    opts = [(torch.optim.Adam(masks.scores(), lr=1e-2), None), (torch.optim.Adam([prompt.delta], lr=1e-2), None)]
    plan = StagePlan("mask", 1, opts, ("prompted", "plain"), after_step=masks.update_from_scores)
    return model, masks, plan, Amp(precision, "cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_step_keeps_masks_scores_and_prompt_in_fp32(precision):
    model, masks, plan, amp = _stage1(precision)
    before = [s.detach().clone() for s in masks.scores()]
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    train_step(model, plan, x, y, False, amp)  # the plain pass: the prompt's optimiser has no gradient
    assert model.prompt.delta.abs().sum() == 0
    loss, logits = train_step(model, plan, x, y, True, amp)
    assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]  # autocast ran
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(s.dtype == torch.float32 and m.mask.dtype == torch.float32 for _, m in masks.layers for s in [m.scores])
    assert model.prompt.delta.dtype == torch.float32 and model.prompt.delta.abs().sum() > 0  # the prompt stepped
    assert any(not torch.equal(a, s) for a, s in zip(before, masks.scores()))  # the scores stepped
    kept = sum(int(m.mask.sum()) for _, m in masks.layers)
    assert kept == masks._keep_count(0.9)  # top-k in fp32: the exact count
    assert (amp.scaler is not None) == (precision == "fp16")


def test_fp16_scaler_state_survives_a_checkpoint():
    model, _, plan, amp = _stage1("fp16")
    for _ in range(3):
        train_step(model, plan, torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)), True, amp)
    state = amp.state_dict()
    assert state["_growth_tracker"] == 3  # three finite steps counted towards the next scale growth
    restored = Amp("fp16", "cpu")
    restored.load_state_dict(state)
    assert restored.state_dict() == state and restored.scaler.get_scale() == amp.scaler.get_scale()
    assert Amp("off", "cpu").state_dict() is None and not Amp("off", "cpu").enabled


def test_a_small_prompt_survives_bf16_autocast_at_the_first_layer():
    """The prompt adds about 1e-3 of the [0, 1] range to the image: under bf16 autocast the first layer
    would see most of it rounded away; Amp.autocast(model) runs that layer in fp32, so it sees all of it."""
    from vpns_deploy.amp import Amp, first_layer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    x = 0.5 + 0.5 * torch.rand(4, 3, 16, 16)  # normalised values near 1, where bf16 steps are 2^-8
    prompted = x + 1e-3
    seen = {}
    first_layer(net).register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))

    def first_out(inp, model=None) -> torch.Tensor:
        with Amp("bf16", "cpu").autocast(model):
            net(inp)
        return seen["out"]

    plain_diff = (first_out(prompted) - first_out(x)).abs()  # autocast alone: the input cast to bf16
    kept_diff = (first_out(prompted, net) - first_out(x, net)).abs()
    assert first_out(x, net).dtype == torch.float32
    assert (plain_diff == 0).float().mean() > 0.3  # most of the prompt rounded away
    assert (kept_diff > 0).float().mean() > 0.99
    with Amp("bf16", "cpu").autocast(net):  # the rest of the network still runs in bf16
        assert net(x).dtype == torch.bfloat16
    assert not first_layer(net)._forward_pre_hooks  # hooks removed on exit
