"""Models: the CIFAR ResNets match the published checkpoints; checkpoints load safely."""
from __future__ import annotations

import pytest
import torch

from vpns_deploy.errors import UserError
from vpns_deploy.evaluate import top1
from vpns_deploy.models import load_model
from vpns_deploy.models.cifar_resnet import CifarResNet
from vpns_deploy.prompts import PromptedNet


@pytest.mark.shared
def test_pretrained_resnet20_reaches_published_accuracy_on_jpeg_test_split(resnet20_path, cifar_splits):
    loaded = load_model(resnet20_path, "cifar_resnet20", 10)
    assert loaded.sha256.startswith("12fca82f")
    acc = top1(PromptedNet(loaded.net, loaded.inputs, None), cifar_splits.test, torch.device("cpu"), prompted=False)
    assert len(cifar_splits.test) == 10_000
    assert acc == pytest.approx(0.8103, abs=0.003)  # independent evaluator: 81.03 %


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (56, 0.85e6)])
def test_cifar_resnet_sizes_match_the_readme(depth, params):
    n = sum(p.numel() for p in CifarResNet(depth).parameters())
    assert n == pytest.approx(params, rel=0.02)


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    net = CifarResNet(20)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(path, "cifar_resnet20", 10)
    assert torch.equal(loaded.net.conv1.weight, net.conv1.weight)


def test_state_dict_without_arch_asks_for_it(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(CifarResNet(20).state_dict(), path)
    with pytest.raises(UserError, match="pass --arch"):
        load_model(path, None, 10)


def test_dict_without_tensors_is_explained(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(UserError, match="no state dict"):
        load_model(path, "cifar_resnet20", 10)


def test_torchvision_architecture_by_name(tmp_path):
    import torchvision

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    loaded = load_model(path, "resnet18", 10)
    assert loaded.net.fc.out_features == 10 and loaded.inputs.channels == 3
