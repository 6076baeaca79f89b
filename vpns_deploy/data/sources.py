"""Resolve a data spec string to in-memory train/test splits."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from vpns_deploy.data.cache import cached_tensors, extracted_archive
from vpns_deploy.data.dataset import AugmentPolicy, ImageSet, Splits
from vpns_deploy.errors import UserError

DATA_SPEC_HELP = (
    "digits (scikit-learn's bundled 8x8 handwritten digits, embedded), "
    "imagefolder:DIR (DIR/train/<class>/* and DIR/test or DIR/val), "
    "tar:FILE (that ImageFolder tree inside a .tar/.tar.gz, extracted once into the cache), "
    "cifar10:ROOT (torchvision's on-disk cifar-10-batches-py, no download)"
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def load_splits(spec: str) -> Splits:
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


def absolute_spec(spec: str) -> str:
    """The spec with its path made absolute, so a run directory can find its data from anywhere."""
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).expanduser().resolve()}" if sep and arg else spec


def _policy_for(image_set: ImageSet, hflip: bool = True) -> AugmentPolicy:
    _, h, _ = image_set.image_shape
    return AugmentPolicy(crop_pad=max(1, h // 8), hflip=hflip)


def _digits(spec: str) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=bunch.target, random_state=0)
    classes = [str(c) for c in bunch.target_names]
    train = ImageSet(images[tr], labels[tr], classes)
    test = ImageSet(images[te], labels[te], classes)
    # Digits are not mirror-symmetric: crop jitter only.
    return Splits(train, test, AugmentPolicy(crop_pad=1, hflip=False), spec, "sklearn-digits")


def _find_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _decode_folder(folder: Path, classes: list[str] | None) -> dict:
    from PIL import Image, UnidentifiedImageError

    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = classes or found
    if found != classes:
        raise UserError(
            f"class folders in {folder} ({len(found)}) differ from the training classes ({len(classes)})",
            "give every split the same <class> sub-folders",
        )
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
            except (UnidentifiedImageError, OSError) as exc:
                raise UserError(f"cannot decode image {path} ({exc})", "remove or replace that file") from None
            labels.append(label)
    if not images:
        raise UserError(
            f"no images found in {folder}",
            f"expected {folder}/<class>/*.jpg or *.png",
        )
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise UserError(
            f"images in {folder} have {len(shapes)} different sizes (e.g. {sorted(shapes)[:2]})",
            "resize them to one size first",
        )
    return {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes}


def _imagefolder(root: Path, spec: str, fingerprint: str, cache_key: str | None) -> Splits:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory", "imagefolder: expects DIR with train/ and test/ inside")
    train_dir = _find_split_dir(root, ("train",))
    test_dir = _find_split_dir(root, ("test", "val"))
    if train_dir is None or test_dir is None:
        raise UserError(
            f"{spec}: expected train/ and test/ (or val/) folders, found {sorted(p.name for p in root.iterdir())[:6]}",
            "lay the data out as ImageFolder: train/<class>/*.jpg and test/<class>/*.jpg",
        )

    def decode(folder: Path, classes: list[str] | None) -> dict:
        if cache_key is None:
            return _decode_folder(folder, classes)
        return cached_tensors(f"{cache_key}-{folder.name}", lambda: _decode_folder(folder, classes))

    train_raw = decode(train_dir, None)
    test_raw = decode(test_dir, list(train_raw["classes"]))
    train = ImageSet(train_raw["images"], train_raw["labels"], list(train_raw["classes"]))
    test = ImageSet(test_raw["images"], test_raw["labels"], list(test_raw["classes"]))
    if train.image_shape != test.image_shape:
        raise UserError(
            f"train images are {train.image_shape} but test images are {test.image_shape}",
            "resize both splits to one size",
        )
    return Splits(train, test, _policy_for(train), spec, fingerprint)


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


def _cifar10(root: Path, spec: str) -> Splits:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (base / n).is_file()]
    if missing:
        raise UserError(
            f"{base} lacks CIFAR-10 batches {missing[:3]}",
            "point cifar10:ROOT at the folder holding cifar-10-batches-py (no download is attempted)",
        )

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_read_cifar_batch(base / n) for n in files]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
        return torch.from_numpy(data.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))

    meta = base / "batches.meta"
    classes = (
        [str(c) for c in _read_cifar_batch(meta)["label_names"]]
        if meta.is_file()
        else [str(i) for i in range(10)]
    )
    train = ImageSet(*load(names), classes)
    test = ImageSet(*load(["test_batch"]), classes)
    return Splits(train, test, _policy_for(train), spec, f"cifar10:{base.resolve()}")
