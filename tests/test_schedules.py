"""Per-epoch schedules; a one-epoch stage 1 trains its prompt at the set rate, not at 1e-6."""
import torch
from torch.optim import SGD, Adam

from vpns_deploy.schedules import cosine, multistep


def _lrs(opt, sched, epochs):
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_epoch_prompt_keeps_its_rate():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Adam([p], lr=1e-4)
    assert _lrs(opt, multistep(opt, epochs=1), 1) == [1e-4]


def test_long_stage_milestones_at_half_and_72_percent():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Adam([p], lr=1.0)
    lrs = _lrs(opt, multistep(opt, epochs=100), 100)
    assert lrs[49] == 1.0 and abs(lrs[50] - 0.1) < 1e-12 and abs(lrs[71] - 0.1) < 1e-12
    assert abs(lrs[72] - 0.01) < 1e-12


def test_cosine_per_epoch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = SGD([p], lr=0.01)
    lrs = _lrs(opt, cosine(opt, epochs=2), 2)
    assert lrs[0] == 0.01 and abs(lrs[1] - 0.005) < 1e-12
