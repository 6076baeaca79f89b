"""Visual prompts (shared/docs/VPNS.md §3): a learnable tensor added to the [0,1] image, then clamped."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import InputSpec


@dataclass(frozen=True)
class PromptSpec:
    """Geometry of a prompt; saved in the manifest so a run's prompt can be rebuilt exactly."""

    kind: str  # pad | expand | fix | random
    channels: int
    input_size: tuple[int, int]
    pad: int

    @property
    def output_size(self) -> tuple[int, int]:
        h, w = self.input_size
        return (h + 2 * self.pad, w + 2 * self.pad) if self.kind == "expand" else (h, w)

    @property
    def squash(self) -> bool:
        """pad is identity (an exact no-op at zero init); the others go through a sigmoid."""
        return self.kind != "pad"

    @property
    def square(self) -> int:
        """fix/random: the square side with about the parameter count of a pad frame."""
        h, _ = self.output_size
        return min(h, max(1, round(math.sqrt(4 * self.pad * h - 4 * self.pad**2))))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(d["kind"], int(d["channels"]), tuple(d["input_size"]), int(d["pad"]))


def _region(spec: PromptSpec) -> torch.Tensor:
    """The fixed 0/1 mask M of the learnable region (for random: its expected coverage)."""
    h, w = spec.output_size
    m = torch.zeros(1, h, w)
    p = spec.pad
    if spec.kind == "pad":
        if 2 * p > min(h, w):
            raise UserError(f"--pad {p} is larger than half the {h}x{w} image", "pass a smaller --pad")
        m[:, :p, :] = 1
        m[:, h - p :, :] = 1
        m[:, :, :p] = 1
        m[:, :, w - p :] = 1
    elif spec.kind == "expand":
        m[:] = 1
        m[:, p : h - p, p : w - p] = 0
    elif spec.kind == "fix":
        m[:, : spec.square, : spec.square] = 1
    else:  # random: probability that a uniformly placed square covers each pixel
        s = spec.square
        m[:] = torch.outer(_coverage(h, s), _coverage(w, s))
    return m


def _coverage(n: int, s: int) -> torch.Tensor:
    positions = n - s + 1
    i = torch.arange(n)
    lo = torch.clamp(i - s + 1, min=0)
    hi = torch.clamp(i, max=n - s)
    return (hi - lo + 1).clamp(min=0).float() / positions


class VisualPrompt(nn.Module):
    """x' = clamp(pad(x) + g(P) * M, 0, 1); P starts at zero."""

    def __init__(self, spec: PromptSpec) -> None:
        super().__init__()
        self.spec = spec
        h, w = spec.output_size
        self.delta = nn.Parameter(torch.zeros(spec.channels, h, w))
        self.register_buffer("region", _region(spec))

    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding applied before the prompt is added (expand only)."""
        p = self.spec.pad if self.spec.kind == "expand" else 0
        return (p, p, p, p)

    def additive(self) -> torch.Tensor:
        """g(P) * M: the constant that export folds into the graph (eval-mode mask)."""
        g = torch.sigmoid(self.delta) if self.spec.squash else self.delta
        return g * self.region

    @torch.no_grad()
    def folded(self, scale: float = 255.0) -> tuple[tuple[int, int, int, int], torch.Tensor]:
        """What an exported graph needs to apply this prompt at evaluation: the zero padding and the
        additive constant scaled to the graph's pixel range, 1 x C x H x W float32 (computed in float64)."""
        return self.padding(), (self.additive().detach().double() * scale).float().unsqueeze(0)

    def mean_abs(self) -> float:
        """Mean |g(P) * M| over the learnable region, in pixel units: shows whether the prompt trains."""
        with torch.no_grad():
            inside = self.region.expand_as(self.delta) > 0
            return float(self.additive().abs()[inside].mean()) if inside.any() else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding()):
            x = F.pad(x, self.padding())
        if self.spec.kind == "random" and self.training:
            h, w = self.spec.output_size
            s = self.spec.square
            top = int(torch.randint(0, h - s + 1, (1,)))
            left = int(torch.randint(0, w - s + 1, (1,)))
            m = torch.zeros_like(self.region)
            m[:, top : top + s, left : left + s] = 1
            add = torch.sigmoid(self.delta) * m
        else:
            add = self.additive()
        return torch.clamp(x + add, 0.0, 1.0)


class Normalize(nn.Module):
    def __init__(self, inputs: InputSpec) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(inputs.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(inputs.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PromptedNet(nn.Module):
    """[0,1] image -> (prompt) -> normalise -> network -> (label map); `prompted=False` skips the prompt.

    label_map (--head map): a frozen index, one source logit per data class (shared/docs/VPNS.md §4),
    kept as a buffer so checkpoints carry it; `mapped=False` gives the raw source logits (what the
    mapping itself is computed from).

    Runs channels-last: 1.3x faster training steps and 2.5x faster evaluation for CIFAR ResNets on
    CPU (measured), and the layout tensor cores want on GPU.
    """

    label_map: torch.Tensor | None

    def __init__(self, net: nn.Module, inputs: InputSpec, prompt: VisualPrompt | None,
                 label_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.normalize = Normalize(inputs)
        self.prompt = prompt
        self.register_buffer("label_map", None if label_map is None else label_map.detach().clone().long())

    def forward(self, x: torch.Tensor, prompted: bool = True, mapped: bool = True) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if prompted and self.prompt is not None:
            x = self.prompt(x)
        logits = self.net(self.normalize(x))
        if mapped and self.label_map is not None:
            logits = logits.index_select(1, self.label_map)
        return logits


PROMPT_RULE = "fold the prompt into the exported graph only when validation top-1 with it >= without it"
PROMPT_FALLBACK_RULE = ("no validation split (--val-fraction 0, or too few training images to hold any out): the "
                        "prompt is folded in, as the method trained the network with it; the test split never decides")


PROMPT_LATENCY_RULE = ("the graph with the prompt folded in falls more than the latency tolerance short of the "
                       "--speedup target (of the speedup reached, where that misses it): the speed asked for comes "
                       "before what the prompt adds")


def prompt_decision(val_plain: float | None, val_prompted: float | None, has_prompt: bool,
                    with_prompt: dict | None = None) -> dict:
    """Whether the exported graph carries the prompt, with the numbers and the rule that decided it.

    Measured on the validation split (never the test split): the prompt is kept only where it helps
    or ties, since the reference evaluates un-prompted and a prompt can cost accuracy at test time.
    `with_prompt`: a latency target's check of the graph with the prompt folded in (compress.verify_latency);
    a prompt that costs more speed than the tolerance allows is left out, whatever validation says.
    """
    if not has_prompt:
        return {"fold": False, "rule": "the run learned no prompt", "split": None,
                "val_top1_plain": val_plain, "val_top1_prompted": None}
    if val_plain is None or val_prompted is None:
        decision = {"fold": True, "rule": PROMPT_FALLBACK_RULE, "split": None,
                    "val_top1_plain": None, "val_top1_prompted": None}
    else:
        decision = {"fold": val_prompted >= val_plain, "rule": PROMPT_RULE, "split": "validation",
                    "val_top1_plain": val_plain, "val_top1_prompted": val_prompted}
    if with_prompt is not None:
        decision["speedup_with_prompt"] = with_prompt["speedup"]
        if decision["fold"] and not with_prompt["within_tolerance"]:
            decision |= {"fold": False, "rule": PROMPT_LATENCY_RULE, "validation_preferred": True}
    return decision
