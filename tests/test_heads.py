"""Transfer heads (--head keep|map|new): frequency label mapping on known answers, conv heads, the
class-count errors, and both transfer heads end to end (compress -> export -> ONNX Runtime)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vpns_deploy.data.dataset import AugmentPolicy, ImageSet
from vpns_deploy.errors import UserError
from vpns_deploy.heads import (
    checkpoint_classes, frequency_label_map, greedy_one_to_one, logits_layer, replace_head,
)
from vpns_deploy.models.registry import InputSpec
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt, prompt_decision


# --- greedy one-to-one (VPNS.md §4) ---------------------------------------------------------------------

def test_greedy_takes_the_global_maximum_first_and_retires_row_and_column():
    counts = torch.tensor([[0, 5, 1],
                           [7, 6, 0],
                           [0, 9, 2],
                           [3, 0, 4]])
    # 9 (source 2 -> target 1), then 7 (source 1 -> target 0), then 4 (source 3 -> target 2)
    assert greedy_one_to_one(counts).tolist() == [1, 2, 3]


def test_greedy_ties_go_to_the_first_entry_in_flat_order():
    assert greedy_one_to_one(torch.tensor([[2, 2], [2, 2]])).tolist() == [0, 1]
    # two 3s: (0, 1) comes before (1, 0) in row-major order, so target 1 takes source 0
    assert greedy_one_to_one(torch.tensor([[1, 3], [3, 1]])).tolist() == [1, 0]


def test_greedy_is_not_the_optimal_assignment():
    """The reference's rule, on purpose: greedy takes 10 and is left with 0 (total 10) where the
    optimal assignment takes 9 + 9 = 18."""
    counts = torch.tensor([[10, 9], [9, 0]])
    seq = greedy_one_to_one(counts)
    assert seq.tolist() == [0, 1]
    greedy_total = int(counts[seq, torch.arange(2)].sum())
    swapped_total = int(counts[torch.tensor([1, 0]), torch.arange(2)].sum())
    assert (greedy_total, swapped_total) == (10, 18)


def test_greedy_needs_enough_source_classes():
    with pytest.raises(ValueError):
        greedy_one_to_one(torch.ones(2, 3))


# --- FLM over real batches, with a network whose answer is known ----------------------------------------

class BrightnessToSource(nn.Module):
    """Logits over 6 source classes that peak at the source whose centre is the image's brightest pixel
    (after normalisation): images of target class j, filled with level L_j, land on source PERM[j]."""

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centres", centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1).amax(1, keepdim=True)
        return -(v - self.centres) ** 2


LEVELS = (40, 110, 180, 250)  # pixel level of each target class
PERM = (4, 0, 5, 2)  # the source class each target class lands on


def _known_model_and_data(n_per_class: int = 6) -> tuple[PromptedNet, ImageSet]:
    inputs = InputSpec(1, (0.0,), (1.0,))
    centres = torch.full((6,), 10.0)
    for j, level in enumerate(LEVELS):
        centres[PERM[j]] = level / 255.0
    images = torch.cat([torch.full((n_per_class, 1, 8, 8), level, dtype=torch.uint8) for level in LEVELS])
    labels = torch.arange(len(LEVELS)).repeat_interleave(n_per_class)
    return PromptedNet(BrightnessToSource(centres), inputs, None), ImageSet(images, labels, ["a", "b", "c", "d"])


def test_frequency_label_map_recovers_a_known_permutation_through_augmented_batches():
    model, train = _known_model_and_data()
    augment = AugmentPolicy(crop_pad=1, hflip=True)  # zero padding cannot move the brightest pixel
    seq, counts = frequency_label_map(model, train, augment, batch_size=5, device=torch.device("cpu"), seed=7)
    assert seq.tolist() == list(PERM)
    assert counts.shape == (6, 4) and int(counts.sum()) == len(train)
    assert [int(counts[PERM[j], j]) for j in range(4)] == [6, 6, 6, 6]
    # frozen into the model, the data's classes come out in order
    mapped = PromptedNet(model.net, InputSpec(1, (0.0,), (1.0,)), None, seq)
    with torch.no_grad():
        pred = mapped(train.images.float() / 255).argmax(1)
    assert torch.equal(pred, train.labels)


# --- finding and replacing heads ------------------------------------------------------------------------

def test_conv_head_is_found_and_a_1000_class_checkpoint_is_recognised():
    import torchvision

    net = torchvision.models.squeezenet1_0(weights=None, num_classes=4)
    name, layer = logits_layer(net)
    assert name == "classifier.1" and isinstance(layer, nn.Conv2d) and layer.out_channels == 4
    source = torchvision.models.squeezenet1_0(weights=None, num_classes=1000).state_dict()
    assert checkpoint_classes(net, source) == 1000
    assert checkpoint_classes(net, net.state_dict()) is None  # nothing differs
    source["features.0.weight"] = torch.zeros(96, 3, 5, 5)  # a backbone mismatch is not a head mismatch
    assert checkpoint_classes(net, source) is None


def test_replace_head_keeps_the_kind_and_input_width_and_is_seeded():
    import torchvision

    a = torchvision.models.squeezenet1_0(weights=None, num_classes=1000)
    b = torchvision.models.squeezenet1_0(weights=None, num_classes=1000)
    assert replace_head(a, 3, seed=5) == replace_head(b, 3, seed=5) == "classifier.1"
    assert a.classifier[1].out_channels == 3 and a.classifier[1].in_channels == 512
    assert torch.equal(a.classifier[1].weight, b.classifier[1].weight)
    assert a(torch.rand(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["squeezenet1_0", "mobilenet_v3_small"])
def test_class_count_mismatch_names_both_counts_and_suggests_head(tmp_path, arch):
    """A 1000-class checkpoint on 4-class data; a conv head must not blame --arch."""
    import torchvision

    from vpns_deploy.models.checkpoint import load_model

    path = tmp_path / "m.pt"
    torch.save(torchvision.models.get_model(arch, weights=None, num_classes=1000).state_dict(), path)
    with pytest.raises(UserError) as err:
        load_model(path, arch, 4)
    text = str(err.value)
    assert "1000" in text and "4 classes" in text and "--head map" in text and "--head new" in text
    assert "--arch" not in text and "--num-classes" not in text
    assert load_model(path, arch, 4, head="map").num_classes == 1000


# --- the prompt decision --------------------------------------------------------------------------------

def test_prompt_decision_each_way_measured_on_a_trained_model(digits_model, digits_splits):
    """A zero prompt ties (folded in: >=); a saturating frame hurts (left out). Real evaluation."""
    from vpns_deploy.evaluate import top1
    from vpns_deploy.models.checkpoint import load_model

    loaded = load_model(digits_model, "digits_cnn", 10)
    val = digits_splits.test.subset(200, 0)
    prompt = VisualPrompt(PromptSpec("pad", 1, (8, 8), 2))
    model = PromptedNet(loaded.net, loaded.inputs, prompt).eval()
    cpu = torch.device("cpu")
    tie = prompt_decision(top1(model, val, cpu, prompted=False), top1(model, val, cpu, prompted=True), True)
    assert tie["fold"] and tie["val_top1_plain"] == tie["val_top1_prompted"] and tie["split"] == "validation"
    with torch.no_grad():
        prompt.delta.fill_(1.0)  # the 2-px frame turns white: most of an 8x8 digit
    hurt = prompt_decision(top1(model, val, cpu, prompted=False), top1(model, val, cpu, prompted=True), True)
    assert not hurt["fold"] and hurt["val_top1_prompted"] < hurt["val_top1_plain"] - 0.2
    fallback = prompt_decision(None, None, True)
    assert fallback["fold"] and fallback["split"] is None and "no validation split" in fallback["rule"]
    # a latency target comes first: a prompt whose graph misses it stays out, whatever validation prefers
    slow = prompt_decision(0.60, 0.62, True, {"speedup": 3.68, "within_tolerance": False})
    assert not slow["fold"] and slow["validation_preferred"] and "--speedup" in slow["rule"]
    assert slow["speedup_with_prompt"] == 3.68
    fast = prompt_decision(0.60, 0.62, True, {"speedup": 3.98, "within_tolerance": True})
    assert fast["fold"] and fast["rule"] == tie["rule"]


# --- end to end -----------------------------------------------------------------------------------------

# Digits the digits CNN still recognises when flipped (folder data is augmented with flips; the model
# was not): measured on its training split, 0 / 1 / 8 / 9 stay >= 78 % on their own class.
DIGIT_CLASSES = {"nine": 9, "eight": 8, "one": 1, "zero": 0}  # sorted: eight, nine, one, zero


def _digit_folder(root: Path, splits, per_class: int = 24) -> Path:
    """An ImageFolder of real digit images (PNG), 4 of the 10 digits under other names."""
    from PIL import Image

    for split, data in (("train", splits.train), ("test", splits.test)):
        for name, digit in DIGIT_CLASSES.items():
            d = root / split / name
            d.mkdir(parents=True)
            idx = torch.nonzero(data.labels == digit).flatten()[:per_class]
            for k, i in enumerate(idx.tolist()):
                Image.fromarray(data.images[i, 0].numpy(), mode="L").save(d / f"{k}.png")
    return root


def _onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_head_map_end_to_end_maps_digits_to_their_own_source_classes(tmp_path, digits_model, digits_splits,
                                                                      monkeypatch):
    """A 10-digit model on a 4-class folder of real digits: FLM finds each class's own digit, the
    manifest records it by name, and model.onnx outputs the 4 data classes in order. The dense
    reference (the network as given) and the run share one pass over the training set for it."""
    import vpns_deploy.heads as heads
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from pipelines.load_run import load_run
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    folder = _digit_folder(tmp_path / "digits4", digits_splits)
    out = tmp_path / "run"
    # 30 %: the initial (magnitude) mask leaves the digits recognisable, so the answer is known
    cfg = CompressConfig(sparsity=0.3, epochs_mask=1, epochs_tune=1, batch_size=32, head="map")
    with pytest.raises(UserError, match="--head map"):
        run_compress(digits_model, "digits_cnn", f"imagefolder:{folder}", CompressConfig(epochs_mask=1), out,
                     reporter=Reporter(quiet=True))
    passes, count = [], heads.prediction_counts
    monkeypatch.setattr(heads, "prediction_counts", lambda *a, **k: passes.append(1) or count(*a, **k))
    run_compress(digits_model, "digits_cnn", f"imagefolder:{folder}", cfg, out, reporter=Reporter(quiet=True))
    assert len(passes) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    mapping = manifest["method"]["label_mapping"]
    classes = manifest["data"]["classes"]
    assert mapping["kind"] == "frequency" and mapping["source_classes"] == 10
    assert mapping["computed_on"].startswith("dense network before the initial mask")  # label_map_on default
    assert mapping["seq"] == [DIGIT_CLASSES[c] for c in classes]
    assert manifest["method"]["dense_label_mapping"]["seq"] == mapping["seq"]
    assert [r["target_name"] for r in mapping["map"]] == classes
    assert manifest["model"]["num_classes"] == 10 and manifest["method"]["head"]["kind"] == "map"
    assert manifest["metrics"]["top1_plain"] > 0.8

    export = run_export(out, reporter=Reporter(quiet=True))
    graph = export["graphs"]["model.onnx"]
    assert graph["label_map_folded"] and graph["output_shape"][1] == 4 and graph["ops"].get("Gather", 0) >= 1
    assert graph["parity"]["passed"]
    loaded = load_run(out)
    test = loaded.test_split()
    images = np.ascontiguousarray(test.images[:32].permute(0, 2, 3, 1).numpy())
    logits = _onnx_logits(out / "model.onnx", images)
    assert (logits.argmax(1) == test.labels[:32].numpy()).mean() > 0.8

    from pipelines.report_stage import run_report

    report = run_report(out, reporter=Reporter(quiet=True), print_table=False, latency_budget=1.0)
    assert report["head"]["map"][0].startswith(f"{classes[0]} -> {DIGIT_CLASSES[classes[0]]}")
    assert report["prompt_choice"]["decision"]["split"] == "validation"
    acc = report["accuracy"]  # like with like: PyTorch with the same map (and prompt choice) as the graphs
    assert acc["compressed"]["onnxruntime"] == pytest.approx(acc["compressed"]["pytorch"], abs=1 / len(test))
    assert acc["dense"]["onnxruntime"] == pytest.approx(acc["dense"]["pytorch"], abs=1 / len(test))
    assert acc["dense"]["pytorch"] > 0.8  # the dense network with its own map
    markdown = (out / "report.md").read_text()
    assert "frequency label map" in markdown and "validation top-1 with / without" in markdown


def test_head_new_end_to_end_warms_up_and_counts_its_steps(tmp_path, digits_model, digits_splits):
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    folder = _digit_folder(tmp_path / "digits4", digits_splits)
    out = tmp_path / "run"
    cfg = CompressConfig(sparsity=0.5, epochs_mask=1, epochs_tune=1, batch_size=32, head="new", head_warmup_epochs=4)
    run_compress(digits_model, "digits_cnn", f"imagefolder:{folder}", cfg, out, reporter=Reporter(quiet=True))
    manifest = json.loads((out / "manifest.json").read_text())
    head = manifest["method"]["head"]
    epochs = manifest["metrics"]["epochs"]
    assert head["kind"] == "new" and head["outputs"] == 4 and manifest["model"]["num_classes"] == 4
    assert [e["stage"] for e in epochs] == ["head"] * 4 + ["mask", "tune"]
    assert head["warmup"]["optimizer_steps"] == sum(e["optimizer_steps"] for e in epochs[:4]) == 4 * math.ceil(manifest["data"]["train_images"] / 32)
    assert manifest["method"]["label_mapping"] == "identity"
    assert manifest["metrics"]["dense_top1"] > 0.5  # frozen backbone + the warmed-up head: well above chance (25 %)
    export = run_export(out, reporter=Reporter(quiet=True))
    assert export["graphs"]["model.onnx"]["output_shape"][1] == 4
    assert export["graphs"]["model.onnx"]["parity"]["passed"]


def test_export_follows_the_recorded_prompt_decision_unless_told(tmp_path, digits_run):
    """The decision compress recorded picks what model.onnx carries; --prompt/--no-prompt override it."""
    import shutil

    from pipelines.export_stage import run_export
    from vpns_deploy.progress import Reporter

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["metrics"]["prompt_decision"]["rule"]  # compress recorded one
    manifest["metrics"]["prompt_decision"] = prompt_decision(0.9, 0.8, True)  # as if the prompt had hurt
    manifest_path.write_text(json.dumps(manifest))
    left_out = run_export(run, reporter=Reporter(quiet=True))
    assert left_out["ships_prompt"] is False and not left_out["graphs"]["model.onnx"]["prompt_folded"]
    assert left_out["prompt_choice"]["decision"]["val_top1_prompted"] == 0.8
    forced = run_export(run, with_prompt=True, reporter=Reporter(quiet=True))
    assert forced["ships_prompt"] is True and forced["prompt_choice"]["by"] == "--prompt"
    assert forced["graphs"]["model.onnx"]["parity"]["passed"]


class _MemoryCheckpoint:
    """A real in-memory TrainingCheckpoint; `stop_after` saves, it interrupts the run like Ctrl-C."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.state, self.saves, self.stop_after = None, 0, stop_after

    def load(self):
        return self.state

    def save(self, state: dict) -> None:
        import copy

        self.state, self.saves = copy.deepcopy(state), self.saves + 1
        if self.stop_after is not None and self.saves >= self.stop_after:
            raise KeyboardInterrupt


