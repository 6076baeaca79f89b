"""Data specs on real files: ImageFolder, tar (cached by hash), torchvision CIFAR batches, digits."""
from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch

from vpns_deploy.data import AugmentPolicy, load_splits
from vpns_deploy.data.batches import augment
from vpns_deploy.errors import UserError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VPNS_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_digits_is_embedded_and_split_deterministically():
    a, b = load_splits("digits"), load_splits("digits")
    assert len(a.train) + len(a.test) == 1797
    assert a.train.image_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.test.labels, b.test.labels) and a.train.images.dtype == torch.uint8
    assert a.augment.hflip is False  # digits are not mirror-symmetric


def test_imagefolder_reads_real_images(tmp_path, image_folder):
    splits = load_splits(f"imagefolder:{image_folder(tmp_path / 'd')}")
    assert splits.train.classes == ["cat", "dog"]
    assert splits.train.images.shape == (6, 3, 8, 8)
    assert splits.train.images[3, 0, 0, 0] == 50  # the dog images' red channel


def test_imagefolder_accepts_val_instead_of_test(tmp_path, image_folder):
    root = image_folder(tmp_path / "d")
    (root / "test").rename(root / "val")
    assert len(load_splits(f"imagefolder:{root}").test) == 6


def test_tar_is_extracted_once_into_the_cache(tmp_path, cache, image_folder):
    root = image_folder(tmp_path / "d")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    first = load_splits(f"tar:{archive}")
    extracted = list((cache / "datasets").iterdir())
    assert len(extracted) == 1 and (extracted[0] / ".complete").exists()
    stamp = (extracted[0] / "tree").stat().st_mtime_ns
    second = load_splits(f"tar:{archive}")
    assert (extracted[0] / "tree").stat().st_mtime_ns == stamp  # not extracted again
    assert torch.equal(first.train.images, second.train.images)
    assert not (tmp_path / "d" / ".." / "train").exists()  # nothing extracted next to the archive


def test_corrupt_tar_is_a_clear_error(tmp_path, cache):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(UserError, match="not a readable tar archive"):
        load_splits(f"tar:{bad}")


def test_cifar10_python_batches_load_without_unpickling_code(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    splits = load_splits(f"cifar10:{tmp_path}")
    assert len(splits.train) == 20 and splits.train.image_shape == (3, 32, 32)
    assert splits.train.classes[3] == "c3"


def test_cifar10_batch_with_code_is_refused(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        load_splits(f"cifar10:{tmp_path}")


def test_subset_is_class_balanced_and_seeded(digits_splits):
    sub = digits_splits.train.subset(100, seed=3)
    counts = torch.bincount(sub.labels, minlength=10)
    assert len(sub) == 100 and counts.min() == 10 and counts.max() == 10
    assert torch.equal(sub.labels, digits_splits.train.subset(100, seed=3).labels)
    assert not torch.equal(sub.images, digits_splits.train.subset(100, seed=4).images)


def test_augment_crops_and_flips_in_bounds():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    outs = [augment(x, AugmentPolicy(crop_pad=1, hflip=True), gen) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)
    # Every output value is either an input value or zero padding.
    allowed = set(x.flatten().tolist()) | {0.0}
    assert all(set(o.flatten().tolist()) <= allowed for o in outs)


def _reference_augment(x: torch.Tensor, policy: AugmentPolicy, draw) -> torch.Tensor:
    """The float-batch augmentation as it was written before the uint8 path (pad, fancy-index crop,
    permute + copy, then flip by where): the uint8 path must reproduce it bit for bit."""
    n, _, h, w = x.shape
    p = policy.crop_pad
    oh, ow = (policy.crop_size, policy.crop_size) if policy.crop_size else (h, w)
    if draw.oy is not None and draw.ox is not None:
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p > 0 else x
        rows = (draw.oy[:, None] + torch.arange(oh))[:, :, None]
        cols = (draw.ox[:, None] + torch.arange(ow))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()
    if draw.flip is not None:
        x = torch.where(draw.flip[:, None, None, None], x.flip(3), x)
    return x


@pytest.mark.parametrize("policy, side", [
    (AugmentPolicy(crop_pad=4, hflip=True), 32),  # small inputs: pad-crop + flip (CIFAR)
    (AugmentPolicy(crop_pad=1, hflip=False), 8),  # digits: pad-crop only
    (AugmentPolicy(crop_pad=0, hflip=True, crop_size=32, resize_side=36), 36),  # large: crop of 9/8 + flip
    (AugmentPolicy(crop_pad=0, hflip=True), 16),  # flip only
    (AugmentPolicy(crop_pad=0, hflip=False), 16),  # nothing to do
])
def test_uint8_augment_is_bit_identical_to_augmenting_floats(policy, side):
    from vpns_deploy.data.batches import apply_augment, draw_augment, to_unit_float

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (37, 3, side, side + (0 if policy.crop_size else 3)), dtype=torch.uint8, generator=gen)
    for seed in range(4):
        draw = draw_augment(len(x), tuple(x.shape[-2:]), policy, torch.Generator().manual_seed(seed))
        got = to_unit_float(apply_augment(x, policy, draw))
        want = _reference_augment(to_unit_float(x), policy, draw)
        assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
        assert torch.equal(got, want)


def test_train_batches_keep_their_draws_and_images(digits_splits):
    """train_batches (uint8 augmented, then converted) gives the batches and leaves the generator where
    the float path did: same permutation, same draws in the same order."""
    from vpns_deploy.data.batches import draw_augment, to_unit_float, train_batches

    train, policy = digits_splits.train, AugmentPolicy(crop_pad=1, hflip=True)
    gen, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = list(train_batches(train, 64, gen, torch.device("cpu"), policy))
    perm = torch.randperm(len(train), generator=ref)
    for k, (x, y) in enumerate(got):
        idx = perm[k * 64 : (k + 1) * 64]
        draw = draw_augment(len(idx), tuple(train.images.shape[-2:]), policy, ref)
        assert torch.equal(x, _reference_augment(to_unit_float(train.images[idx]), policy, draw))
        assert torch.equal(y, train.labels[idx])
    assert torch.equal(gen.get_state(), ref.get_state())


def test_steady_heap_keeps_a_steps_memory_mapped():
    """After steady_heap(), allocating and freeing the same large tensors step after step (what a CPU
    training step does) faults no page back in: glibc neither trims the freed heap nor mmaps them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import resource, torch\n"
        "from vpns_deploy.data.heap import steady_heap\n"
        "assert steady_heap() and steady_heap()\n"
        "per = []\n"
        "for i in range(8):\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    ts = [torch.empty(4 * 2**20).fill_(1.0) for _ in range(3)]\n"  # three 16 MiB tensors
        "    del ts\n"
        "    per.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
        "print(per)\n"
        "assert sum(per[4:]) < 64, per\n"
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc thresholds: Linux only")
    root = str(Path(__file__).resolve().parents[1])  # this checkout's vpns_deploy, in a fresh heap
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
