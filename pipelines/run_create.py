"""Making a run directory all-or-nothing, by one writer: the checks on --out before any work, the lock
beside the run, and the hidden partial directory renamed into place only when the run is complete
(kept, with its checkpoint, when an interrupted compress can resume it)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.artifacts import CHECKPOINT, MANIFEST
from pipelines.manifest import TOOL
from pipelines.run_dir import now
from vpns_deploy.atomic import current_umask
from vpns_deploy.errors import UserError


def is_run(path: Path) -> bool:
    """True only for a directory whose manifest says vpns-deploy wrote it (what --overwrite may replace)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    legacy = {"schema", "artifacts", "config", "model"} <= manifest.keys()  # runs made before the marker
    return manifest.get("tool") == TOOL or legacy


def partial_path(final: Path) -> Path:
    """Where a run is built until it is complete; hidden, never taken for a run directory."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def lock_path(final: Path) -> Path:
    """The lock file beside a run: held by the one process writing that run."""
    final = Path(final)
    return final.parent / f".{final.name}.lock"


def check_out(final: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that cannot or must not become a run directory."""
    final = Path(final)
    resolved = final.resolve()
    cwd = Path.cwd().resolve()
    if str(final).strip() in ("", ".") or final.name in ("", ".", "..") or resolved == cwd \
            or resolved in cwd.parents or resolved.parent == resolved:
        raise UserError(f"--out {str(final)!r} is the current directory or one above it, not a new run directory",
                        "pass --out runs/NAME (a directory that compress creates)")
    _check_writable(final.parent)
    if not (final.exists() or final.is_symlink()):
        return
    if not overwrite:
        raise UserError(f"{final} already exists", "pass --out to another directory or --overwrite")
    if not final.is_dir() or final.is_symlink():
        raise UserError(f"{final} is a {'symlink' if final.is_symlink() else 'file'}, not a run directory; "
                        "--overwrite replaces only run directories", "pass another --out")
    if not is_run(final):
        raise UserError(f"{final} is not a vpns-deploy run directory (its {MANIFEST} does not say so); "
                        "--overwrite replaces only run directories",
                        "pass another --out, or move that folder away yourself")


def _check_writable(parent: Path) -> None:
    """Try what the run will do first (create a file where the run goes), so a read-only or
    permission-denied --out fails in one line before any data is read or any epoch trained."""
    probe_dir = Path(parent)
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent  # the nearest existing ancestor: where mkdir would start
    try:
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".vpns-deploy-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write in {probe_dir}: {exc.strerror or exc}",
                        "pass an --out where you may write") from None


@contextmanager
def run_lock(final: Path) -> Iterator[Path]:
    """Hold `.<name>.lock` beside the run (fcntl.flock) for the whole command; a second writer is told who."""
    path = lock_path(final)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {path.parent}: {exc.strerror or exc}",
                        "pass an --out where you may write") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as exc:
            raise UserError(f"cannot write in {path.parent}: {exc.strerror or exc}",
                            "pass an --out where you may write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{final} is being written by another vpns-deploy process ({holder})",
                            "wait for it to finish, or pass another --out") from None
        try:  # the file may have been unlinked by its previous holder between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": now(),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # before unlocking: a waiter then re-opens a fresh file
        finally:
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class Claim:
    """What may already sit in a run's partial directory (a FileCheckpoint satisfies this)."""

    def claim(self, overwrite: bool) -> bool: ...  # pragma: no cover - protocol


@contextmanager
def staged_directory(final: Path, overwrite: bool, checkpoint: Claim | None = None,
                     on_resume: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a run in its hidden partial directory and rename it into place only when complete.

    Holds the run's lock throughout, so a second writer of the same --out stops with a message.
    `checkpoint.claim` decides, under the lock, whether an unfinished run there is resumed.
    If the body fails after a training checkpoint was written there, the partial directory stays so
    the same command resumes it; otherwise it is removed. The checkpoint is dropped on success.
    A finished run is replaced only with --overwrite, re-checked at the final rename.
    """
    final = Path(final)
    check_out(final, overwrite)
    with run_lock(final):
        check_out(final, overwrite)  # again under the lock: another process may have finished meanwhile
        partial = partial_path(final)
        if partial.exists() and checkpoint is not None and checkpoint.claim(overwrite) and on_resume:
            on_resume(partial)
        try:
            partial.mkdir(parents=True, exist_ok=True)
            os.chmod(partial, 0o777 & ~current_umask())
        except OSError as exc:
            raise UserError(f"cannot create {partial}: {exc.strerror or exc}",
                            "pass an --out where you may write") from None
        try:
            yield partial
        except BaseException:
            if not (partial / CHECKPOINT).exists():
                shutil.rmtree(partial, ignore_errors=True)
            raise
        if final.exists() or final.is_symlink():
            kept = f"the finished run is kept in {partial}"
            if not overwrite:
                raise UserError(f"{final} appeared while this run was being made; {kept}",
                                "run the same command with --overwrite to put it in place")
            if not is_run(final):
                raise UserError(f"{final} was replaced by something that is not a run while this run was being "
                                f"made; {kept}", "move it away and run the same command again")
        (partial / CHECKPOINT).unlink(missing_ok=True)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, trash / "run")
            os.replace(partial, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(partial, final)
