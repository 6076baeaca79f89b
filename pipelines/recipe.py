"""Recipes: a whole run described once in TOML, validated completely before anything runs.

    [run]       out = "runs/name"
    [model]     path, arch, trust_pickle, num_classes; input_size, mean, std, interpolation (overrides of
                the architecture's input config, as --input-size/--mean/--std/--interpolation)
    [data]      spec = "tar:../shared/data/cifar10-jpeg.tar.gz"
    [pretrain]  (optional) train the model first when `model.path` does not exist yet
    [compress]  every CompressConfig field; [compress.optim] every OptimConfig field
    [export]    (optional) prompt = true/false (default: compress's validation decision), graph_resize,
                precisions = ["fp32", "fp16", "int8"], calib_images, trt
    [report]    (optional) enabled = true, latency_budget = 30 (seconds of timed calls per graph)

Relative paths are taken from the directory the command runs in, as on the command line.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from calibration.latency import DEFAULT_BUDGET_S, check_budget
from vpns_deploy.config import DEFAULT_CALIB_IMAGES, DEFAULT_MAX_PRECISION_DROP, CompressConfig, check_numbers, cli
from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import ARCH_FAMILIES, INTERPOLATIONS
from vpns_deploy.pretrain import PretrainConfig

ARCH_SHORT = "cifar_resnet20..56, digits_cnn, efficientnet_lite0..4, timm:NAME or a torchvision name"
ARCH_HELP = (f"Architecture of MODEL: {ARCH_FAMILIES}. Sets the input size, resampling and normalisation the "
             "network was trained with (its timm/torchvision config), unless overridden below. A pickled MODEL "
             "takes its input from --arch (and must fit it) or from --mean/--std.")


@dataclass(frozen=True)
class RunSection:
    out: str

    def __post_init__(self) -> None:
        if self.out.strip() in ("", ".", "..") or Path(self.out).name in ("", ".", ".."):
            raise UserError(f"run.out = {self.out!r} is not a directory compress can create",
                            'write e.g. out = "runs/my-run"')


@dataclass(frozen=True)
class ModelSection:
    """The model a run starts from (a recipe's [model]; `compress`/`sweep` options of the same names)."""

    path: str
    arch: str | None = cli(None, f"Architecture of MODEL: {ARCH_SHORT}.", ARCH_HELP)
    trust_pickle: bool = cli(False, "Allow a pickled nn.Module (runs code from the file: only for files you trust).")
    num_classes: int | None = cli(None, "Classes of the model's head (checked against the data or the checkpoint).", (
        "Classes of the model's head (a check): with --head keep it must match the data; with --head map/new "
        "it must match the checkpoint's head."))
    input_size: int | None = cli(None, "Side in pixels the network trains and exports at. Default: the arch's own.", (
        "Side in pixels the network is trained and exported at (images are resized; evaluation resizes to "
        "size/crop_pct and centre-crops). Default: the architecture's own (32 CIFAR ResNets, 8 digits_cnn, 224 "
        "or the config's for torchvision/timm; a pickled MODEL without --arch keeps the data's size)."))
    mean: list[float] | None = cli(None, "Per-channel mean of [0,1] pixels, e.g. 0.485,0.456,0.406. Default: the arch's.", (
        "Per-channel mean of [0,1] pixels, comma-separated (e.g. 0.485,0.456,0.406). Default: the "
        "architecture's config."))
    std: list[float] | None = cli(None, "Per-channel std of [0,1] pixels, e.g. 0.229,0.224,0.225. Default: the arch's.", (
        "Per-channel std of [0,1] pixels, comma-separated, all > 0 (e.g. 0.229,0.224,0.225). Default: the "
        "architecture's config."))
    interpolation: str | None = cli(None, "Resampling: bilinear, bicubic or nearest. Default: the arch's config.", (
        f"Resampling when resizing: {'|'.join(INTERPOLATIONS)}. Default: the architecture's config."))

    def __post_init__(self) -> None:
        self.inputs  # noqa: B018 - validates the overrides before anything runs

    @property
    def inputs(self):
        """The input overrides (InputOverrides): None fields keep the architecture's config."""
        from vpns_deploy.models.input_overrides import InputOverrides

        return InputOverrides(self.input_size, None if self.mean is None else tuple(self.mean),
                              None if self.std is None else tuple(self.std), self.interpolation)


@dataclass(frozen=True)
class DataSection:
    spec: str


@dataclass(frozen=True)
class ExportSection:
    prompt: bool | None = None  # None: the run's validation decision (folded in only where it helped)
    graph_resize: bool = False  # a Resize in front: the graph takes any H x W
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    calib_images: int = DEFAULT_CALIB_IMAGES
    trt: bool = False
    max_precision_drop: float = DEFAULT_MAX_PRECISION_DROP  # top-1 points fp16/int8 may lose and still ship

    def __post_init__(self) -> None:
        from export.precision import PRECISIONS

        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise UserError(f"unknown precision {bad[0]!r} in export.precisions", f"use {', '.join(PRECISIONS)}")
        if self.calib_images < 1:
            raise UserError(f"export.calib_images must be >= 1, got {self.calib_images}", "e.g. 512")
        if not 0 <= self.max_precision_drop <= 100:
            raise UserError(f"export.max_precision_drop must be between 0 and 100 top-1 points, got "
                            f"{self.max_precision_drop}", f"e.g. {DEFAULT_MAX_PRECISION_DROP}")


@dataclass(frozen=True)
class ReportSection:
    enabled: bool = True
    latency_budget: float = cli(DEFAULT_BUDGET_S, "Seconds of timed calls per graph (at least 3 calls, at most 200).", (
        "Seconds of timed calls per graph (over batch 1 and 64; graphs compared are timed interleaved): the "
        "latency measurement stops there, or at 200 calls each, whichever comes first; every graph gets at "
        "least 3 timed calls."))

    def __post_init__(self) -> None:
        check_budget(self.latency_budget)


@dataclass(frozen=True)
class Recipe:
    source: Path
    run: RunSection
    model: ModelSection
    data: DataSection
    compress: CompressConfig
    pretrain: PretrainConfig | None = None
    export: ExportSection | None = None
    report: ReportSection | None = None

    @property
    def out(self) -> Path:
        return Path(self.run.out)


SECTIONS: dict[str, type] = {
    "run": RunSection, "model": ModelSection, "data": DataSection, "pretrain": PretrainConfig,
    "compress": CompressConfig, "export": ExportSection, "report": ReportSection,
}
REQUIRED = ("run", "model", "data", "compress")


def _type_ok(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint) if h is not type(None))
    return getattr(hint, "__name__", str(hint))


