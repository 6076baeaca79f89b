"""Rebuild a run's networks and prompt from its verified artifacts (no masking code needed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.run_dir import RunDir
from vpns_deploy.data import ImageSet, load_splits
from vpns_deploy.errors import UserError
from vpns_deploy.models.registry import InputSpec, get_arch
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt


@dataclass
class LoadedRun:
    run: RunDir
    compressed: nn.Module
    dense: nn.Module
    inputs: InputSpec
    prompt: VisualPrompt | None

    @property
    def label_map(self) -> torch.Tensor | None:
        """--head map: the frozen source logit of each data class (None: the head is the data's)."""
        return _seq(self.run.manifest.get("method", {}).get("label_mapping"), self.run.manifest)

    @property
    def dense_label_map(self) -> torch.Tensor | None:
        """--head map: the dense network's own frequency label map (its fair reference)."""
        return _seq(self.run.manifest.get("method", {}).get("dense_label_mapping"), self.run.manifest)

    def prompted(self, prompt: bool = True) -> PromptedNet:
        return PromptedNet(self.compressed, self.inputs, self.prompt if prompt else None, self.label_map).eval()

    def dense_model(self) -> PromptedNet:
        return PromptedNet(self.dense, self.inputs, None, self.dense_label_map).eval()

    def train_split(self, data_spec: str | None = None) -> ImageSet:
        """The run's training images (INT8 calibration draws from these, never from the test split)."""
        return load_splits(data_spec or self.run.manifest["data"]["spec"]).train

    def test_split(self, data_spec: str | None = None) -> ImageSet:
        """The test images the run was measured on (same subset), from its data or an override."""
        m = self.run.manifest
        test = load_splits(data_spec or m["data"]["spec"]).test
        run_classes = len(m["data"]["classes"])  # the model's own head may be larger (--head map)
        if test.num_classes != run_classes:
            raise UserError(
                f"class-count mismatch: the data has {test.num_classes} classes, the run was trained on {run_classes}",
                "pass --data with the classes the run was trained on",
            )
        return test.subset(m["config"]["test_subset"], int(m["config"]["seed"]))


def _network(run: RunDir, name: str) -> nn.Module:
    path = run.verified(name)
    meta = run.manifest["model"]
    if run.manifest["artifacts"][name].get("format") == "pickled_module":
        # Our own artifact, sha256-verified above; the user trusted the source with --trust-pickle.
        return torch.load(path, map_location="cpu", weights_only=False).eval()
    net = get_arch(meta["arch"]).build(int(meta["num_classes"]))
    if name == "model.pt" and run.manifest["config"].get("mode") == "channel":
        net = _compacted_skeleton(run, net)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def _seq(record: object, manifest: dict) -> torch.Tensor | None:
    """A manifest's label-map record -> its index tensor; None for 'identity' or nothing."""
    if not isinstance(record, dict):
        return None
    seq, bound = record.get("seq"), int(manifest["model"]["num_classes"])
    if (not isinstance(seq, list) or len(seq) != len(manifest["data"]["classes"])
            or not all(isinstance(i, int) and 0 <= i < bound for i in seq)):
        raise UserError("manifest.json: method.label_mapping.seq is not a list of class indices", "re-run compress")
    return torch.tensor(seq, dtype=torch.long)


def _compacted_skeleton(run: RunDir, net: nn.Module) -> nn.Module:
    """The run's compacted architecture: the same channel removal replayed from masks.pt."""
    from vpns_deploy.compaction import compact
    from vpns_deploy.models.cifar_resnet import shortcuts_as_convs

    shortcuts_as_convs(net)
    masks = torch.load(run.verified("masks.pt"), map_location="cpu", weights_only=True)
    example = torch.zeros(1, *run.manifest["data"]["image_shape"])
    return compact(net, masks, example)


def load_run(path: Path) -> LoadedRun:
    run = RunDir.open(path)
    inputs = InputSpec.from_dict(run.manifest["model"]["inputs"])
    prompt = None
    if run.manifest.get("prompt"):
        prompt = VisualPrompt(PromptSpec.from_dict(run.manifest["prompt"]))
        prompt.load_state_dict(torch.load(run.verified("prompt.pt"), map_location="cpu", weights_only=True))
        prompt.eval()
    return LoadedRun(run, _network(run, "model.pt"), _network(run, "dense.pt"), inputs, prompt)
