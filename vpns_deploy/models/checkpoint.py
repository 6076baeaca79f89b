"""Load a user's model safely: state dicts with weights_only=True, pickled modules only when trusted."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vpns_deploy.data.cache import sha256_file
from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import IMAGENET_MEAN, IMAGENET_STD, InputSpec, get_arch

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadedModel:
    net: nn.Module
    arch: str | None  # None when the model came as a pickled nn.Module
    num_classes: int
    inputs: InputSpec
    sha256: str


def _read(path: Path, trust_pickle: bool) -> object:
    if not path.exists():
        raise UserError(f"model file not found: {path}", "check the path of MODEL")
    if not path.is_file():
        raise UserError(f"{path} is not a file", "MODEL must be a checkpoint file (.pt/.pth/.th)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The safe unpickler names the class it refused ("Unsupported global"); anything else it
        # cannot parse is simply not a checkpoint.
        if "Unsupported global" not in str(exc):
            raise UserError(f"{path} is not a PyTorch checkpoint ({_reason(exc)})", _SAVE_HINT) from None
        if not trust_pickle:
            raise UserError(
                f"{path} contains pickled Python objects (e.g. a whole nn.Module), and loading them can run "
                "arbitrary code",
                "save model.state_dict() and pass --arch, or pass --trust-pickle if you trust the file",
            ) from None
    except Exception as exc:  # torch raises RuntimeError, zip, EOF, index errors on garbage
        raise UserError(f"{path} is not a PyTorch checkpoint ({_reason(exc)})", _SAVE_HINT) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the user vouched for it, but it still must load
        raise UserError(f"cannot unpickle {path} ({_first_line(exc)})", _SAVE_HINT) from None


_SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:160]


def _reason(exc: BaseException) -> str:
    """The informative line of torch's long weights-only message, else the first line."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error" in line:
            tail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if tail.startswith("Unsupported operand"):
                return "unrecognised content: neither a torch.save zip nor a pickle"
            if tail:
                return tail[:160]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Weights only load failed"):
        return next((ln for ln in lines[1:] if "WeightsUnpickler" not in ln), lines[1])[:160]
    return _first_line(exc)


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return {k.removeprefix("module."): v for k, v in tensors.items()}
        raise UserError(
            f"{path} holds a dict with keys {sorted(map(str, obj))[:5]} but no state dict of tensors",
            "save torch.save(model.state_dict(), PATH) or wrap it as {'state_dict': ...}",
        )
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict", _SAVE_HINT)


def _check_fits(net: nn.Module, sd: dict[str, torch.Tensor], arch: str, path: Path, num_classes: int) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    heads = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    head_keys = {f"{heads[-1]}.weight", f"{heads[-1]}.bias"} if heads else set()
    if not missing and not unexpected and wrong and set(wrong) <= head_keys:
        found = sd[f"{heads[-1]}.weight"].shape[0]
        raise UserError(
            f"class-count mismatch: {path.name}'s head has {found} outputs but the data has {num_classes} classes",
            "pass data with the same classes, or --num-classes to match the checkpoint",
        )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]}: {tuple(sd[wrong[0]].shape)} "
                         f"vs {tuple(own[wrong[0]].shape)})")
        raise UserError(
            f"the weights in {path.name} do not fit --arch {arch}: {', '.join(parts)}",
            "pass the --arch these weights were trained with",
        )


def load_model(path: Path, arch: str | None, num_classes: int, trust_pickle: bool = False) -> LoadedModel:
    """Build the model MODEL describes for a data set of num_classes classes."""
    path = Path(path)
    obj = _read(path, trust_pickle)
    digest = sha256_file(path)
    if isinstance(obj, nn.Module):
        heads = [m for m in obj.modules() if isinstance(m, nn.Linear)]
        if heads and heads[-1].out_features != num_classes:
            raise UserError(
                f"class-count mismatch: the model's head has {heads[-1].out_features} outputs but the data has "
                f"{num_classes} classes",
                "pass data with the same classes",
            )
        convs = [m for m in obj.modules() if isinstance(m, nn.Conv2d)]
        channels = convs[0].in_channels if convs else 3
        inputs = InputSpec(channels, IMAGENET_MEAN[:channels], IMAGENET_STD[:channels])
        return LoadedModel(obj.float().eval(), None, num_classes, inputs, digest)
    if arch is None:
        raise UserError(f"{path} is a state dict, which does not say its architecture", "pass --arch NAME")
    spec = get_arch(arch)
    sd = _state_dict_of(obj, path)
    net = spec.build(num_classes)
    _check_fits(net, sd, arch, path, num_classes)
    net.load_state_dict(sd, strict=False)
    return LoadedModel(net.float().eval(), arch, num_classes, spec.inputs, digest)
