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

    [grid]      (optional) variants = [{ name = "seed9", "compress.seed" = 9 }, ...]: several runs from
                one file. Each variant is the recipe with the dotted fields it names changed (any field of
                any section but run.out, e.g. "compress.method", "compress.optim.lr_prompt_mask",
                "model.input_size") and runs in <run.out>/<name>, in the order listed. The sections
                outside [grid] must form a valid recipe themselves; every variant is validated before the
                first one runs, and each then runs, skips or resumes as a recipe does.

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
    latency_budget: float = cli(DEFAULT_BUDGET_S, "Seconds of timed calls per graph (at least 3 calls, at most 1,000).", (
        "Seconds of timed calls per graph (over batch 1 and 64; graphs compared are timed interleaved): the "
        "latency measurement stops there, or at 1,000 timed calls each, whichever comes first; every graph gets at "
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


def _build(cls: type, table: dict, where: str, origin: str):
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


def _read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}", "pass the path of a .toml recipe (see recipes/)")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc})", "fix the syntax") from None


def _recipe(doc: dict, path: Path, origin: str) -> Recipe:
    """A recipe from its parsed sections; `origin` names it in errors (the file, or a grid variant of it)."""
    unknown = [k for k in doc if k not in SECTIONS]
    if unknown:
        raise UserError(f"{origin}: unknown section [{unknown[0]}]",
                        f"known sections: {', '.join(SECTIONS)}, {GRID}")
    for name in REQUIRED:
        if name not in doc:
            raise UserError(f"{origin}: missing section [{name}]", "add it to the recipe")
    built = {}
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise UserError(f"{origin}: {name} must be a section", f"write [{name}]")
        built[name] = _build(SECTIONS[name], table, name, origin)
    return Recipe(source=path, **built)


def load_recipe(path: Path) -> Recipe:
    """One run's recipe; a file with a [grid] is several runs (load_runs)."""
    doc = _read(path)
    if GRID in doc:
        raise UserError(f"{path} is a grid recipe ([{GRID}] describes several runs)",
                        "run it with `vpns-deploy run`, which runs every variant")
    return _recipe(doc, Path(path), str(path))


# A grid: one recipe file describing several runs (the [grid] section of the module docstring).
GRID = "grid"


@dataclass(frozen=True)
class Variant:
    """One run of a grid: its name (its folder under the grid's run.out), the fields it changes and
    the complete recipe it runs."""

    name: str
    changes: dict[str, object]  # dotted field ("compress.optim.lr_prompt_mask") -> value
    recipe: Recipe


@dataclass(frozen=True)
class Grid:
    source: Path
    out: Path  # the grid's run.out: variant NAME runs in out/NAME
    variants: tuple[Variant, ...]

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def _dotted(table: dict, prefix: str = "") -> dict[str, object]:
    """{"compress": {"seed": 9}} and {"compress.seed": 9} both -> {"compress.seed": 9}."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _changed(base: dict, changes: dict[str, object], origin: str) -> dict:
    """A deep copy of the recipe's sections with each dotted field set (missing tables are created)."""
    import copy

    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        parts = dotted.split(".")
        if dotted == "run.out":
            raise UserError(f"{origin}: a variant cannot set run.out",
                            "each variant runs in <run.out>/<its name>; rename the variant instead")
        if len(parts) < 2 or parts[0] not in SECTIONS:
            raise UserError(f"{origin}: unknown field {dotted!r}",
                            f"name a field as section.key, e.g. \"compress.seed\" (sections: {', '.join(SECTIONS)})")
        table = doc
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UserError(f"{origin}: {dotted!r} sets a field inside {part}, which is not a table",
                                "name a field of a section or of one of its tables")
        table[parts[-1]] = value
    return doc


def _variant_name(entry: object, i: int, path: Path) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UserError(f"{path}: grid.variants[{i}] needs a name",
                        'write { name = "seed9", "compress.seed" = 9 }')
    name = entry["name"]
    if name.strip() in ("", ".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise UserError(f"{path}: grid variant name {name!r} is not a folder name",
                        "use letters, digits, '-', '_' or '.' (it names the run's folder)")
    return name


def load_grid(path: Path) -> Grid:
    """Every run a recipe file describes: its [grid] variants, all validated; a file without [grid] is a
    grid of one, named after its run.out, that runs in run.out itself."""
    path = Path(path)
    doc = _read(path)
    grid = doc.pop(GRID, None)
    if grid is None:
        recipe = _recipe(doc, path, str(path))
        return Grid(path, recipe.out, (Variant(recipe.out.name, {}, recipe),))
    entries = grid.get("variants") if isinstance(grid, dict) else None
    extra = [k for k in grid if k != "variants"] if isinstance(grid, dict) else []
    if extra:
        raise UserError(f"{path}: unknown key grid.{extra[0]}", "a [grid] holds only variants = [...]")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: [grid] needs variants = [...], at least one",
                        'write variants = [{ name = "seed9", "compress.seed" = 9 }]')
    base = _recipe(doc, path, str(path))  # the shared sections are valid on their own
    variants: list[Variant] = []
    for i, entry in enumerate(entries):
        name = _variant_name(entry, i, path)
        if any(v.name == name for v in variants):
            raise UserError(f"{path}: grid variant {name!r} is named twice", "give every variant its own name")
        origin = f"{path}, grid variant {name!r}"
        changes = _dotted({k: v for k, v in entry.items() if k != "name"})
        sections = _changed(doc, changes, origin)
        sections["run"] = {**sections["run"], "out": str(base.out / name)}
        variants.append(Variant(name, changes, _recipe(sections, path, origin)))
    return Grid(path, base.out, tuple(variants))

