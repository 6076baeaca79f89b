"""What the user says about the model's input (--input-size, --mean, --std, --interpolation).

The model's own config gives the defaults (InputSpec from the registry); these overrides replace
single fields of it. They are validated once here, for the CLI and recipes alike, so a bad value is
a one-line error before any data is read.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import INTERPOLATIONS, InputSpec


@dataclass(frozen=True)
class InputOverrides:
    """None everywhere means: what the architecture's config says."""

    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None and (isinstance(self.input_size, bool) or self.input_size < 1):
            raise UserError(f"--input-size must be a positive number of pixels, got {self.input_size}",
                            "pass e.g. --input-size 224, or leave it out for the model's own size")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            object.__setattr__(self, name, tuple(float(v) for v in values))
            values = getattr(self, name)
            if not values or not all(math.isfinite(v) for v in values):
                raise UserError(f"--{name} must be finite numbers, got {_text(values)}",
                                f"pass e.g. --{name} {'0.485,0.456,0.406' if name == 'mean' else '0.229,0.224,0.225'}")
        if self.std is not None and not all(v > 0 for v in self.std):
            raise UserError(f"--std must be > 0 for every channel, got {_text(self.std)}",
                            "pass e.g. --std 0.229,0.224,0.225")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise UserError(f"--mean has {len(self.mean)} values but --std has {len(self.std)}",
                            "give one value per input channel to both")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UserError(f"unknown --interpolation {self.interpolation!r}",
                            f"pass one of {', '.join(INTERPOLATIONS)}")

    @property
    def normalisation(self) -> bool:
        """True when both mean and std were given (enough to describe a pickled module's input)."""
        return self.mean is not None and self.std is not None

    def apply(self, spec: InputSpec) -> InputSpec:
        """spec with the given fields replaced; the channel count must match the model's."""
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != spec.channels:
                raise UserError(f"--{name} has {len(values)} values but the model takes {spec.channels}-channel images",
                                f"give {spec.channels} comma-separated value(s)")
        changes = {k: v for k, v in (("size", self.input_size), ("mean", self.mean), ("std", self.std),
                                     ("interpolation", self.interpolation)) if v is not None}
        return dataclasses.replace(spec, **changes)

    def to_dict(self) -> dict:
        """JSON form for manifests and checkpoints (None fields kept: they say 'from the model')."""
        return {"input_size": self.input_size, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputOverrides":
        d = d or {}
        mean, std = (None if d.get(k) is None else tuple(d[k]) for k in ("mean", "std"))  # JSON lists -> tuples
        return cls(d.get("input_size"), mean, std, d.get("interpolation"))


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5) for --mean/--std; a one-line error for anything else."""
    if text is None:
        return None
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"{option} must be comma-separated numbers, got {text!r}",
                        f"e.g. {option} 0.5,0.5,0.5 (one value per input channel)") from None
    if not values:
        raise UserError(f"{option} is empty", f"e.g. {option} 0.5,0.5,0.5 (one value per input channel)")
    return values


def _text(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
