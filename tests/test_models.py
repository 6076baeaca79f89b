"""Models: CIFAR ResNets match the published checkpoints; checkpoints load safely; every architecture family
brings its own input (size, resampling, normalisation), which users can override and a pickled module must be told."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vpns_deploy.errors import UserError
from vpns_deploy.evaluate import top1
from vpns_deploy.models import load_model
from vpns_deploy.models.cifar_resnet import CifarResNet
from vpns_deploy.models.digits_cnn import DigitsCNN
from vpns_deploy.prompts import PromptedNet


@pytest.mark.shared
def test_pretrained_resnet20_reaches_published_accuracy_on_jpeg_test_split(resnet20_path, cifar_splits):
    loaded = load_model(resnet20_path, "cifar_resnet20", 10)
    assert loaded.sha256.startswith("12fca82f")
    acc = top1(PromptedNet(loaded.net, loaded.inputs, None), cifar_splits.test, torch.device("cpu"), prompted=False)
    assert len(cifar_splits.test) == 10_000
    assert acc == pytest.approx(0.8103, abs=0.003)  # independent evaluator: 81.03 %


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (56, 0.85e6)])
def test_cifar_resnet_sizes_match_the_readme(depth, params):
    n = sum(p.numel() for p in CifarResNet(depth).parameters())
    assert n == pytest.approx(params, rel=0.02)


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    net = CifarResNet(20)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(path, "cifar_resnet20", 10)
    assert torch.equal(loaded.net.conv1.weight, net.conv1.weight)


def test_state_dict_without_arch_asks_for_it(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(CifarResNet(20).state_dict(), path)
    with pytest.raises(UserError, match="pass --arch"):
        load_model(path, None, 10)


def test_dict_without_tensors_is_explained(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(UserError, match="no state dict"):
        load_model(path, "cifar_resnet20", 10)


def test_torchvision_architecture_by_name(tmp_path):
    import torchvision

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    loaded = load_model(path, "resnet18", 10)
    assert loaded.net.fc.out_features == 10 and loaded.inputs.channels == 3


@pytest.mark.parametrize("name, size, aux", [("googlenet", 64, "aux1."), ("inception_v3", 75, "AuxLogits.")])
def test_aux_classifier_nets_load_with_or_without_aux_keys_and_train_to_one_tensor(tmp_path, name, size, aux):
    import warnings

    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's init_weights notice, for the user's own model
        saved = torchvision.models.get_model(name, weights=None, num_classes=7, aux_logits=True).eval()
    with_aux = saved.state_dict()
    assert any(k.startswith(aux) for k in with_aux)
    without_aux = {k: v for k, v in with_aux.items() if not k.startswith(aux)}
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = saved(x)
    for i, sd in enumerate((with_aux, without_aux)):
        path = tmp_path / f"{name}{i}.pt"
        torch.save(sd, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no init_weights FutureWarning from the registry's build
            net = load_model(path, name, 7).net
        assert not any(k.startswith(aux) for k in net.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(net.eval()(x), expected)
        out = net.train()(x)  # training through the CLI needs logits, not (logits, aux...)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


# --- Input specs from the model's own config ----------------------------------------------------

def test_builtin_architectures_take_their_own_small_sizes():
    from vpns_deploy.models import get_arch

    assert get_arch("cifar_resnet20").inputs.size == 32
    digits = get_arch("digits_cnn").inputs
    assert (digits.size, digits.channels, digits.mean, digits.std) == (8, 1, (0.5,), (0.5,))


@pytest.mark.parametrize("name,size,crop_pct,interpolation", [
    ("resnet18", 224, 224 / 256, "bilinear"),  # torchvision's ImageClassification(crop 224, resize 256)
    ("inception_v3", 299, 299 / 342, "bilinear"),
    ("efficientnet_b3", 300, 300 / 320, "bicubic"),
])
def test_torchvision_input_spec_comes_from_the_weights_meta(name, size, crop_pct, interpolation):
    from vpns_deploy.models import get_arch

    spec = get_arch(name).inputs
    assert (spec.size, spec.interpolation) == (size, interpolation)
    assert spec.crop_pct == pytest.approx(crop_pct)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx((0.229, 0.224, 0.225))


def test_timm_model_loads_a_state_dict_with_its_pretrained_cfg(tmp_path):
    import timm

    source = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    path = tmp_path / "timm.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model(path, "timm:test_resnet", 5)
    cfg = timm.get_pretrained_cfg("test_resnet")
    assert loaded.arch == "timm:test_resnet"
    assert loaded.inputs.size == cfg.input_size[-1] and loaded.inputs.crop_pct == pytest.approx(cfg.crop_pct)
    assert loaded.inputs.interpolation == cfg.interpolation
    assert loaded.inputs.mean == pytest.approx(cfg.mean) and loaded.inputs.std == pytest.approx(cfg.std)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), source(x))


@pytest.mark.parametrize("arch,needle", [
    ("resnet181", "did you mean resnet18"),
    ("nonsense", "timm:NAME"),
    ("timm:resnt18", "did you mean timm:resnet18"),
])
def test_unknown_architecture_is_one_line_naming_the_families(arch, needle):
    from vpns_deploy.models import get_arch

    with pytest.raises(UserError) as info:
        get_arch(arch)
    assert needle in str(info.value) and "\n" not in str(info.value)
    if not arch.startswith("timm:"):
        assert "efficientnet_lite0..4" in str(info.value) and "torchvision" in str(info.value)


def test_input_overrides_replace_the_config_fields(tmp_path):
    from vpns_deploy.models import InputOverrides

    path = tmp_path / "r20.pt"
    torch.save(CifarResNet(20).state_dict(), path)
    overrides = InputOverrides(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    loaded = load_model(path, "cifar_resnet20", 10, inputs=overrides)
    assert loaded.inputs.to_dict() == {"channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "size": 64,
                                       "interpolation": "bicubic", "crop_pct": 1.0}
    assert "overridden: input_size, mean, std, interpolation" in loaded.inputs_from


@pytest.mark.parametrize("kwargs,needle", [
    ({"mean": (float("nan"), 0.5, 0.5)}, "--mean must be finite"),
    ({"std": (0.5, 0.0, 0.5)}, "--std must be > 0"),
    ({"std": (0.5, float("inf"), 0.5)}, "--std must be finite"),
    ({"mean": (0.5, 0.5), "std": (0.5, 0.5, 0.5)}, "--mean has 2 values but --std has 3"),
    ({"interpolation": "area"}, "unknown --interpolation"),
    ({"input_size": 0}, "--input-size must be a positive"),
])
def test_bad_input_overrides_are_one_line_errors(kwargs, needle):
    from vpns_deploy.models import InputOverrides

    with pytest.raises(UserError, match=needle):
        InputOverrides(**kwargs)


def test_override_channel_count_must_match_the_model(tmp_path):
    from vpns_deploy.models import InputOverrides

    path = tmp_path / "d.pt"
    torch.save(DigitsCNN().state_dict(), path)
    with pytest.raises(UserError, match="--mean has 3 values but the model takes 1-channel images"):
        load_model(path, "digits_cnn", 10, inputs=InputOverrides(mean=(0.5, 0.5, 0.5)))


def test_comma_separated_floats_are_parsed_or_refused():
    from vpns_deploy.models.input_overrides import parse_floats

    assert parse_floats("0.5, 0.25,1", "--mean") == (0.5, 0.25, 1.0)
    assert parse_floats(None, "--mean") is None
    with pytest.raises(UserError, match="--std must be comma-separated numbers"):
        parse_floats("0.5,abc", "--std")


# --- A pickled module keeps its normalisation -----------------------------------------------------

def _digits_top1(loaded, split) -> float:
    return top1(PromptedNet(loaded.net, loaded.inputs, None), split, torch.device("cpu"), prompted=False)


def test_pickled_digits_cnn_scores_like_its_state_dict(tmp_path, digits_model, digits_splits):
    from vpns_deploy.models import InputOverrides

    reference = load_model(digits_model, "digits_cnn", 10)
    pickled = tmp_path / "digits_module.pt"
    torch.save(reference.net, pickled)  # a whole nn.Module: needs --trust-pickle

    with pytest.raises(UserError, match="pass --arch NAME .* or --mean and --std"):
        load_model(pickled, None, 10, trust_pickle=True)
    by_arch = load_model(pickled, "digits_cnn", 10, trust_pickle=True)
    by_stats = load_model(pickled, None, 10, trust_pickle=True, inputs=InputOverrides(mean=(0.5,), std=(0.5,)))
    assert by_arch.inputs == reference.inputs
    assert (by_stats.inputs.mean, by_stats.inputs.std, by_stats.inputs.channels) == ((0.5,), (0.5,), 1)

    expected = _digits_top1(reference, digits_splits.test)
    assert expected > 0.9
    assert _digits_top1(by_arch, digits_splits.test) == expected
    assert _digits_top1(by_stats, digits_splits.test) == expected


def test_pickled_module_must_fit_the_arch_it_names(tmp_path):
    pickled = tmp_path / "digits_module.pt"
    torch.save(DigitsCNN(), pickled)
    with pytest.raises(UserError, match="do not fit --arch cifar_resnet20"):
        load_model(pickled, "cifar_resnet20", 10, trust_pickle=True)


# --- The command line and recipes: --input-size, --mean, --std, --interpolation ------------------

def _cli(args: list[str]):
    from typer.testing import CliRunner

    from pipelines.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def test_compress_help_explains_the_input_options():
    from pipelines.cli_doc import render

    text = _cli(["compress", "--help"]).output
    for needle in ("--input-size", "--mean", "--std", "--interpolation", "bilinear, bicubic or nearest", "timm:NAME",
                   "efficientnet_lite0..4"):
        assert needle in text, needle
    assert "A pickled MODEL takes its input from --arch" in render()  # the full text: docs/OPTIONS.md


@pytest.mark.parametrize("extra,needle", [
    (["--mean", "abc"], "--mean must be comma-separated numbers"),
    (["--std", "0"], "--std must be > 0"),
    (["--mean", "0.5,0.5,0.5"], "--mean has 3 values but the model takes 1-channel images"),
    (["--interpolation", "area"], "unknown --interpolation 'area'"),
    (["--input-size", "0"], "--input-size must be a positive number"),
])
def test_bad_input_options_are_one_line_errors_and_write_nothing(tmp_path, digits_model, extra, needle):
    out = tmp_path / "run"
    result = _cli(["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--out", str(out), *extra])
    err = result.stderr.strip()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_pickled_module_without_arch_or_normalisation_is_refused(tmp_path):
    model = tmp_path / "module.pt"
    torch.save(DigitsCNN(), model)
    result = _cli(["compress", str(model), "--trust-pickle", "--data", "digits", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "does not say how its input pixels were normalised" in result.stderr and "--mean and --std" in result.stderr


def test_input_overrides_reach_the_data_and_the_manifest(tmp_path, digits_model):
    import json

    out = tmp_path / "run"
    result = _cli(["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--method", "magnitude",
                   "--epochs-mask", "0", "--epochs-tune", "1", "--train-subset", "100", "--test-subset", "50",
                   "--batch-size", "50", "--input-size", "12", "--mean", "0.4", "--std", "0.6",
                   "--interpolation", "bicubic", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    model = manifest["model"]
    assert model["inputs"] == {"channels": 1, "mean": [0.4], "std": [0.6], "size": 12, "interpolation": "bicubic",
                               "crop_pct": 1.0}
    assert model["input_overrides"] == {"input_size": 12, "mean": [0.4], "std": [0.6], "interpolation": "bicubic"}
    assert model["inputs_from"].startswith("small CNN") and "overridden" in model["inputs_from"]
    assert manifest["data"]["image_shape"] == [1, 12, 12]


def test_recipe_model_section_takes_and_validates_the_overrides(tmp_path):
    from pipelines.recipe import load_recipe

    def recipe(model_lines: str) -> Path:
        path = tmp_path / "r.toml"
        path.write_text(f'[run]\nout = "runs/x"\n[model]\npath = "m.pt"\narch = "resnet18"\n{model_lines}\n'
                        '[data]\nspec = "digits"\n[compress]\nsparsity = 0.5\n')
        return path

    good = load_recipe(recipe('input_size = 128\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n'
                              'interpolation = "bicubic"'))
    assert good.model.inputs.to_dict() == {"input_size": 128, "mean": [0.5] * 3, "std": [0.25] * 3,
                                           "interpolation": "bicubic"}
    with pytest.raises(UserError, match=r"\[model\] --std must be > 0"):
        load_recipe(recipe("std = [0.5, 0.0, 0.5]"))
    with pytest.raises(UserError, match="model.interpolation must be"):
        load_recipe(recipe("interpolation = 3"))


def test_input_size_the_network_cannot_take_is_a_one_line_error(tmp_path):
    import timm

    path = tmp_path / "vit.pt"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).state_dict(), path)
    from vpns_deploy.models import InputOverrides

    with pytest.raises(UserError, match=r"timm:vit_tiny_patch16_224 cannot take 64x64 inputs \(.*224"):
        load_model(path, "timm:vit_tiny_patch16_224", 3, inputs=InputOverrides(input_size=64))
    assert load_model(path, "timm:vit_tiny_patch16_224", 3).inputs.size == 224  # its own size loads


def test_input_overrides_read_back_from_a_manifest_are_typed_as_given():
    """A manifest stores mean/std as JSON lists; reading them back gives the tuples the dataclass declares."""
    import json

    from vpns_deploy.models.input_overrides import InputOverrides

    given = InputOverrides(96, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
    back = InputOverrides.from_dict(json.loads(json.dumps(given.to_dict())))
    assert back == given and isinstance(back.mean, tuple) and InputOverrides.from_dict(None) == InputOverrides()
