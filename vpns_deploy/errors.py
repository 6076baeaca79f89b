"""User-facing errors: one line naming the problem and the fix, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Raised for bad input; the CLI prints the message on one line and exits non-zero."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))
