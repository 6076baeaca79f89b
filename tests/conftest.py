"""Shared fixtures: real data (embedded digits, ../shared CIFAR-10 when present), real trained models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "models" / "cifar10" / "resnet20-12fca82f.th"
RESNET56 = SHARED / "models" / "cifar10" / "resnet56-4bfd9763.th"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the pretrained checkpoints and CIFAR-10 JPEGs live in ../shared")
    return path


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 8) -> Path:
    """A real ImageFolder tree of PNGs (train/ and test/), colours chosen per class and index."""
    from PIL import Image

    for split in ("train", "test"):
        for i, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (50 * i, 10 * j, 7)).save(d / f"{j}.png")
    return root


@pytest.fixture()
def image_folder():
    return write_image_folder


@pytest.fixture(scope="session")
def cifar_tar() -> Path:
    return _require(CIFAR_TAR)


@pytest.fixture(scope="session")
def resnet20_path() -> Path:
    return _require(RESNET20)


@pytest.fixture(scope="session")
def cifar_splits(cifar_tar):
    from vpns_deploy.data import load_splits

    return load_splits(f"tar:{cifar_tar}")


@pytest.fixture(scope="session")
def digits_splits():
    from vpns_deploy.data import load_splits

    return load_splits("digits")


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory, digits_splits) -> Path:
    """A digits CNN really trained for a few epochs (~97 %), saved as a plain state dict."""
    from vpns_deploy.models import get_arch
    from vpns_deploy.pretrain import PretrainConfig, pretrain
    from vpns_deploy.progress import Reporter

    net, acc = pretrain(get_arch("digits_cnn"), digits_splits, PretrainConfig(epochs=6), torch.device("cpu"),
                        Reporter(quiet=True))
    assert acc > 0.9, acc
    path = tmp_path_factory.mktemp("models") / "digits_cnn.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, digits_model) -> Path:
    """A real VPNs run on digits (1 epoch per stage), exported: the input of export/report tests."""
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    out = tmp_path_factory.mktemp("runs") / "digits-vpns"
    cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=64)
    run_compress(digits_model, "digits_cnn", "digits", cfg, out, reporter=Reporter(quiet=True))
    run_export(out, reporter=Reporter(quiet=True))
    return out


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device; say so instead of failing where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
