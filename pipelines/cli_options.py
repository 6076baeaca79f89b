"""Command-line options built from the configuration dataclasses, declared once for `compress` and `sweep`.

Each option's name, type, default and help come from the dataclass field that holds the default
(`vpns_deploy.config.cli(default, help)`): CompressConfig, OptimConfig.lr_scores and the recipe's
ModelSection. A command asks for a group with `@with_options(...)`; its own parameters stay in its
signature, the generated ones replace its `options` parameter and reach it as one dict.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional

import typer

from pipelines.recipe import ModelSection
from vpns_deploy.config import CompressConfig, OptimConfig

# (dataclass, field) per option, in --help order.
MODEL_OPTIONS = tuple((ModelSection, n) for n in ("arch", "input_size", "mean", "std", "interpolation"))
METHOD_OPTIONS = ((CompressConfig, "method"), (CompressConfig, "mode"))
TRAINING_OPTIONS = tuple((CompressConfig, n) for n in (
    "epochs_mask", "epochs_tune", "batch_size", "prompt", "pad")) + ((OptimConfig, "lr_scores"),) \
    + tuple((CompressConfig, n) for n in ("seed", "device", "train_subset", "test_subset", "val_fraction", "workers",
                                           "memory_budget", "bn_images", "distill", "amp", "sync_bn",
                                           "preflight", "dense_reference"))
HEAD_OPTIONS = ((ModelSection, "num_classes"), (CompressConfig, "head"), (CompressConfig, "head_warmup_epochs"),
                (ModelSection, "trust_pickle"))
FLAGS_ONE_WAY = {"trust_pickle"}  # --trust-pickle only: there is no reason to say --no-trust-pickle


def _cli_type(hint: Any) -> Any:
    """The type typer parses: Literal -> str, X | None -> Optional[X], list[float] -> str (comma-separated)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return Optional[_cli_type(args[0])]
    if typing.get_origin(hint) is typing.Literal or typing.get_origin(hint) is list:
        return str
    return hint


def option(cls: type, name: str) -> inspect.Parameter:
    """One typer option from a dataclass field that carries `help` metadata."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if "help" not in f.metadata:
        raise TypeError(f"{cls.__name__}.{name} has no help text: declare it with vpns_deploy.config.cli()")
    hint = typing.get_type_hints(cls)[name]
    flag = "--" + name.replace("_", "-")
    decls = (flag,) if hint is bool and name in FLAGS_ONE_WAY else ()
    info = typer.Option(*decls, help=f.metadata["help"]) if decls else typer.Option(help=f.metadata["help"])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                             annotation=Annotated[_cli_type(hint), info])


def with_options(*groups: tuple[tuple[type, str], ...]) -> Callable:
    """Decorator: the command gets the options of `groups` in place of its `options: dict` parameter."""
    generated = [option(cls, name) for group in groups for cls, name in group]
    names = [p.name for p in generated]

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)  # the real annotations (this module uses PEP 563 strings)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
        at = [p.name for p in own].index("options")  # typer passes every parameter by name

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, options={n: kwargs.pop(n) for n in names}, **kwargs)

        command.__signature__ = sig.replace(parameters=[*own[:at], *generated, *own[at + 1:]])
        return command

    return decorate


def compress_config(options: dict, **fields: Any) -> CompressConfig:
    """The CompressConfig of the options (OptimConfig checks --lr-scores), plus the command's own fields."""
    names = {f.name for f in dataclasses.fields(CompressConfig)}
    optim = dataclasses.replace(OptimConfig(), lr_scores=options["lr_scores"])
    return CompressConfig(**{k: v for k, v in options.items() if k in names}, optim=optim, **fields)


def input_overrides(options: dict):
    """--input-size/--mean/--std/--interpolation as one validated InputOverrides (one-line errors)."""
    from vpns_deploy.models.input_overrides import InputOverrides, parse_floats

    return InputOverrides(options["input_size"], parse_floats(options["mean"], "--mean"),
                          parse_floats(options["std"], "--std"), options["interpolation"])
