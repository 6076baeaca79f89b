"""The `vpns-deploy` command line: the top layer (nothing imports it). The commands live by group in
cli_make.py (train, compress, sweep, run) and cli_ship.py (export, report), thin wrappers that each
build a Plan for the one stage graph (stages.py); this module registers them in the order `--help`
lists them and turns usage errors into one `error:` line."""
from __future__ import annotations

import signal
import sys

import typer

from pipelines import cli_make, cli_ship
from vpns_deploy import distributed

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Compress vision models with VPNs (visual prompt + learned masks), export them for deployment "
    "with the prompt folded in, and measure what you ship.\n\n"
    "Typical use: compress MODEL -> export RUN_DIR -> report RUN_DIR. Every option in full: docs/OPTIONS.md.",
)
app.command(short_help="Train a dense model from scratch.")(cli_make.train)
app.command(help=cli_make.COMPRESS_HELP, short_help="Prune and fine-tune a model; writes a run directory.")(
    cli_make.compress)
app.command(short_help="One run per sparsity target, then the trade-off plots.")(cli_make.sweep)
app.command("run", short_help="Run a recipe: pretrain, compress, export, report.")(cli_make.run_recipe_cmd)
app.command(short_help="Write the deployment ONNX graphs of a run.")(cli_ship.export)
app.command(short_help="Measure runs and write report.html (several: compared).")(cli_ship.report)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (kill, CI timeouts) unwinds like Ctrl-C, so partial run directories are removed."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """The console script: usage errors (a bad option value, a missing argument) become the same one-line
    `error:` as every other bad input, instead of a boxed usage screen."""
    _interrupt_on_sigterm()
    try:
        code = app(prog_name="vpns-deploy", standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, NoArgsIsHelpError, ...
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vpns-deploy` or a command alone: its help
            typer.echo(ctx.get_help() if ctx is not None else "")
            sys.exit(0)
        message = " ".join(exc.format_message().split()).rstrip(".")
        where = f"; see {ctx.command_path} --help" if ctx is not None else ""
        typer.echo(f"error: {message[:1].lower() + message[1:]}{where}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    finally:  # torchrun SIGTERMs the rest of a failed job: while exiting, that is no interrupt to report
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = code if isinstance(code, int) else 0
    if code == 0:  # every rank of a torchrun job succeeded: end the job together
        distributed.leave()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
