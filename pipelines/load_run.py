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

    def prompted(self, prompt: bool = True) -> PromptedNet:
        return PromptedNet(self.compressed, self.inputs, self.prompt if prompt else None).eval()

    def dense_model(self) -> PromptedNet:
        return PromptedNet(self.dense, self.inputs, None).eval()

    def train_split(self, data_spec: str | None = None) -> ImageSet:
        """The run's training images (INT8 calibration draws from these, never from the test split)."""
        return load_splits(data_spec or self.run.manifest["data"]["spec"]).train

    def test_split(self, data_spec: str | None = None) -> ImageSet:
        """The test images the run was measured on (same subset), from its data or an override."""
        m = self.run.manifest
        test = load_splits(data_spec or m["data"]["spec"]).test
        if test.num_classes != int(m["model"]["num_classes"]):
            raise UserError(
                f"class-count mismatch: the data has {test.num_classes} classes, the run's model "
                f"{m['model']['num_classes']}",
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
