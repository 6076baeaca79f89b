"""The deployed computation: raw uint8 NHWC images in, logits out, preprocessing and prompt inside."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpns_deploy.models.registry import InputSpec
from vpns_deploy.prompts import VisualPrompt


class DeployGraph(nn.Module):
    """cast -> /255 -> NHWC->NCHW -> (pad -> + prompt constant -> clamp) -> normalise -> network.

    The prompt enters as one constant tensor g(P) * M, so the exported graph holds a single Add
    initializer and no training-time machinery.
    """

    def __init__(self, net: nn.Module, inputs: InputSpec, prompt: VisualPrompt | None) -> None:
        super().__init__()
        self.net = net.eval().to(memory_format=torch.contiguous_format)  # plain NCHW in the graph
        self.register_buffer("mean", torch.tensor(inputs.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(inputs.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.has_prompt = prompt is not None
        self.padding: tuple[int, int, int, int] = (0, 0, 0, 0)
        if prompt is not None:
            self.padding = prompt._padding()
            self.register_buffer("prompt_add", prompt.eval().additive().detach().unsqueeze(0).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0
        x = x.permute(0, 3, 1, 2).contiguous()  # contiguous: keeps channels-last out of the graph
        if self.has_prompt:
            if any(self.padding):
                x = F.pad(x, self.padding)
            x = torch.clamp(x + self.prompt_add, 0.0, 1.0)
        x = (x - self.mean) / self.std
        return self.net(x)
