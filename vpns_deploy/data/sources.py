"""Resolve a data spec: first a cheap catalog (class names, file lists, labels), then splits built
at the model's input (channels, size, interpolation, crop), in RAM when they fit, streamed otherwise."""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vpns_deploy.config import DEFAULT_MEMORY_BUDGET, DEFAULT_SEED, VAL_SEED
from vpns_deploy.data.cache import cached_tensors, extracted_archive, memory_budget_bytes
from vpns_deploy.data.dataset import (
    AnySet, AugmentPolicy, ImageSet, Splits, StreamSet, balanced_indices, complement, per_class_fraction,
)
from vpns_deploy.data.decode import FileSource, ImageSource, TensorSource, image_size, is_image_file
from vpns_deploy.data.geometry import Geometry, policy_for
from vpns_deploy.errors import UserError

if TYPE_CHECKING:
    from vpns_deploy.models.registry import InputSpec

DATA_SPEC_HELP = (
    "digits (scikit-learn's bundled 8x8 handwritten digits, embedded), "
    "imagefolder:DIR (DIR/train/<class>/* and DIR/test or DIR/val; .jpg .jpeg .png .bmp .webp .tif .tiff "
    "of any size and colour mode), "
    "tar:FILE (that ImageFolder tree inside a .tar/.tar.gz, extracted once into the cache), "
    "cifar10:ROOT (torchvision's on-disk cifar-10-batches-py, no download)"
)


TENSOR_CHUNK = 2048  # images resized at once from an in-memory source


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


def load_splits(
    spec: str, inputs: "InputSpec | None" = None, *, val_fraction: float = 0.0, train_subset: int | None = None,
    test_subset: int | None = None, seed: int = DEFAULT_SEED, workers: int | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
) -> Splits:
    """read_catalog + build_splits: the data at a model's input (None: the data's own channels and size)."""
    return build_splits(read_catalog(spec), inputs, val_fraction=val_fraction, train_subset=train_subset,
                        test_subset=test_subset, seed=seed, workers=workers, memory_budget=memory_budget)


def absolute_spec(spec: str) -> str:
    """The spec with its path made absolute, so a run directory can find its data from anywhere."""
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).expanduser().resolve()}" if sep and arg else spec


