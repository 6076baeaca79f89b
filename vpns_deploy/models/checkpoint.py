"""Load a user's model safely: state dicts with weights_only=True, pickled modules only when trusted."""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vpns_deploy.data.cache import sha256_file
from vpns_deploy.errors import UserError
from vpns_deploy.heads import checkpoint_classes, head_outputs, logits_layer, mismatch_error
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.models.registry import InputSpec, get_arch

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadedModel:
    net: nn.Module
    arch: str | None  # None when the model came as a pickled nn.Module
    num_classes: int
    inputs: InputSpec
    sha256: str
    inputs_from: str = ""  # where the InputSpec came from (the arch's config, overrides), for the manifest


def _read(path: Path, trust_pickle: bool) -> object:
    if not path.exists():
        raise UserError(f"model file not found: {path}", "check the path of MODEL")
    if not path.is_file():
        raise UserError(f"{path} is not a file", "MODEL must be a checkpoint file (.pt/.pth/.th)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: we explain below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The safe unpickler names the class it refused ("Unsupported global"); anything else it
        # cannot parse is simply not a checkpoint.
        if "Unsupported global" not in str(exc):
            raise UserError(f"{path} is not a PyTorch checkpoint ({_reason(exc, path)})", _SAVE_HINT) from None
        if not trust_pickle:
            raise UserError(
                f"{path} contains pickled Python objects (e.g. a whole nn.Module), and loading them can run "
                "arbitrary code",
                "save model.state_dict() and pass --arch, or pass --trust-pickle if you trust the file",
            ) from None
    except Exception as exc:  # torch raises RuntimeError, zip, EOF, index errors on garbage
        raise UserError(f"{path} is not a PyTorch checkpoint ({_reason(exc, path)})", _SAVE_HINT) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the user vouched for it, but it still must load
        raise UserError(f"cannot unpickle {path} ({_first_line(exc)})", _SAVE_HINT) from None


_SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:160]


def _reason(exc: BaseException, path: Path | None = None) -> str:
    """Why a file is not a checkpoint, in plain words: from its first bytes where they tell, else from
    the informative line of torch's long weights-only message."""
    told = _content_reason(path, str(exc)) if path is not None else None
    if told:
        return told
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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_PROTO = 0x80  # a pickle of protocol >= 2 starts with PROTO, then the protocol number


