"""The pipeline as one graph of named stages; every command runs a Plan through it, skipping the done.

    pretrain -> compress (load, mask search, tune) -> export -> report

`compress`, `export`, `report`, `run` and `sweep` differ only in the Plan they build: which stages it
asks for and with which settings (a recipe asks for all of them; `export RUN_DIR` for export alone).
A stage is done when the run's manifest records it with the fingerprint this plan asks for and every
artifact it read and wrote verifies against its sha256 (stage_keys.py: one mechanism for all). compress
resumes from its last finished epoch on its own (per-epoch checkpoints), so re-running after a crash
loses nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from calibration.latency import DEFAULT_BUDGET_S
from pipelines.artifacts import MANIFEST
from pipelines.manifest import run_fingerprint
from pipelines.recipe import ExportSection, ModelSection, Recipe
from pipelines.run_create import is_run
from pipelines.run_dir import RunDir
from pipelines.stage_keys import ExportSettings, export_record, is_done, report_record
from vpns_deploy.config import CompressConfig
from vpns_deploy.data.cache import sha256_file
from vpns_deploy.distributed import check_batch, env_rank, rank0_verdict, world_from_env
from vpns_deploy.errors import UserError
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.pretrain import PretrainConfig
from vpns_deploy.progress import Reporter


@dataclass(frozen=True)
class CompressRequest:
    """Make the run (and first the model, when `pretrain` is given and the model file is missing)."""

    model: ModelSection
    data_spec: str
    config: CompressConfig
    pretrain: PretrainConfig | None = None


def compress_request(model: Path, arch: str | None, data_spec: str, cfg: CompressConfig,
                     num_classes: int | None = None, trust_pickle: bool = False,
                     inputs: InputOverrides | None = None) -> CompressRequest:
    """What the `compress` and `sweep` commands ask for, as a recipe's [model]/[data]/[compress] would."""
    section = ModelSection(str(model), arch, trust_pickle, num_classes, **(inputs or InputOverrides()).to_dict())
    return CompressRequest(section, data_spec, cfg)


@dataclass(frozen=True)
class ExportRequest:
    section: ExportSection
    data_spec: str | None = None  # parity and calibration images from other data than the run's
    require_trt: bool = False  # a missing GPU/TensorRT is an error, and a run exported without engines is not done

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(["fp32", *self.section.precisions]))  # fp32 is always written


@dataclass(frozen=True)
class ReportRequest:
    latency_budget: float = DEFAULT_BUDGET_S
    data_spec: str | None = None
    remeasure: bool = False  # measure again even when done


@dataclass(frozen=True)
class Plan:
    """What one command asks of one run directory; a stage without a request does not run."""

    out: Path
    source: str  # who asks: the recipe's path or the command, for messages
    compress: CompressRequest | None = None  # None: the run exists already (export/report RUN_DIR)
    export: ExportRequest | None = None
    report: ReportRequest | None = None
    trust_pickle: bool = False  # the run's networks may be pickled modules (the user vouched for them)
    device: str = "auto"  # where torchrun ranks exchange the "done?" verdict
    announce: bool = True  # "[stage] running" lines; off for a one-stage command that says what it does itself


@dataclass(frozen=True)
class Stage:
    name: str
    enabled: Callable[[Plan], bool]
    done: Callable[[Plan], bool]
    run: Callable[[Plan, Reporter, bool], None]


def plan_from_recipe(recipe: Recipe) -> Plan:
    report = recipe.report
    return Plan(recipe.out, str(recipe.source),
                CompressRequest(recipe.model, recipe.data.spec, recipe.compress, recipe.pretrain),
                ExportRequest(recipe.export) if recipe.export is not None else None,
                ReportRequest(report.latency_budget) if report is not None and report.enabled else None,
                recipe.model.trust_pickle, recipe.compress.device)


def _open(plan: Plan) -> RunDir | None:
    """The run, or None where there is none yet or its manifest does not open (the stage then runs and
    says why in one line)."""
    if not (plan.out / MANIFEST).is_file():
        return None
    try:
        return RunDir.open(plan.out)
    except UserError:
        return None


def _compress_done(plan: Plan) -> bool:
    """Done when the run's fingerprint is the one this request's compress would record (the digest a
    checkpoint must match to be resumed) and everything compress wrote verifies."""
    from vpns_deploy.data import read_catalog

    run, c = _open(plan), plan.compress
    model = Path(c.model.path)
    if run is None or not model.is_file():
        return False
    wanted = run_fingerprint(c.config.to_dict(), sha256_file(model), c.model.arch,
                             read_catalog(c.data_spec).fingerprint, c.model.inputs.to_dict())
    return is_done(run, "compress", wanted)


def export_settings(run: RunDir, request: ExportRequest) -> ExportSettings:
    """The request resolved against the run (the prompt: --prompt/--no-prompt, else the run's decision)."""
    from pipelines.export_stage import prompt_choice

    m, s = run.manifest, request.section
    return ExportSettings(prompt_choice(m, s.prompt, m.prompt is not None)["fold"], request.precisions,
                          s.graph_resize, s.calib_images, request.data_spec, s.trt or request.require_trt,
                          s.max_precision_drop)


