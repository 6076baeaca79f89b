"""The prompt question with about 5x the optimiser steps: VPNs against its paired control (the prompt
frozen at zero) at seeds 7 and 9, from the runs of bench/recipes/prompt-budget.toml (EfficientNet-Lite0
-> CIFAR-10-JPEG, 64 px, the full training split: 47,500 / 2,500 images, 1 + 1 epochs, 90 % unstructured,
the prompt's travel kept from bench/recipes/prompt.toml). The same summary as bench/prompt.py.

    vpns-deploy run bench/recipes/prompt-budget.toml   # the runs (resumable; finished ones are skipped)
    python -m bench prompt-budget [--partial]          # the table, JSON and PNG from them
"""
from __future__ import annotations

import functools

from bench import prompt

TITLE = "The learned prompt against its zero-prompt control, 64 px, full training split"


def main(argv: list[str] | None = None) -> dict:
    from bench import grid

    args = grid.table_args(__doc__, argv)
    return grid.regenerate("prompt-budget", functools.partial(prompt.summarise, title=TITLE),
                           functools.partial(prompt.plot, title="EfficientNet-Lite0 -> CIFAR-10, 64 px, 47,500 images, 90 %"),
                           args.recipe, args.out, args.partial, record=prompt.arm)


if __name__ == "__main__":
    main()
