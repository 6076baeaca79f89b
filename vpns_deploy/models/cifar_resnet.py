"""CIFAR ResNet-20/32/44/56 exactly as ../shared/models/cifar10/README.md describes (option A shortcut)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Parameter-free option-A shortcut: every second pixel, channels zero-padded by planes/4 per side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class ChannelCopyConv(nn.Conv2d):
    """PadShortcut as an exactly equivalent frozen 1x1 stride-2 conv (output j+pad copies input j).

    torch-pruning traces PadShortcut's slice and channel pad as pass-through and merges the 16/32/64
    streams into one group (shared/docs/TOOLCHAIN.md); as a conv the streams form correct groups and
    channel removal slices this 0/1 matrix like any other weight. It is never trained or pruned alone.
    """

    frozen = True

    def __init__(self, in_planes: int, planes: int, pad: int) -> None:
        super().__init__(in_planes, planes, 1, stride=2, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            for j in range(in_planes):
                self.weight[j + pad, j, 0, 0] = 1.0
        self.weight.requires_grad_(False)


def shortcuts_as_convs(net: nn.Module) -> int:
    """Swap every PadShortcut of net for its ChannelCopyConv, in place; returns how many."""
    swapped = 0
    for block in net.modules():
        if isinstance(block, BasicBlock) and isinstance(block.shortcut, PadShortcut):
            pad = block.shortcut.pad
            planes = block.conv2.out_channels
            conv = ChannelCopyConv(planes - 2 * pad, planes, pad)
            block.shortcut = conv.to(block.conv2.weight.device, block.conv2.weight.dtype)
            swapped += 1
    return swapped


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, in_planes = (16, 32, 64), 16
        layers = []
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
