"""User-facing errors: one line naming the problem and the fix, never a traceback."""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Raised for bad input; the CLI prints the message on one line and exits non-zero."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))


# What the user can do about the file-system failures a long run meets in practice.
_OS_FIXES = {
    errno.ENOSPC: "free some disk space (or pass --out on another disk) and run the same command again",
    errno.EDQUOT: "free some space within your quota and run the same command again",
    errno.EFBIG: "the file system or a ulimit (ulimit -f) caps the file size; raise it or write elsewhere",
    errno.EACCES: "pass an --out where you may write, or fix the permissions",
    errno.EPERM: "pass an --out where you may write, or fix the permissions",
    errno.EROFS: "the file system is read-only; pass an --out on a writable one",
    errno.ENOTDIR: "a part of the path is a file, not a directory; pass another path",
}


def os_error(exc: OSError, doing: str) -> UserError:
    """An OSError as a one-line UserError: what was being done, the system's reason, what to do."""
    reason = exc.strerror or os.strerror(exc.errno or 0) or exc.__class__.__name__
    where = exc.filename if exc.filename is not None else ""
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and the disk, then run the same command again")
    return UserError(f"{doing} failed: {reason}" + (f" ({where})" if where else ""), fix)