def _export_done(plan: Plan) -> bool:
    run = _open(plan)
    if run is None or run.manifest.export is None:
        return False
    engines = run.manifest.export.tensorrt or {}
    if plan.export.require_trt and not engines.get("built"):
        return False  # exported where TensorRT was missing: --require-trt asks for the engines
    return is_done(run, "export", export_record(run.manifest, export_settings(run, plan.export)).fingerprint)


def _report_done(plan: Plan) -> bool:
    run = _open(plan)
    if plan.report.remeasure or run is None:
        return False
    wanted = report_record(run.manifest, plan.report.latency_budget, plan.report.data_spec).fingerprint
    return is_done(run, "report", wanted)


def pretrain_model(arch_name: str, data_spec: str, cfg: PretrainConfig, device: str, out: Path,
                   reporter: Reporter) -> float:
    """Train a dense `arch_name` on the data (at the architecture's input) and save its state dict to
    `out` (atomically); returns its test top-1. The pretrain stage, and the `train` command."""
    from vpns_deploy.atomic import atomic_torch_save
    from vpns_deploy.data import load_splits
    from vpns_deploy.device import resolve_device
    from vpns_deploy.models import get_arch
    from vpns_deploy.pretrain import pretrain

    arch = get_arch(arch_name)
    net, acc = pretrain(arch, load_splits(data_spec, arch.inputs), cfg, resolve_device(device), reporter)
    atomic_torch_save(Path(out), {k: v.cpu() for k, v in net.state_dict().items()})
    return acc


def _run_pretrain(plan: Plan, reporter: Reporter, overwrite: bool) -> None:
    c = plan.compress
    if c.model.arch is None:
        raise UserError(f"{plan.source}: [pretrain] needs model.arch", "add arch to [model]")
    acc = pretrain_model(c.model.arch, c.data_spec, c.pretrain, c.config.device, Path(c.model.path), reporter)
    reporter.line(f"pretrained {c.model.arch}: test top-1 {acc:.2%} -> {c.model.path}")


def _run_compress(plan: Plan, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.compress_stage import run_compress

    c = plan.compress
    if is_run(plan.out) and not overwrite:
        raise UserError(f"{plan.out} holds a run made with other settings than {plan.source} asks for",
                        "pass --overwrite to replace it, or another output directory")
    run_compress(Path(c.model.path), c.model.arch, c.data_spec, c.config, plan.out, overwrite=overwrite,
                 num_classes=c.model.num_classes, trust_pickle=c.model.trust_pickle, reporter=reporter,
                 inputs=c.model.inputs)


def _run_export(plan: Plan, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.export_stage import run_export
    from pipelines.load_run import pickles_trusted

    e = plan.export
    with pickles_trusted(plan.trust_pickle):  # the user vouched for the run's pickled networks
        run_export(plan.out, with_prompt=e.section.prompt, data_spec=e.data_spec, reporter=reporter,
                   precisions=e.precisions, calib_images=e.section.calib_images, trt=e.section.trt or e.require_trt,
                   require_trt=e.require_trt, graph_resize=e.section.graph_resize,
                   max_drop=e.section.max_precision_drop)


def _run_report(plan: Plan, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.load_run import pickles_trusted
    from pipelines.report_stage import run_report

    with pickles_trusted(plan.trust_pickle):
        run_report(plan.out, plan.report.data_spec, reporter, print_table=False,
                   latency_budget=plan.report.latency_budget)


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", lambda p: p.compress is not None and p.compress.pretrain is not None,
          lambda p: Path(p.compress.model.path).is_file(), _run_pretrain),
    Stage("compress", lambda p: p.compress is not None, _compress_done, _run_compress),
    Stage("export", lambda p: p.export is not None, _export_done, _run_export),
    Stage("report", lambda p: p.report is not None, _report_done, _run_report),
)


def run_plan(plan: Plan, overwrite: bool = False, reporter: Reporter | None = None) -> list[str]:
    """Run every stage the plan asks for that is not done yet; returns the names of the stages that ran.

    Under torchrun rank 0 decides what is done and alone pretrains, exports and reports; the other
    ranks join each compress (they wait for rank 0 at its start, so a pretrained model exists by then)."""
    reporter = reporter or Reporter()
    if plan.compress is not None:  # before any rank joins the job, so no rank waits for another
        check_batch(plan.compress.config.batch_size, world_from_env())
    main = env_rank() == 0  # under torchrun: every rank compresses, rank 0 alone does the rest
    ran = []
    asked = [stage for stage in STAGES if stage.enabled(plan)]
    for stage in asked:
        if rank0_verdict(stage.done(plan) if main else False, plan.device):
            reporter.line(f"[{stage.name}] done earlier, outputs verified: skipped")
            continue
        if not main and stage.name != "compress":
            continue
        if plan.announce:
            reporter.line(f"[{stage.name}] running")
        stage.run(plan, reporter, overwrite)
        ran.append(stage.name)
    return ran


def run_recipe(recipe: Recipe, overwrite: bool = False, reporter: Reporter | None = None) -> list[str]:
    """A recipe is a plan that asks for every stage it has a section for."""
    return run_plan(plan_from_recipe(recipe), overwrite, reporter)
