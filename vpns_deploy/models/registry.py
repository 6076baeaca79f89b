"""Architectures by name, with the input (size, resampling, normalisation) each was trained with.

Families: the built-in CIFAR ResNets and digits CNN (their own small sizes), torchvision
classification models (InputSpec from the weights enum's meta, read without downloading), timm
models (`timm:NAME`, from timm's pretrained_cfg) and EfficientNet-Lite0..4 (lukemelas checkpoints
mapped into timm). Nothing here ever downloads weights.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from vpns_deploy.errors import UserError
from vpns_deploy.models.cifar_resnet import CifarResNet
from vpns_deploy.models.digits_cnn import DigitsCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# An ImageNet classifier whose config names no size (torchvision without weights meta, timm without
# pretrained_cfg) is taken at the common 224 px.
IMAGENET_DEFAULT_SIZE = 224


@dataclass(frozen=True)
class InputSpec:
    """How the network expects its input: channels, side length, resampling and per-channel
    normalisation of [0,1] pixels. One record feeds the data pipeline, the prompt's geometry, the
    manifest and the exported graph, so they can never disagree.

    size: the square side the network is trained and exported at; None keeps the data's own size
    (the lab regime: CIFAR at 32 px). crop_pct: evaluation resizes the shorter side to
    size / crop_pct and centre-crops `size` (timm's convention; 1.0 resizes straight to size).
    """

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict:
        return {"channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "size": self.size, "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        size = d.get("size")
        return cls(int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
                   None if size is None else int(size), str(d.get("interpolation", "bilinear")),
                   float(d.get("crop_pct", 1.0)))


@dataclass(frozen=True)
class ArchSpec:
    """How to build an architecture for num_classes, what it eats, and (optionally) how a foreign
    checkpoint's key names become the built network's (adapt_state_dict(sd, net) -> sd)."""

    name: str
    build: Callable[[int], nn.Module]
    inputs: InputSpec
    summary: str
    adapt_state_dict: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None


BUILTIN: dict[str, ArchSpec] = {
    f"cifar_resnet{d}": ArchSpec(
        f"cifar_resnet{d}", partial(CifarResNet, d), InputSpec(3, IMAGENET_MEAN, IMAGENET_STD, 32),
        f"CIFAR ResNet-{d}, option-A shortcut, 32 px",
    )
    for d in (20, 32, 44, 56)
}
BUILTIN["digits_cnn"] = ArchSpec(
    "digits_cnn", DigitsCNN, InputSpec(1, (0.5,), (0.5,), 8), "small CNN for the embedded 8x8 digits demo"
)

ARCH_FAMILIES = (f"{', '.join(sorted(BUILTIN))}; efficientnet_lite0..4 (lukemelas/TF-Lite ImageNet checkpoints); "
                 "timm:NAME (any timm classification model); or a torchvision classification model name "
                 "(e.g. resnet18)")


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def torchvision_input_spec(name: str) -> InputSpec:
    """InputSpec from the default weights' eval transform (crop, resize, mean, std, interpolation).

    Only the enum's metadata is read; nothing is downloaded. A model without weights gets ImageNet
    normalisation at 224 px.
    """
    import torchvision.models as tvm

    try:
        t = tvm.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return InputSpec(3, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_DEFAULT_SIZE)
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    interpolation = t.interpolation.value if t.interpolation.value in INTERPOLATIONS else "bilinear"
    return InputSpec(3, tuple(map(float, t.mean)), tuple(map(float, t.std)), crop, interpolation,
                     min(1.0, crop / resize))


# torchvision builds these with auxiliary classifiers by default, and then returns a tuple of logits in
# training mode; they exist only to help train from scratch, so the registry builds the networks without
# them (init_weights=True: torchvision's own init, and no warning about its default changing) and drops
# their keys from a state dict saved with them (torchvision's pretrained ones have them).
AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def _drop_aux_heads(prefixes: tuple[str, ...], sd: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def arch_names() -> list[str]:
    from vpns_deploy.models.efficientnet_lite import VARIANTS

    return sorted(BUILTIN) + list(VARIANTS) + ["timm:<any timm classification model, e.g. timm:resnet18>",
                                               "<any torchvision classification model, e.g. resnet18>"]


def get_arch(name: str) -> ArchSpec:
    """The ArchSpec for --arch NAME; a one-line error listing the families for an unknown one."""
    from vpns_deploy.models import efficientnet_lite, timm_models

    if name in BUILTIN:
        return BUILTIN[name]
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.efficientnet_lite_arch(name)
    if name.startswith(timm_models.PREFIX):
        return timm_models.timm_arch(name)
    torchvision_names = _torchvision_names()
    if name in torchvision_names:
        import torchvision.models as tvm

        if name in AUX_HEADS:
            return ArchSpec(
                name,
                lambda num_classes: tvm.get_model(name, weights=None, num_classes=num_classes, aux_logits=False,
                                                  init_weights=True),
                torchvision_input_spec(name),
                f"torchvision {name} (without its auxiliary classifiers)",
                partial(_drop_aux_heads, AUX_HEADS[name]),
            )
        return ArchSpec(
            name,
            lambda num_classes: tvm.get_model(name, weights=None, num_classes=num_classes),
            torchvision_input_spec(name),
            f"torchvision {name}",
        )
    close = difflib.get_close_matches(name, [*BUILTIN, *efficientnet_lite.VARIANTS, *torchvision_names], n=3)
    raise UserError(
        f"unknown architecture {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
        f"pass --arch one of: {ARCH_FAMILIES}",
    )
