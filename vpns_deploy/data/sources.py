"""Build a data spec's splits at the model's input (channels, size, interpolation, crop): in RAM when
they fit, streamed by DataLoader workers otherwise. The catalog (what a spec holds) is data/catalog.py."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vpns_deploy.config import DEFAULT_MEMORY_BUDGET, DEFAULT_SEED, VAL_SEED
from vpns_deploy.data.cache import cached_tensors, memory_budget_bytes
from vpns_deploy.data.catalog import DATA_SPEC_HELP, Catalog, RawSplit, read_catalog
from vpns_deploy.data.dataset import (
    AnySet, AugmentPolicy, ImageSet, Splits, StreamSet, balanced_indices, complement, per_class_fraction,
)
from vpns_deploy.data.decode import TensorSource, image_size
from vpns_deploy.data.geometry import Geometry, policy_for
from vpns_deploy.errors import UserError

if TYPE_CHECKING:
    from vpns_deploy.models.registry import InputSpec

__all__ = ["DATA_SPEC_HELP", "Catalog", "RawSplit", "absolute_spec", "build_splits", "load_splits", "read_catalog"]

TENSOR_CHUNK = 2048  # images resized at once from an in-memory source


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
    train_geo, test_geo = _geometries(catalog, inputs)
    channels, size, interp, crop_pct = train_geo.channels, train_geo.size, train_geo.interpolation, train_geo.crop_pct

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

    if in_memory:
        train, val, test = _in_memory(catalog, (train_sel, val_pos, test_sel), (train_geo, test_geo), workers,
                                      native_hw, budget, crop_to)
    else:
        def stream(raw: RawSplit, sel: torch.Tensor, geo: Geometry) -> StreamSet:
            return StreamSet(raw.source.select(sel), raw.labels[sel], catalog.classes, geo, workers, native_hw)

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


def _geometries(catalog: Catalog, inputs: "InputSpec | None") -> tuple[Geometry, Geometry]:
    """Train and eval geometry at the model's input (None: the data's own channels and size)."""
    channels = inputs.channels if inputs is not None else catalog.channels
    size = inputs.size if inputs is not None else None
    interp = inputs.interpolation if inputs is not None else "bilinear"
    crop_pct = inputs.crop_pct if inputs is not None else 1.0
    return (Geometry(channels, size, "train", interp, crop_pct), Geometry(channels, size, "eval", interp, crop_pct))


def _in_memory(catalog: Catalog, selections: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               geos: tuple[Geometry, Geometry], workers: int, native_hw: tuple[int, int] | None, budget: int,
               crop_to: int | None) -> tuple[AnySet, AnySet | None, AnySet]:
    """(train, validation, test) decoded into RAM; validation is cut from the decoded training split
    (val_pos: positions within train_sel), which is not kept beside its two parts."""
    train_sel, val_pos, test_sel = selections
    train_all = _decoded(catalog, catalog.train, train_sel, geos[0], workers, native_hw, budget)
    test = _decoded(catalog, catalog.test, test_sel, geos[1], workers, native_hw, budget)
    fit_pos = complement(len(train_sel), val_pos)
    fit_images = train_all.images[fit_pos] if len(val_pos) else train_all.images
    labels = catalog.train.labels
    train = ImageSet(fit_images, labels[train_sel[fit_pos]], catalog.classes, crop_to)
    val = ImageSet(train_all.images[val_pos], labels[train_sel[val_pos]], catalog.classes, crop_to)
    return train, val, test


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
