"""The deployed computation: raw uint8 NHWC images in, logits out, preprocessing and prompt inside."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpns_deploy.models.registry import InputSpec
from vpns_deploy.prompts import VisualPrompt


class DeployGraph(nn.Module):
    """cast -> NHWC->NCHW -> (pad -> + prompt constant -> clamp) -> scale and normalise -> network
    -> (Gather of the label map's source logits, --head map).

    Mathematically clamp(x/255 + g(P)*M, 0, 1) followed by (. - mean) / std, computed in the 0..255
    domain so the whole preprocessing is six elementwise nodes: Cast, Transpose, Add (the prompt as one
    constant, 255 g(P) M), Clip(0, 255), Mul (1 / (255 std)), Add (-mean / std).
    """

    def __init__(self, net: nn.Module, inputs: InputSpec, prompt: VisualPrompt | None,
                 label_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net.eval().to(memory_format=torch.contiguous_format)  # plain NCHW in the graph
        mean = torch.tensor(inputs.mean, dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(inputs.std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("scale", (1.0 / (255.0 * std)).float())
        self.register_buffer("shift", (-mean / std).float())
        self.has_prompt = prompt is not None
        self.padding: tuple[int, int, int, int] = (0, 0, 0, 0)
        if prompt is not None:
            self.padding, add = prompt.eval().folded(255.0)
            self.register_buffer("prompt_add", add)
        self.register_buffer("label_map", None if label_map is None else label_map.detach().clone().long().cpu())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2).contiguous()  # contiguous: plain NCHW in the graph
        if self.has_prompt:
            if any(self.padding):
                x = F.pad(x, self.padding)
            x = torch.clamp(x + self.prompt_add, 0.0, 255.0)
        logits = self.net(x * self.scale + self.shift)
        if self.label_map is not None:
            logits = logits.index_select(1, self.label_map)  # one Gather: the data's classes, in order
        return logits
