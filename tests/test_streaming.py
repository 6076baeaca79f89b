"""Real photo folders: mixed sizes and colour modes, the model's channels and size, streaming through
DataLoader workers (exact and repeatable), one-line errors for bad files, the validation split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vpns_deploy.data import ImageSet, StreamSet, load_splits
from vpns_deploy.data.batches import train_batches, uint8_batches
from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import InputSpec

CPU = torch.device("cpu")
RGB = (0.5, 0.5, 0.5)


def _inputs(channels: int = 3, size: int | None = 24, crop_pct: float = 1.0) -> InputSpec:
    return InputSpec(channels, RGB[:channels], RGB[:channels], size=size, crop_pct=crop_pct)


def write_mixed_folder(root: Path, per_class: int = 4) -> Path:
    """Two classes of real files in every awkward format a user's folder holds: sizes 50x70 to
    300x200, grayscale, palette, RGBA, LA, CMYK JPEG, 16-bit PNG, upper-case and other suffixes."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def rgb(h: int, w: int, level: int) -> Image.Image:
        return Image.fromarray(np.clip(rng.normal(level, 20, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")

    makers = [
        lambda lv: (rgb(70, 50, lv), "a.jpg"),
        lambda lv: (rgb(200, 300, lv).convert("L"), "b.PNG"),
        lambda lv: (rgb(64, 64, lv).convert("P"), "c.png"),
        lambda lv: (rgb(90, 120, lv).convert("RGBA"), "d.webp"),
        lambda lv: (rgb(80, 60, lv).convert("CMYK"), "e.JPEG"),
        lambda lv: (Image.fromarray((np.full((60, 80), lv, np.uint16) * 257)), "f.png"),  # 16-bit grey
        lambda lv: (rgb(55, 77, lv).convert("LA"), "g.tif"),
        lambda lv: (rgb(100, 100, lv), "h.bmp"),
    ]
    for split in ("train", "test"):
        for c, (name, level) in enumerate((("dark", 60), ("bright", 190))):
            d = root / split / name
            d.mkdir(parents=True)
            for j in range(per_class):
                im, fname = makers[(j + c) % len(makers)](level)
                im.save(d / f"{j}{fname}")
            (d / ".DS_Store").write_bytes(b"\0\1junk")  # dot-files are skipped
            (d / "notes.txt").write_text("not an image")  # other suffixes too
    return root


@pytest.fixture()
def mixed(tmp_path) -> Path:
    return write_mixed_folder(tmp_path / "mixed")


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_folder_becomes_the_models_channels_and_size(mixed, channels):
    splits = load_splits(f"imagefolder:{mixed}", _inputs(channels, 24), workers=0)
    assert splits.train.image_shape == (channels, 24, 24) and splits.test.image_shape == (channels, 24, 24)
    assert len(splits.train) == 8 and splits.train.classes == ["bright", "dark"]
    for data in (splits.train, splits.test):
        for x, y in uint8_batches(data, 16):
            assert x.dtype == torch.uint8 and x.shape[1:] == (channels, 24, 24)
            # Every format keeps its brightness: class "dark" (label 1) ~60, "bright" (label 0) ~190.
            means = x.float().mean(dim=(1, 2, 3))
            assert bool((means[y == 1] < 110).all()) and bool((means[y == 0] > 140).all()), means


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from vpns_deploy.data.decode import decode_image

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(path)  # 128.5 / 255 of full scale
    assert Image.open(path).mode == "I;16"
    assert int(decode_image(path, 1)[0, 0, 0]) == 128 and int(decode_image(path, 3)[2, 0, 0]) == 128


def test_mixed_sizes_without_input_size_is_a_one_line_error(mixed):
    with pytest.raises(UserError, match="--input-size") as err:
        load_splits(f"imagefolder:{mixed}", _inputs(3, None))
    assert "\n" not in str(err.value) and "px" in str(err.value)


@pytest.mark.parametrize("memory_budget", [0.25, 0.0], ids=["memory", "stream"])
def test_corrupt_file_names_the_file(mixed, memory_budget):
    bad = mixed / "train" / "dark" / "zz-broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(UserError, match="zz-broken.jpg") as err:
        splits = load_splits(f"imagefolder:{mixed}", _inputs(3, 24), memory_budget=memory_budget, workers=1)
        for _ in train_batches(splits.train, 4, torch.Generator().manual_seed(0), CPU, splits.augment):
            pass
    assert "\n" not in str(err.value) and "remove or replace" in str(err.value)


def test_streamed_and_in_memory_sets_see_the_same_images(mixed):
    mem = load_splits(f"imagefolder:{mixed}", _inputs(3, 80, crop_pct=0.875), val_fraction=0.25, workers=0)
    stream = load_splits(f"imagefolder:{mixed}", _inputs(3, 80, crop_pct=0.875), val_fraction=0.25,
                         memory_budget=0.0, workers=0)
    assert mem.storage == "memory" and stream.storage == "stream"
    assert isinstance(mem.test, ImageSet) and isinstance(stream.test, StreamSet)
    assert mem.augment == stream.augment and mem.augment.crop_size == 80 and mem.augment.resize_side == 90
    for a, b in ((mem.test, stream.test), (mem.val, stream.val)):
        (xa, ya), (xb, yb) = next(uint8_batches(a, 64)), next(uint8_batches(b, 64))
        assert torch.equal(ya, yb) and torch.equal(xa, xb) and xa.shape[1:] == (3, 80, 80)
    # The un-augmented training view is the same in both; only the augmentation draws differ.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    (xm, ym), (xs, ys) = next(train_batches(mem.train, 64, g1, CPU, None)), next(train_batches(stream.train, 64, g2, CPU, None))
    assert torch.equal(ym, ys) and torch.equal(xm, xs)


def test_streaming_is_exact_for_any_worker_count_and_resumes(mixed):
    """Order and augmentation come from the caller's generator alone: 0 and 2 workers give the same
    batches, and a generator restored from a saved state (a resumed run) continues identically."""
    splits = load_splits(f"imagefolder:{mixed}", _inputs(3, 24), memory_budget=0.0)

    def epoch(gen: torch.Generator, workers: int) -> list[torch.Tensor]:
        return [x for x, _ in train_batches(splits.train, 3, gen, CPU, splits.augment, workers)]

    g0, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = epoch(g0, 0), epoch(g2, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 3
    saved = g0.get_state()
    assert torch.equal(saved, g2.get_state())  # workers never touch the generator
    nxt = epoch(g0, 0)
    g3 = torch.Generator()
    g3.set_state(saved)
    assert all(torch.equal(x, y) for x, y in zip(nxt, epoch(g3, 1)))
    assert not all(torch.equal(x, y) for x, y in zip(a, nxt))  # a new epoch draws anew


def test_validation_split_is_class_balanced_disjoint_and_seed_independent(digits_splits):
    a = load_splits("digits", val_fraction=0.1, seed=7)
    b = load_splits("digits", val_fraction=0.1, seed=9)
    assert a.val is not None and torch.equal(a.val.images, b.val.images)  # fixed seed: same images for every run
    counts = torch.bincount(a.val.labels, minlength=10)
    full = torch.bincount(digits_splits.train.labels, minlength=10)
    assert torch.equal(counts, torch.round(full * 0.1).long())
    assert len(a.train) + len(a.val) == len(digits_splits.train)
    rows = {bytes(im.numpy()) for im in digits_splits.train.images}
    assert len({bytes(im.numpy()) for im in a.train.images} | {bytes(im.numpy()) for im in a.val.images}) == len(rows)
    assert load_splits("digits", val_fraction=0.0).val is None


def test_train_subset_counts_validation_and_test_subset_is_kept():
    splits = load_splits("digits", val_fraction=0.2, train_subset=100, test_subset=50, seed=7)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.val) == 20 and len(splits.test) == 50


def test_grey_digits_feed_a_3_channel_model_and_colour_a_1_channel_one(tmp_path, image_folder):
    grey = load_splits("digits", _inputs(3, None))
    assert grey.train.image_shape == (3, 8, 8) and torch.equal(grey.train.images[:, 0], grey.train.images[:, 2])
    colour = load_splits(f"imagefolder:{image_folder(tmp_path / 'd')}", _inputs(1, None))
    assert colour.train.image_shape == (1, 8, 8)
    assert int(colour.train.images[3, 0, 0, 0]) == round(0.299 * 50 + 0.114 * 7)  # PIL's luma


def test_per_epoch_validation_and_test_only_at_stage_end(digits_model):
    """run_stage evaluates the validation split after every epoch and the test split after the last."""
    from pipelines.compress_stage import prepare_inputs
    from vpns_deploy.compress import compress
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    cfg = CompressConfig(epochs_mask=2, epochs_tune=1, batch_size=128, train_subset=400, test_subset=100,
                         val_fraction=0.25)
    loaded, splits = prepare_inputs(digits_model, "digits_cnn", "digits", cfg)
    assert len(splits.val) == 100 and len(splits.train) == 300
    hist = compress(loaded, splits, cfg, CPU, Reporter(quiet=True)).history
    assert [(r.stage, r.epoch) for r in hist] == [("mask", 1), ("mask", 2), ("tune", 1)]
    assert all(r.val_acc_plain is not None and r.val_acc_prompted is not None for r in hist)
    assert [r.test_acc_plain is not None for r in hist] == [False, True, True]
    assert all((r.test_acc_prompted is None) == (r.test_acc_plain is None) for r in hist)
    # Accuracies are fractions of the split sizes.
    assert all(abs(r.val_acc_plain * 100 - round(r.val_acc_plain * 100)) < 1e-9 for r in hist)


def test_export_data_with_other_channels_is_converted_not_blamed_on_the_arch(tmp_path, digits_run):
    """`export --data` of RGB images for a 1-channel run is converted to the run's input."""
    from PIL import Image

    from pipelines.load_run import load_run

    root = tmp_path / "rgb"
    for split in ("train", "test"):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            Image.new("RGB", (8, 8), (20 * c, 0, 0)).save(root / split / str(c) / "x.png")
    test = load_run(digits_run).test_split(f"imagefolder:{root}")
    assert test.image_shape == (1, 8, 8) and len(test) == 10
    assert int(test.batch(0, 10)[9, 0, 0, 0]) == round(0.299 * 180)


def test_mixed_folder_streamed_through_compress_export_report(tmp_path, mixed):
    """The real commands on a real mixed folder, streamed by a worker process: the manifest says how the
    data was built, the ONNX takes the input size, report measures it on the same (converted) images."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    from vpns_deploy.models import get_arch

    model, out = tmp_path / "r20.pt", tmp_path / "run"
    torch.manual_seed(0)
    torch.save(get_arch("cifar_resnet20").build(2).state_dict(), model)
    runner = CliRunner()
    args = ["compress", str(model), "--arch", "cifar_resnet20", "--data", f"imagefolder:{mixed}", "--input-size", "16",
            "--method", "hydra", "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "4",
            "--val-fraction", "0.25", "--memory-budget", "0", "--workers", "1", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["data"]
    assert data["storage"] == "stream" and data["image_shape"] == [3, 16, 16] and data["crop_pct"] == 1.0
    assert (data["train_images"], data["val_images"], data["test_images"]) == (6, 2, 8)
    assert all(e["val_acc_plain"] is not None for e in manifest["metrics"]["epochs"])
    for cmd in (["export", str(out)], ["report", str(out), "--latency-budget", "0.5"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["graphs"]["model.onnx"]["input"]["shape"][1:] == [16, 16, 3]
    report = json.loads((out / "report.json").read_text())
    assert report["test_images"] == 8 and 0.0 <= report["accuracy"]["compressed"]["onnxruntime"] <= 1.0


def test_streaming_leaves_the_global_rng_alone(mixed):
    splits = load_splits(f"imagefolder:{mixed}", _inputs(3, 24), memory_budget=0.0, workers=0)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    for _ in train_batches(splits.train, 4, torch.Generator().manual_seed(0), CPU, splits.augment):
        pass
    for _ in uint8_batches(splits.test, 4):
        pass
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("mode", ["unstructured", "2:4", "channel"])
def test_mixed_folder_tiny_timm_model_in_every_mode(tmp_path, mixed, mode):
    """A real mixed folder (sizes, grey, RGBA, CMYK, palette) through
    compress -> export -> report on a tiny timm model, in all three modes."""
    import timm
    from typer.testing import CliRunner

    from pipelines.cli import app

    model, out = tmp_path / "tiny.pt", tmp_path / "run"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), model)
    runner = CliRunner()
    result = runner.invoke(app, ["compress", str(model), "--arch", "timm:test_resnet", "--data",
                                 f"imagefolder:{mixed}", "--input-size", "32", "--mode", mode, "--sparsity", "0.5",
                                 "--method", "hydra", "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "4",
                                 "--val-fraction", "0.25", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for cmd in (["export", str(out)], ["report", str(out), "--latency-budget", "0.5"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["arch"] == "timm:test_resnet" and manifest["data"]["image_shape"] == [3, 32, 32]
    graph = manifest["export"]["graphs"]["model.onnx"]
    assert graph["input"]["shape"][1:] == [32, 32, 3] and graph["parity"]["passed"]
    report = json.loads((out / "report.json").read_text())
    assert report["test_images"] == 8