def _content_reason(path: Path, message: str = "") -> str | None:
    """What the file's first bytes say it is, when that explains the failure (None: they do not)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        size = path.stat().st_size
    except OSError:
        return None
    if size == 0:
        return "the file is empty"
    if head.startswith(ZIP_MAGIC):
        if not any(w in message for w in ("zip archive", "central directory", "EOF", "failed reading")):
            return None  # a complete zip that is not a torch file: torch's own line says more
        return (f"its zip archive is incomplete or damaged ({size} bytes): the file was truncated or corrupted, "
                "e.g. by an interrupted copy or download")
    if head[0] == PICKLE_PROTO and len(head) > 1:
        if head[1] > 2:
            return (f"a plain Python pickle (protocol {head[1]}, e.g. from pickle.dump), not a file written by "
                    "torch.save, which the safe loader cannot read")
        return f"a legacy torch.save or pickle file that ends early or is damaged ({size} bytes): truncated or corrupted"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary content: neither a torch.save file nor a pickle"
    if all(ch.isprintable() or ch.isspace() for ch in text):
        return f"it is a text file (starts with {text.strip()[:30]!r}), not a saved model"
    return "unrecognised content: neither a torch.save file nor a pickle"


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
    found = checkpoint_classes(net, sd)  # the logits layer may be a Linear or a conv (SqueezeNet)
    if found is not None:
        raise mismatch_error(found, num_classes, f"{path.name}'s head")
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


def load_model(path: Path, arch: str | None, num_classes: int, trust_pickle: bool = False,
               inputs: InputOverrides | None = None, head: str = "keep") -> LoadedModel:
    """Build the model MODEL describes for a data set of num_classes classes.

    head != "keep" (--head map/new): a head of another class count is accepted, and the model is
    returned with the checkpoint's own class count in num_classes.

    Its InputSpec comes from the architecture's config (registry), with the user's overrides
    applied. A pickled module says nothing about its input, so it needs --arch (which it must fit)
    or --mean/--std: assuming a normalisation silently can cost most of its accuracy.
    """
    path = Path(path)
    inputs = inputs or InputOverrides()
    obj = _read(path, trust_pickle)
    digest = sha256_file(path)
    if isinstance(obj, nn.Module):
        logits = logits_layer(obj)
        source = head_outputs(logits[1]) if logits is not None else num_classes
        if source != num_classes:
            if head == "keep":
                raise mismatch_error(source, num_classes)
            num_classes = source  # --head map/new: the module keeps its own head for now
        spec, source = _pickled_input_spec(obj, arch, path, num_classes, inputs)
        loaded = LoadedModel(obj.float().eval(), None, num_classes, inputs.apply(spec), digest,
                             _source_text(source, inputs))
        return _probed(loaded, inputs, arch or "the pickled module")
    if arch is None:
        raise UserError(f"{path} is a state dict, which does not say its architecture", "pass --arch NAME")
    spec = get_arch(arch)
    sd = _state_dict_of(obj, path)
    net = spec.build(num_classes)
    if spec.adapt_state_dict is not None:
        sd = spec.adapt_state_dict(sd, net)
    if head != "keep":  # --head map/new: build the checkpoint's own head; heads.py maps or replaces it
        num_classes = checkpoint_classes(net, sd) or num_classes
        net = spec.build(num_classes) if num_classes != head_outputs(logits_layer(net)[1]) else net
    _check_fits(net, sd, arch, path, num_classes)
    net.load_state_dict(sd, strict=False)
    loaded = LoadedModel(net.float().eval(), arch, num_classes, inputs.apply(spec.inputs), digest,
                         _source_text(spec.summary, inputs))
    return _probed(loaded, inputs, arch)


def _pickled_input_spec(module: nn.Module, arch: str | None, path: Path, num_classes: int,
                        inputs: InputOverrides) -> tuple[InputSpec, str]:
    """A pickled module's InputSpec: from --arch (the module must fit it), else from --mean/--std."""
    if arch is not None:
        spec = get_arch(arch)
        net = spec.build(num_classes)
        sd = module.state_dict()
        if spec.adapt_state_dict is not None:
            sd = spec.adapt_state_dict(sd, net)
        _check_fits(net, sd, arch, path, num_classes)
        return spec.inputs, spec.summary
    if not inputs.normalisation:
        raise UserError(
            f"{path.name} is a pickled nn.Module, which does not say how its input pixels were normalised",
            "pass --arch NAME (the architecture it is an instance of) or --mean and --std (per channel, for "
            "[0,1] pixels)",
        )
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[0].in_channels if convs else len(inputs.mean)
    return InputSpec(channels, inputs.mean, inputs.std), "--mean/--std of a pickled module"


def _probed(loaded: LoadedModel, inputs: InputOverrides, what: str) -> LoadedModel:
    """With --input-size, one forward pass of a blank image at that size: a network that cannot take
    it (a ViT's fixed patch grid, a size its strides reduce to nothing) is a one-line error now
    rather than a traceback after the data is loaded."""
    if inputs.input_size is None:
        return loaded
    size = loaded.inputs.size
    try:
        with torch.no_grad():
            loaded.net(torch.zeros(1, loaded.inputs.channels, size, size))
    except Exception as exc:  # any failure of the user's network at this size
        raise UserError(f"{what} cannot take {size}x{size} inputs ({_first_line(exc)})",
                        "pass another --input-size, or leave it out for the architecture's own size") from None
    return loaded


def _source_text(source: str, inputs: InputOverrides) -> str:
    given = [k for k, v in inputs.to_dict().items() if v is not None]
    return source + (f"; overridden: {', '.join(given)}" if given else "")