def test_head_map_resumes_with_its_frozen_map_bit_identical(tmp_path, digits_model, digits_splits):
    """Interrupted after stage-1 epoch 1 and resumed: same label map (not recomputed), same weights."""
    from vpns_deploy.compress import compress
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.data import load_splits
    from vpns_deploy.models.checkpoint import load_model
    from vpns_deploy.progress import Reporter

    folder = _digit_folder(tmp_path / "digits4", digits_splits, per_class=8)
    cfg = CompressConfig(sparsity=0.3, epochs_mask=2, epochs_tune=0, batch_size=16, head="map", device="cpu")
    cpu, quiet = torch.device("cpu"), Reporter(quiet=True)

    def fresh():
        loaded = load_model(digits_model, "digits_cnn", 4, head="map")
        return loaded, load_splits(f"imagefolder:{folder}", loaded.inputs, val_fraction=0.1, seed=cfg.seed)

    full = compress(*fresh(), cfg, cpu, quiet, _MemoryCheckpoint())
    ckpt = _MemoryCheckpoint(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        compress(*fresh(), cfg, cpu, quiet, ckpt)
    ckpt.stop_after = None
    resumed = compress(*fresh(), cfg, cpu, quiet, ckpt)
    assert resumed.label_map == full.label_map and resumed.label_map["seq"] == full.model.label_map.tolist()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_head_new_warmup_is_deterministic(digits_model, digits_splits):
    """A resumed --head new run repeats the warm-up (it is not checkpointed): it must give the same head."""
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.heads import prepare_head, warm_up_head
    from vpns_deploy.models.checkpoint import load_model
    from vpns_deploy.progress import Reporter

    cfg = CompressConfig(batch_size=256, head="new")
    splits = digits_splits
    heads = []
    for _ in range(2):
        loaded = load_model(digits_model, "digits_cnn", 10, head="new")
        prepare_head(loaded, cfg, 10)
        records = warm_up_head(loaded, splits, cfg, torch.device("cpu"), Reporter(quiet=True))
        heads.append(logits_layer(loaded.net)[1].weight.detach().clone())
    assert records[0].optimizer_steps == math.ceil(len(splits.train) / 256)
    assert torch.equal(heads[0], heads[1])


def test_label_map_on_masked_maps_under_the_initial_mask(digits_model, digits_splits):
    """The reference's placement stays selectable: the map is computed after the initial mask."""
    from vpns_deploy.compress import compress
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.models import load_model
    from vpns_deploy.progress import Reporter

    cfg = CompressConfig(method="magnitude", sparsity=0.3, epochs_mask=0, epochs_tune=1, batch_size=64,
                         head="map", label_map_on="masked")
    result = compress(load_model(digits_model, "digits_cnn", 10), digits_splits, cfg, torch.device("cpu"),
                      Reporter(quiet=True))
    assert result.label_map["computed_on"].startswith("masked network after the initial mask")
    assert result.label_map["seq"] == list(range(10))  # a 30 % mask keeps the digits recognisable
    with pytest.raises(UserError, match="label_map_on"):
        CompressConfig(head="map", label_map_on="paper")
