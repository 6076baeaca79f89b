"""Rebuild a run's networks and prompt from its verified artifacts (no masking code needed)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.artifacts import DENSE_PT, MASKS_PT, MODEL_PT, PROMPT_PT
from pipelines.manifest import Manifest
from pipelines.run_dir import RunDir
from vpns_deploy.data import AnySet, load_splits
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
        return _seq(self.run.manifest.method.get("label_mapping"), self.run.manifest)

    @property
    def dense_label_map(self) -> torch.Tensor | None:
        """--head map: the dense network's own frequency label map (its fair reference)."""
        return _seq(self.run.manifest.method.get("dense_label_mapping"), self.run.manifest)

    def prompted(self, prompt: bool = True) -> PromptedNet:
        return PromptedNet(self.compressed, self.inputs, self.prompt if prompt else None, self.label_map).eval()

    def dense_model(self) -> PromptedNet:
        return PromptedNet(self.dense, self.inputs, None, self.dense_label_map).eval()

    def _data_options(self) -> dict:
        """How the run built its data (memory budget, workers), so export/report see the same images."""
        cfg = self.run.manifest.config
        return {k: cfg[k] for k in ("workers", "memory_budget") if cfg.get(k) is not None}

    def train_split(self, data_spec: str | None = None) -> AnySet:
        """The run's training images at the run's input (INT8 calibration draws from these, never
        from the test split). Streamed: callers take a few hundred, so only those are decoded."""
        options = {**self._data_options(), "memory_budget": 0.0}
        return load_splits(data_spec or self.run.manifest.data.spec, self.inputs, **options).train

    def test_split(self, data_spec: str | None = None) -> AnySet:
        """The test images the run was measured on (same subset), from its data or an override, built at
        the run's input: channels converted, resized and centre-cropped as in compress."""
        from vpns_deploy.data import build_splits, read_catalog

        m = self.run.manifest
        catalog = read_catalog(data_spec or m.data.spec)  # class names first: nothing decoded yet
        run_classes = len(m.data.classes)  # the model's own head may be larger (--head map)
        if catalog.num_classes != run_classes:
            raise UserError(
                f"class-count mismatch: the data has {catalog.num_classes} classes, the run was trained on "
                f"{run_classes}",
                "pass --data with the classes the run was trained on",
            )
        return build_splits(catalog, self.inputs, include_train=False, test_subset=m.config.get("test_subset"),
                            seed=m.run_seed, **self._data_options()).test


# Whether the command that opens runs was given --trust-pickle. A run directory is untrusted input
# (anyone who can write it can edit manifest.json and its sha256s), so a manifest saying "pickled
# module" never suffices: the user must say so for this command.
_TRUST_PICKLE: ContextVar[bool] = ContextVar("trust_pickle", default=False)


@contextmanager
def pickles_trusted(trust: bool) -> Iterator[None]:
    """Within this block, load_run may unpickle a run's pickled-module artifacts when `trust` is True."""
    token = _TRUST_PICKLE.set(trust)
    try:
        yield
    finally:
        _TRUST_PICKLE.reset(token)


def _unpickle(run: RunDir, path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise UserError(
            f"{path} is a pickled nn.Module (the run was made from a pickled MODEL), and unpickling it can run "
            "arbitrary code; a run directory proves nothing about who wrote it",
            "pass --trust-pickle if you made this run yourself and nobody else could change it",
        )
    try:
        net = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the user vouched for it, but it still must load
        raise UserError(f"cannot unpickle {path} ({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})",
                        "re-run compress") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"{path} holds a {type(net).__name__}, not an nn.Module", "re-run compress")
    return net.eval()


def _network(run: RunDir, name: str, trust_pickle: bool) -> nn.Module:
    path = run.verified(name)
    meta = run.manifest.model
    if run.manifest.artifacts[name].get("format") == "pickled_module":
        return _unpickle(run, path, trust_pickle)
    if meta.arch is None:
        raise UserError(f"{run.file('manifest.json')} names no architecture for {name}", "re-run compress")
    net = get_arch(meta.arch).build(meta.num_classes)
    if name == MODEL_PT and run.manifest.mode == "channel":
        net = _compacted_skeleton(run, net)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # a state dict that is not one, or does not fit the recorded architecture
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} cannot be loaded as the run's {meta.arch} ({first})",
                        "re-run compress (pass --trust-pickle only for a run made from a pickled MODEL)") from None
    return net.eval()


def _seq(record: object, manifest: Manifest) -> torch.Tensor | None:
    """A manifest's label-map record -> its index tensor; None for 'identity' or nothing."""
    if not isinstance(record, dict):
        return None
    seq, bound = record.get("seq"), manifest.model.num_classes
    if (not isinstance(seq, list) or len(seq) != len(manifest.data.classes)
            or not all(isinstance(i, int) and 0 <= i < bound for i in seq)):
        raise UserError("manifest.json: method.label_mapping.seq is not a list of class indices", "re-run compress")
    return torch.tensor(seq, dtype=torch.long)


def _compacted_skeleton(run: RunDir, net: nn.Module) -> nn.Module:
    """The run's compacted architecture: the same channel removal replayed from masks.pt."""
    from vpns_deploy.compaction import compact
    from vpns_deploy.models.cifar_resnet import shortcuts_as_convs

    shortcuts_as_convs(net)
    masks = torch.load(run.verified(MASKS_PT), map_location="cpu", weights_only=True)
    example = torch.zeros(1, *run.manifest.data.image_shape)
    return compact(net, masks, example)


def load_run(path: Path, trust_pickle: bool | None = None) -> LoadedRun:
    """A run's networks and prompt. Pickled modules load only with trust_pickle (None: the value set by
    pickles_trusted(), i.e. the command's --trust-pickle; False when nothing set it)."""
    trust = _TRUST_PICKLE.get() if trust_pickle is None else trust_pickle
    run = RunDir.open(path)
    inputs = InputSpec.from_dict(run.manifest.model.inputs)
    prompt = None
    if run.manifest.prompt:
        prompt = VisualPrompt(PromptSpec.from_dict(run.manifest.prompt))
        prompt.load_state_dict(torch.load(run.verified(PROMPT_PT), map_location="cpu", weights_only=True))
        prompt.eval()
    return LoadedRun(run, _network(run, MODEL_PT, trust), _network(run, DENSE_PT, trust), inputs, prompt)
