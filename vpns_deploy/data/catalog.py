"""The cheap first look at a data spec: class names, file lists and labels, no pixels decoded (except
in-memory sources such as scikit-learn's digits and CIFAR-10's python batches, which are pixels already)."""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vpns_deploy.data.cache import extracted_archive
from vpns_deploy.data.decode import FileSource, ImageSource, TensorSource, is_image_file
from vpns_deploy.errors import UserError

DATA_SPEC_HELP = (
    "digits (scikit-learn's bundled 8x8 handwritten digits, embedded), "
    "imagefolder:DIR (DIR/train/<class>/* and DIR/test or DIR/val; .jpg .jpeg .png .bmp .webp .tif .tiff "
    "of any size and colour mode), "
    "tar:FILE (that ImageFolder tree inside a .tar/.tar.gz, extracted once into the cache), "
    "cifar10:ROOT (torchvision's on-disk cifar-10-batches-py, no download)"
)


@dataclass
class RawSplit:
    """One split's undecoded images and labels."""

    source: ImageSource
    labels: torch.Tensor
    folder: str  # "train", "test" or "val": for messages and cache keys


@dataclass
class Catalog:
    """What a data spec holds, read without decoding any pixels (except in-memory sources)."""

    spec: str
    fingerprint: str  # sha256 of the source file, or a description of the source
    classes: list[str]
    train: RawSplit
    test: RawSplit
    channels: int  # the data's own channel count (used when no model says otherwise)
    hflip: bool = True  # digits are not mirror-symmetric
    cache_key: str | None = None  # decoded tensors may be cached on disk under this (tar: its sha256)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_catalog(spec: str) -> Catalog:
    """The cheap first look at a data spec: class names and what each split holds."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return _digits(spec)
    if kind in {"imagefolder", "tar", "cifar10"} and arg:
        path = Path(arg).expanduser()
        if not path.exists():
            raise UserError(f"data not found: {path}", f"check the path in --data {spec}")
        if kind == "imagefolder":
            return _imagefolder(path, spec, fingerprint=f"imagefolder:{path.resolve()}", cache_key=None)
        if kind == "tar":
            if not path.is_file():
                raise UserError(f"{path} is not a file", "tar: expects a .tar or .tar.gz file")
            tree, digest = extracted_archive(path)
            return _imagefolder(tree, spec, fingerprint=digest, cache_key=digest[:16])
        return _cifar10(path, spec)
    raise UserError(f"unknown data spec {spec!r}", f"use one of: {DATA_SPEC_HELP}")


def _digits(spec: str) -> Catalog:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=bunch.target, random_state=0)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    classes = [str(c) for c in bunch.target_names]
    return Catalog(spec, "sklearn-digits", classes, RawSplit(TensorSource(images[tr]), labels[tr], "train"),
                   RawSplit(TensorSource(images[te]), labels[te], "test"), channels=1, hflip=False)


def _find_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _list_folder(folder: Path, classes: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """(classes, image paths, labels) of an ImageFolder split; files are sorted, dot-files skipped."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes or found
    if found != classes:
        raise UserError(
            f"class folders in {folder} ({len(found)}: {found[:4]}) differ from the training classes "
            f"({len(classes)}: {classes[:4]})",
            "give every split the same <class> sub-folders",
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(Path(f))]
        files.sort()
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"no images found in {folder}",
                        f"expected {folder}/<class>/*.jpg (or .jpeg .png .bmp .webp .tif .tiff)")
    empty = [name for i, name in enumerate(classes) if i not in set(labels)]
    if empty:
        raise UserError(f"class folder {folder / empty[0]} holds no images ({len(empty)} such folders)",
                        "add .jpg/.jpeg/.png/.bmp/.webp/.tif images or remove the folder")
    return classes, paths, labels


def _imagefolder(root: Path, spec: str, fingerprint: str, cache_key: str | None) -> Catalog:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory", "imagefolder: expects DIR with train/ and test/ inside")
    train_dir = _find_split_dir(root, ("train",))
    test_dir = _find_split_dir(root, ("test", "val"))
    if train_dir is None or test_dir is None:
        raise UserError(
            f"{spec}: expected train/ and test/ (or val/) folders, found {sorted(p.name for p in root.iterdir())[:6]}",
            "lay the data out as ImageFolder: train/<class>/*.jpg and test/<class>/*.jpg",
        )
    classes, train_paths, train_labels = _list_folder(train_dir, None)
    _, test_paths, test_labels = _list_folder(test_dir, classes)
    return Catalog(spec, fingerprint, classes,
                   RawSplit(FileSource(train_paths), torch.tensor(train_labels, dtype=torch.int64), "train"),
                   RawSplit(FileSource(test_paths), torch.tensor(test_labels, dtype=torch.int64), test_dir.name),
                   channels=3, cache_key=cache_key)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR python batches are pickles; allow only numpy array reconstruction, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"{path} is not a CIFAR-10 python batch ({exc})", "re-create it with torchvision") from None


def _cifar10(root: Path, spec: str) -> Catalog:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (base / n).is_file()]
    if missing:
        raise UserError(
            f"{base} lacks CIFAR-10 batches {missing[:3]}",
            "point cifar10:ROOT at the folder holding cifar-10-batches-py (no download is attempted)",
        )

    def load(files: list[str], folder: str) -> RawSplit:
        batches = [_read_cifar_batch(base / n) for n in files]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
        return RawSplit(TensorSource(torch.from_numpy(data.astype(np.uint8))),
                        torch.from_numpy(labels.astype(np.int64)), folder)

    meta = base / "batches.meta"
    classes = (
        [str(c) for c in _read_cifar_batch(meta)["label_names"]]
        if meta.is_file()
        else [str(i) for i in range(10)]
    )
    return Catalog(spec, f"cifar10:{base.resolve()}", classes, load(names, "train"), load(["test_batch"], "test"),
                   channels=3)
