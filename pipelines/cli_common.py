"""What every `vpns-deploy` command shares: one-line errors, progress for this process, option types
and the small parsers of comma-separated values. Only the command modules (cli_make, cli_ship) and
cli.py import it."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from vpns_deploy.data import DATA_SPEC_HELP
from vpns_deploy.errors import UserError

DATA_HELP = "Data set: digits, imagefolder:DIR (DIR/train/<class>/*), tar:FILE or cifar10:ROOT."
QUIET_HELP = "No live progress bars: one line per epoch."
PRECISION_HELP = "Comma-separated: fp32 (always written), fp16, int8."
RUN_TRUST_PICKLE_HELP = "Allow the run's model.pt/dense.pt to be pickled modules (runs their code)."
# The full text of options whose --help line is short, by parameter name: docs/OPTIONS.md shows it
# (pipelines/cli_doc.py); options built from the configuration dataclasses carry theirs in cli(details=).
DETAILS = {
    "data": f"Data set: {DATA_SPEC_HELP}.",
    "quiet": "No live progress bars: one line per epoch (what non-terminal output, e.g. CI logs, gets anyway).",
    "precision": "Comma-separated: fp32 (always written), fp16 (graph cast to float16), int8 (static, symmetric, "
                 "per-channel weights, calibrated on training images; Q/DQ or QOperator, whichever ONNX Runtime "
                 "runs faster on this CPU, measured; Q/DQ with --trt). Precision lives in the graph, as TensorRT "
                 "10/11 strongly typed networks need.",
    "trust_pickle": "Allow a pickled nn.Module (runs code from the file: only for files you trust). For export and "
                    "report: the run's model.pt/dense.pt may be pickled nn.Modules (a run made from a pickled "
                    "MODEL). Unpickling runs code from the file, and a run directory can be edited by anyone who "
                    "can write it: only for runs you trust.",
    "resume": "Continue an interrupted run (its --out directory) from its last finished epoch, with the settings it "
              "was started with. Re-running the same command does the same.",
    "prompt": "export: fold the learned prompt into the graph, or ship the network without it. Default: what "
              "compress decided on the validation split (folded in only where top-1 with it >= without it, "
              "and with a latency --speedup only where the graph with it stays within 5 % of the target; "
              "recorded in manifest.json).",
    "graph_resize": "Fold a Resize in front of the graph so it takes uint8 NHWC images of any height and width "
                    "(resize shorter side + centre crop, antialiased, as the training evaluation transform; its "
                    "parity with PyTorch is measured and recorded). Without it the graph takes the model's input "
                    "size only.",
    "trt": "Also build TensorRT engines (strongly typed; SPARSE_WEIGHTS for N:M runs; dynamic batch 1..256, opt 64; "
           "timing cache kept in the run). Without a GPU or TensorRT: one line saying which is missing, exit 0.",
}
RUN_DIR_HELP = "Run directory from compress (default: the newest under runs/)."

# What an interrupted command leaves behind (each command writes all-or-nothing, resumably).
INTERRUPTED = {
    "compress": "no run directory was written (a run interrupted after its first epoch keeps its checkpoint "
                "and the same command resumes it)",
    "export": "export did not finish; the run is as it was (no new graph was written): run export again",
    "report": "the run's model and graphs are untouched; run report again for a complete report",
    "sweep": "finished points are kept; the same command skips them and resumes the interrupted one",
    "run_recipe_cmd": "finished stages are kept; running the recipe again continues where it stopped",
    "train": "no model file was written",
}

# Options of several commands that come from no configuration dataclass (those that do: cli_options.py).
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory (only once the new run is complete).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help=PRECISION_HELP)]
RunTrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help=RUN_TRUST_PICKLE_HELP)]


def friendly(fn):
    """Bad input -> one line on stderr and exit code 2; Ctrl-C -> exit 130. No tracebacks, no partial runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # disk full, read-only or vanished paths: one line, not a traceback
            from vpns_deploy.errors import os_error

            typer.echo(f"error: {os_error(exc, 'a file operation')}", err=True)
            raise typer.Exit(UserError.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {INTERRUPTED.get(fn.__name__, 'nothing was half-written')}", err=True)
            raise typer.Exit(130) from None

    return wrapper


def is_rank0() -> bool:
    """True in a single process and on torchrun's rank 0 (imported here: --help never loads torch)."""
    from vpns_deploy.distributed import env_rank

    return env_rank() == 0


def reporter(quiet: bool):
    """Progress for this process: under torchrun only rank 0 shows any (the others train silently)."""
    from vpns_deploy.progress import Reporter

    if not is_rank0():
        from pipelines.rank_checkpoint import silent_reporter

        return silent_reporter()
    return Reporter(quiet=quiet)


def say(text: str) -> None:
    """A command's result line; under torchrun rank 0 alone prints it."""
    if is_rank0():
        typer.echo(text)


def precisions(text: str) -> tuple[str, ...]:
    """'fp16,int8' -> ('fp32', 'fp16', 'int8'): fp32 is always written (the others derive from it)."""
    return tuple(dict.fromkeys(["fp32", *(p.strip() for p in text.split(",") if p.strip())]))


def floats(text: str, what: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}", f"e.g. {what} 0.5,0.7,0.9") from None
    if not values:
        raise UserError(f"{what} is empty", f"e.g. {what} 0.5,0.7,0.9")
    return values


def run_dir_or_latest(run_dir: Optional[Path]) -> Path:
    from pipelines.run_dir import latest_run

    return run_dir if run_dir is not None else latest_run()
