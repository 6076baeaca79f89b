"""A cache outside the repository: archives extracted once, keyed by their sha256, decoded tensors kept;
and the memory budget that decides whether a split is decoded into RAM or streamed."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch

from vpns_deploy.errors import UserError

CACHE_ENV = "VPNS_DEPLOY_CACHE"


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vpns-deploy"
    )
    return Path(root)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def extracted_archive(archive: Path) -> tuple[Path, str]:
    """Extract a tar/tar.gz once into the cache; returns (directory, sha256 of the archive)."""
    digest = sha256_file(archive)
    target = cache_root() / "datasets" / digest[:16]
    done = target / ".complete"
    if done.exists():
        return target / "tree", digest
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=target))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(
                f"{archive} is not a readable tar archive ({exc.__class__.__name__}: {exc})",
                "pass tar:FILE with an ImageFolder tree (train/<class>/*.jpg, test/<class>/*.jpg) inside",
            ) from None
        shutil.rmtree(target / "tree", ignore_errors=True)
        os.replace(tmp, target / "tree")
        done.write_text(digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "tree", digest


def cached_tensors(key: str, build) -> dict:
    """Load a dict of tensors cached under key, or build it and store it atomically."""
    path = cache_root() / "decoded" / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(value, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return value


def physical_memory_bytes() -> int:
    """Total RAM of this machine (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def memory_budget_bytes(fraction: float) -> int:
    """How many bytes of decoded images may be held in RAM: `fraction` of the physical memory."""
    return int(fraction * physical_memory_bytes())
