"""Schedules run over a stage's iterations: a one-epoch stage anneals and its prompt trains."""
import torch
from torch.optim import SGD, Adam

from vpns_deploy.schedules import cosine, multistep


def _lrs(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_epoch_prompt_multistep_drops_at_half_and_72_percent():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Adam([p], lr=1e-4)
    lrs = _lrs(opt, multistep(opt, epochs=1, steps_per_epoch=100), 100)
    assert lrs[0] == lrs[49] == 1e-4  # the prompt trains from the first step
    assert abs(lrs[50] - 1e-5) < 1e-12 and abs(lrs[72] - 1e-6) < 1e-12


def test_cosine_anneals_within_one_epoch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = SGD([p], lr=0.01)
    lrs = _lrs(opt, cosine(opt, epochs=1, steps_per_epoch=50), 50)
    assert lrs[0] == 0.01 and abs(lrs[25] - 0.005) < 1e-9 and lrs[-1] < 1e-4
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_multistep_never_at_step_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Adam([p], lr=1.0)
    lrs = _lrs(opt, multistep(opt, epochs=1, steps_per_epoch=1), 1)
    assert lrs == [1.0]
