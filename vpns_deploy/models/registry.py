"""Architectures by name, with the input normalisation each was trained with."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from vpns_deploy.errors import UserError
from vpns_deploy.models.cifar_resnet import CifarResNet
from vpns_deploy.models.digits_cnn import DigitsCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    name: str
    build: Callable[[int], nn.Module]
    inputs: InputSpec
    summary: str


_IMAGENET_RGB = InputSpec(3, IMAGENET_MEAN, IMAGENET_STD)

BUILTIN: dict[str, ArchSpec] = {
    f"cifar_resnet{d}": ArchSpec(
        f"cifar_resnet{d}", partial(CifarResNet, d), _IMAGENET_RGB, f"CIFAR ResNet-{d}, option-A shortcut"
    )
    for d in (20, 32, 44, 56)
}
BUILTIN["digits_cnn"] = ArchSpec(
    "digits_cnn", DigitsCNN, InputSpec(1, (0.5,), (0.5,)), "small CNN for the embedded digits demo"
)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def arch_names() -> list[str]:
    return sorted(BUILTIN) + ["<any torchvision classification model, e.g. resnet18>"]


def get_arch(name: str) -> ArchSpec:
    if name in BUILTIN:
        return BUILTIN[name]
    if name in _torchvision_names():
        import torchvision.models as tvm

        return ArchSpec(
            name,
            lambda num_classes: tvm.get_model(name, weights=None, num_classes=num_classes),
            _IMAGENET_RGB,
            f"torchvision {name}",
        )
    raise UserError(
        f"unknown architecture {name!r}",
        f"pass --arch one of {', '.join(sorted(BUILTIN))} or a torchvision classification model name",
    )
