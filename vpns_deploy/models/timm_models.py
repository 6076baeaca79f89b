"""`--arch timm:NAME`: any timm classification model, built empty for a user's state dict.

timm is only ever asked for the architecture (pretrained=False): it never downloads anything. The
input resolution, normalisation, resampling and crop ratio come from the model's pretrained_cfg,
which timm ships in its source, so the user's weights are fed the way they were trained.
"""
from __future__ import annotations

import difflib

from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import (
    IMAGENET_DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, ArchSpec, InputSpec,
)

PREFIX = "timm:"


def timm_input_spec(name: str) -> InputSpec:
    """InputSpec from timm's pretrained_cfg for NAME (input_size, mean, std, interpolation, crop_pct)."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return InputSpec(3, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_DEFAULT_SIZE)
    channels, height, width = cfg.input_size
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bilinear"
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if len(mean) != channels:  # a single value for every channel
        mean, std = mean[:1] * channels, std[:1] * channels
    return InputSpec(int(channels), tuple(map(float, mean)), tuple(map(float, std)), int(max(height, width)),
                     interpolation, float(cfg.crop_pct or 1.0))


def timm_arch(arch: str) -> ArchSpec:
    """ArchSpec for 'timm:NAME'; a one-line error when timm has no such model."""
    import timm

    name = arch[len(PREFIX):]
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3) if name else []
        raise UserError(f"timm has no model {name!r}",
                        f"did you mean {', '.join(PREFIX + c for c in close)}?" if close
                        else "pass --arch timm:NAME with a name from timm.list_models(), e.g. timm:resnet18")

    def build(num_classes: int):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return ArchSpec(arch, build, timm_input_spec(name), f"timm {name}")
