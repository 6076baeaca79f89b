"""A small class-balanced ImageFolder copied out of an ImageFolder tarball (CIFAR-10 JPEGs): the data
the GPU check trains on where the full archive cannot travel (the device gets the checkout and named
folders only).

    python -m bench.gpu_subset --tar ../shared/data/cifar10-jpeg.tar.gz --out .gpu_data/cifar10-sub

The files are copied byte for byte (no re-encoding), the first --train / --test of every class in
the archive's order, so the same archive gives the same subset.
"""
from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from vpns_deploy.errors import UserError

SPLITS = ("train", "test")
DEFAULT_OUT = Path(".gpu_data/cifar10-sub")  # git-ignored (.gitignore): carried, never committed


def make_subset(tar_path: Path, out: Path, per_class: dict[str, int]) -> dict[str, int]:
    """Copy per_class[split] images of every class of each split into out/split/class/; returns the
    images written per split. Refuses an existing non-empty `out` (nothing half-written is mixed in)."""
    if not Path(tar_path).is_file():
        raise UserError(f"{tar_path} does not exist", "pass --tar with an ImageFolder .tar/.tar.gz (train/ and test/)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty", "remove it or pass another --out")
    counts: dict[tuple[str, str], int] = {}
    written = dict.fromkeys(SPLITS, 0)
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            split, cls, name = parts
            if counts.get((split, cls), 0) >= per_class[split]:
                continue
            target = tmp / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            written[split] += 1
    missing = [s for s in SPLITS if written.get(s, 0) == 0]
    if missing:
        raise UserError(f"{tar_path} has no {missing[0]}/<class>/<image> files", "pass an ImageFolder archive")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tar", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train", type=int, default=40, help="images per class from train/ (default 40)")
    p.add_argument("--test", type=int, default=20, help="images per class from test/ (default 20)")
    args = p.parse_args(argv)
    try:
        written = make_subset(args.tar, args.out, {"train": args.train, "test": args.test})
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{args.out}: {written['train']} train and {written['test']} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
