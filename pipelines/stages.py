"""The pipeline as named stages with declared outputs; a recipe runs them in order, skipping the done.

    pretrain -> compress (load, mask search, tune) -> export -> report

A stage is done when its outputs are recorded in the run's manifest, verify against their sha256,
and were made with the settings the recipe asks for now. compress resumes from its last finished
epoch on its own (per-epoch checkpoints), so re-running a recipe after a crash loses nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.artifacts import (COMPRESS_OUTPUTS, DENSE_ONNX, MANIFEST, MODEL_ONNX, PROMPT_PT, REPORT_JSON,
                                 REPORT_MD)
from pipelines.manifest import Manifest, run_fingerprint
from pipelines.recipe import Recipe
from pipelines.run_dir import RunDir
from vpns_deploy.data.cache import sha256_file
from vpns_deploy.distributed import env_rank, rank0_verdict
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: tuple[str, ...]
    enabled: Callable[[Recipe], bool]
    done: Callable[[Recipe], bool]
    run: Callable[[Recipe, Reporter, bool], None]


def _manifest(recipe: Recipe) -> Manifest | None:
    return RunDir.open(recipe.out).manifest if (recipe.out / MANIFEST).is_file() else None


def _verified(recipe: Recipe, names: tuple[str, ...]) -> bool:
    run = RunDir.open(recipe.out)
    try:
        for name in names:
            run.verified(name)
    except UserError:
        return False
    return True


def _compress_done(recipe: Recipe) -> bool:
    """Done when the run's fingerprint is the one this recipe's compress would record (the digest a
    checkpoint must match to be resumed) and its outputs verify."""
    from vpns_deploy.data import read_catalog

    m = _manifest(recipe)
    model = Path(recipe.model.path)
    if m is None or not model.is_file():
        return False
    wanted = run_fingerprint(recipe.compress.to_dict(), sha256_file(model), recipe.model.arch,
                             read_catalog(recipe.data.spec).fingerprint, recipe.model.inputs.to_dict())
    return m.fingerprint == wanted and _verified(recipe, COMPRESS_OUTPUTS)


def _export_done(recipe: Recipe) -> bool:
    m = _manifest(recipe)
    if m is None or m.export is None or recipe.export is None:
        return False
    from export.precision import precision_path
    from pipelines.export_stage import prompt_choice

    wants_prompt = prompt_choice(m, recipe.export.prompt, m.prompt is not None)["fold"]
    wanted = _precisions(recipe)
    files = tuple(precision_path(Path(n), p).name for n in (MODEL_ONNX, DENSE_ONNX) for p in wanted)
    e = m.export
    return (e.ships_prompt == wants_prompt and list(e.precisions) == list(wanted)
            and bool(e.graph_resize) == recipe.export.graph_resize
            and ("int8" not in wanted or e.calib_images == recipe.export.calib_images)
            and _verified(recipe, files))


def _precisions(recipe: Recipe) -> tuple[str, ...]:
    return tuple(dict.fromkeys(["fp32", *recipe.export.precisions]))


def _report_done(recipe: Recipe) -> bool:
    from pipelines.report_stage import report_is_current

    return report_is_current(recipe.out)


def _run_pretrain(recipe: Recipe, reporter: Reporter, overwrite: bool) -> None:
    from vpns_deploy.atomic import atomic_torch_save
    from vpns_deploy.data import load_splits
    from vpns_deploy.device import resolve_device
    from vpns_deploy.models import get_arch
    from vpns_deploy.pretrain import pretrain

    if recipe.model.arch is None:
        raise UserError(f"{recipe.source}: [pretrain] needs model.arch", "add arch to [model]")
    arch = get_arch(recipe.model.arch)
    net, acc = pretrain(arch, load_splits(recipe.data.spec, arch.inputs), recipe.pretrain,
                        resolve_device(recipe.compress.device), reporter)
    atomic_torch_save(Path(recipe.model.path), {k: v.cpu() for k, v in net.state_dict().items()})
    reporter.line(f"pretrained {recipe.model.arch}: test top-1 {acc:.2%} -> {recipe.model.path}")


def _run_compress(recipe: Recipe, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.compress_stage import run_compress

    if recipe.out.exists() and not overwrite:
        raise UserError(f"{recipe.out} holds a run with other settings than {recipe.source}",
                        "pass --overwrite to replace it, or change [run] out")
    run_compress(Path(recipe.model.path), recipe.model.arch, recipe.data.spec, recipe.compress, recipe.out,
                 overwrite=True, num_classes=recipe.model.num_classes, trust_pickle=recipe.model.trust_pickle,
                 reporter=reporter, inputs=recipe.model.inputs)


def _run_export(recipe: Recipe, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.export_stage import run_export
    from pipelines.load_run import pickles_trusted

    e = recipe.export
    with pickles_trusted(recipe.model.trust_pickle):  # the recipe vouched for its pickled model
        run_export(recipe.out, with_prompt=e.prompt, reporter=reporter, precisions=_precisions(recipe),
                   calib_images=e.calib_images, trt=e.trt, graph_resize=e.graph_resize)


def _run_report(recipe: Recipe, reporter: Reporter, overwrite: bool) -> None:
    from pipelines.load_run import pickles_trusted
    from pipelines.report_stage import run_report

    with pickles_trusted(recipe.model.trust_pickle):
        run_report(recipe.out, reporter=reporter, print_table=False, latency_budget=recipe.report.latency_budget)


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", (), lambda r: r.pretrain is not None, lambda r: Path(r.model.path).is_file(), _run_pretrain),
    Stage("compress", (*COMPRESS_OUTPUTS, PROMPT_PT), lambda r: True, _compress_done, _run_compress),
    Stage("export", (MODEL_ONNX, DENSE_ONNX), lambda r: r.export is not None, _export_done, _run_export),
    Stage("report", (REPORT_JSON, REPORT_MD), lambda r: r.report is not None and r.report.enabled,
          _report_done, _run_report),
)


def run_recipe(recipe: Recipe, overwrite: bool = False, reporter: Reporter | None = None) -> list[str]:
    """Run every enabled stage that is not done yet; returns the names of the stages that ran.

    Under torchrun rank 0 decides what is done and alone pretrains, exports and reports; the other
    ranks join each compress (they wait for rank 0 at its start, so a pretrained model exists by then)."""
    reporter = reporter or Reporter()
    main = env_rank() == 0  # under torchrun: every rank compresses, rank 0 alone does the rest
    ran = []
    for stage in STAGES:
        if not stage.enabled(recipe):
            continue
        if rank0_verdict(stage.done(recipe) if main else False, recipe.compress.device):
            reporter.line(f"[{stage.name}] done earlier, outputs verified: skipped")
            continue
        if not main and stage.name != "compress":
            continue
        reporter.line(f"[{stage.name}] running")
        stage.run(recipe, reporter, overwrite)
        ran.append(stage.name)
    return ran