def _build(cls: type, table: dict, where: str, origin: Path):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise UserError(f"{origin}: unknown key {where}.{key}", f"known keys: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{origin}: {where}.{key} must be a table", f"write [{where}.{key}]")
            kwargs[key] = _build(hint, value, f"{where}.{key}", origin)
            continue
        if not _type_ok(value, hint):
            raise UserError(f"{origin}: {where}.{key} must be {_type_name(hint)}, got {value!r}", "fix the recipe")
        kwargs[key] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{origin}: missing key {where}.{missing[0]}", "add it to the recipe")
    try:
        built = cls(**kwargs)
        check_numbers(built)  # nan/inf and impossible rates in every section, not only those that check
    except UserError as exc:
        raise UserError(f"{origin}: [{where}] {exc}") from None
    return built


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}", "pass the path of a .toml recipe (see recipes/)")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc})", "fix the syntax") from None
    unknown = [k for k in doc if k not in SECTIONS]
    if unknown:
        raise UserError(f"{path}: unknown section [{unknown[0]}]", f"known sections: {', '.join(SECTIONS)}")
    for name in REQUIRED:
        if name not in doc:
            raise UserError(f"{path}: missing section [{name}]", "add it to the recipe")
    built = {}
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: {name} must be a section", f"write [{name}]")
        built[name] = _build(SECTIONS[name], table, name, path)
    return Recipe(source=path, **built)

