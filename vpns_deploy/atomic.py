"""Write files so that a crash leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), fsync it, then rename over path.

    An OSError (disk full, read-only, permission) comes out naming the file it was writing, so the
    CLI can say which write failed in one line; the previous file, if any, is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        raise OSError(exc.errno, f"writing {path.name} failed: {reason}", str(path)) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete `.NAME.<pid>.*.tmp` files beside path whose writer process no longer exists.

    A writer killed with SIGKILL (or a power cut) cannot clean up its temporary file, which can be
    as large as the artifact; its pid in the name tells later writers whether it is still running.
    Temporaries of live processes, and names without a pid, are left alone.
    """
    removed = []
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        pid_text = tmp.name[len(Path(path).name) + 2 :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass  # another writer removed it first, or it is not ours to remove
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path, obj: object) -> Path:
    import io

    import torch

    # Serialise in memory first: torch's own file writer turns ENOSPC into an unreadable
    # "enforce fail at inline_container.cc" RuntimeError; Python's write keeps the errno.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())