def build_splits(
    catalog: Catalog, inputs: "InputSpec | None" = None, *, val_fraction: float = 0.0,
    train_subset: int | None = None, test_subset: int | None = None, seed: int = DEFAULT_SEED,
    workers: int | None = None, memory_budget: float = DEFAULT_MEMORY_BUDGET, include_train: bool = True,
) -> Splits:
    """Train (minus validation), validation and test sets at the model's input.

    include_train=False leaves the training split empty (nothing of it decoded): for commands that
    only measure on the test split.

    train_subset draws a class-balanced subset first (validation included); val_fraction of it,
    class-balanced with a fixed seed (VAL_SEED, the same for every run seed), becomes the
    validation split. Splits that fit `memory_budget` (a fraction of RAM) are decoded once into
    uint8 tensors (and, for tar archives, cached on disk by sha256 and size); otherwise every
    split is streamed from its files by DataLoader workers.
    """
    from vpns_deploy.data.loader import default_workers

    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must lie in [0, 1), got {val_fraction}", "e.g. 0.1, or 0 for no validation split")
    workers = default_workers() if workers is None else workers
    channels = inputs.channels if inputs is not None else catalog.channels
    size = inputs.size if inputs is not None else None
    interp = inputs.interpolation if inputs is not None else "bilinear"
    crop_pct = inputs.crop_pct if inputs is not None else 1.0
    train_geo = Geometry(channels, size, "train", interp, crop_pct)
    test_geo = Geometry(channels, size, "eval", interp, crop_pct)

    train_sel = (_selection(catalog.train.labels, train_subset, seed) if include_train
                 else torch.zeros(0, dtype=torch.int64))
    val_pos = (per_class_fraction(catalog.train.labels[train_sel], val_fraction, VAL_SEED)
               if val_fraction > 0 else torch.zeros(0, dtype=torch.int64))
    val_sel, fit_sel = train_sel[val_pos], train_sel[complement(len(train_sel), val_pos)]
    test_sel = _selection(catalog.test.labels, test_subset, seed)
    native_hw = _native_size(catalog, train_sel, test_sel) if size is None else None

    budget = memory_budget_bytes(memory_budget)
    need = train_geo.stored_bytes(len(train_sel), native_hw) + test_geo.stored_bytes(len(test_sel), native_hw)
    already_in_ram = isinstance(catalog.train.source, TensorSource) and size is None
    in_memory = already_in_ram or need <= budget
    crop_to = size if size is not None and train_geo.stored_side != size else None

    def stream(raw: RawSplit, sel: torch.Tensor, geo: Geometry) -> StreamSet:
        return StreamSet(raw.source.select(sel), raw.labels[sel], catalog.classes, geo, workers, native_hw)

    if in_memory:
        train_all = _decoded(catalog, catalog.train, train_sel, train_geo, workers, native_hw, budget)
        test = _decoded(catalog, catalog.test, test_sel, test_geo, workers, native_hw, budget)
        fit_images = train_all.images[complement(len(train_sel), val_pos)] if len(val_pos) else train_all.images
        train: AnySet = ImageSet(fit_images, catalog.train.labels[fit_sel], catalog.classes, crop_to)
        val: AnySet | None = ImageSet(train_all.images[val_pos], catalog.train.labels[val_sel], catalog.classes, crop_to)
        del train_all, fit_images  # the full decoded split is not kept beside its two parts
    else:
        train, val, test = (stream(catalog.train, fit_sel, train_geo), stream(catalog.train, val_sel, train_geo),
                            stream(catalog.test, test_sel, test_geo))
    if val is not None and len(val) == 0:
        val = None
    if size is None:
        policy = AugmentPolicy(crop_pad=max(1, native_hw[0] // 8) if native_hw else 1, hflip=catalog.hflip)
    else:
        policy = policy_for(size, catalog.hflip)
    details = {
        "channels": channels, "input_size": size, "interpolation": interp, "crop_pct": crop_pct,
        "train_stored_side": train_geo.stored_side, "storage": "memory" if in_memory else "stream",
        "workers": workers, "decoded_bytes": need, "memory_budget_bytes": budget,
        "val_fraction": val_fraction, "val_seed": VAL_SEED,
    }
    return Splits(train, test, policy, catalog.spec, catalog.fingerprint, val,
                  "memory" if in_memory else "stream", details)


def _selection(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    return balanced_indices(labels, n, seed)


def _native_size(catalog: Catalog, train_sel: torch.Tensor, test_sel: torch.Tensor) -> tuple[int, int]:
    """The size every image must share when no input size is set: the first selected image's (read
    from its header). An image of another size is a one-line error naming it when it is decoded."""
    raw, sel = (catalog.train, train_sel) if len(train_sel) else (catalog.test, test_sel)
    if isinstance(raw.source, TensorSource):
        return tuple(raw.source.images.shape[-2:])  # type: ignore[return-value]
    return image_size(Path(raw.source.name(int(sel[0]))))


def _decoded(catalog: Catalog, raw: RawSplit, sel: torch.Tensor, geo: Geometry, workers: int,
             native_hw: tuple[int, int] | None, budget: int) -> ImageSet:
    """The selected images decoded into RAM at the stored size, once (disk-cached for archives when
    the whole split fits the budget, so a later run with another subset reuses it)."""
    from vpns_deploy.data.loader import decode_stored

    if len(sel) == 0:
        c, side = geo.channels, geo.stored_side
        h, w = (side, side) if side is not None else (native_hw or (0, 0))
        return ImageSet(torch.zeros((0, c, h, w), dtype=torch.uint8), raw.labels[sel], catalog.classes)
    if isinstance(raw.source, TensorSource):  # already pixels: resized here in chunks, no workers needed
        chunks = [geo.store(_channels(raw.source.images[sel[i : i + TENSOR_CHUNK]], geo.channels))
                  for i in range(0, len(sel), TENSOR_CHUNK)]
        return ImageSet(torch.cat(chunks).contiguous(), raw.labels[sel], catalog.classes)
    whole = torch.arange(len(raw.labels))
    if catalog.cache_key is not None and geo.stored_bytes(len(whole), native_hw) <= budget:
        key = (f"{catalog.cache_key}-{raw.folder}-c{geo.channels}-s{geo.stored_side or 'native'}-{geo.role}"
               f"-{geo.interpolation}-p{geo.crop_pct:g}")
        full = cached_tensors(key, lambda: {"images": decode_stored(raw.source, geo, workers, native_hw)})
        images = full["images"] if len(sel) == len(whole) else full["images"][sel]  # no copy of a whole split
        return ImageSet(images, raw.labels[sel], catalog.classes)
    images = decode_stored(raw.source.select(sel), geo, workers, native_hw)
    return ImageSet(images, raw.labels[sel], catalog.classes)


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    from vpns_deploy.data.decode import to_channels

    return to_channels(images, channels)


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
