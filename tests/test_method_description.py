"""What a run's method did, in words: in --help and in manifest.json (method.description)."""
from __future__ import annotations

import json

from vpns_deploy.config import CompressConfig
from vpns_deploy.sparsity.methods import METHOD_REGISTRY, get_method


def test_every_method_describes_itself_and_hydra_names_what_it_is_not():
    assert all(m.description for m in METHOD_REGISTRY)
    hydra = get_method("hydra").description
    assert "without the prompt" in hydra and "not HYDRA as published" in hydra


def test_manifest_records_the_description_and_a_manifest_without_it_still_loads(digits_run, tmp_path):
    from pipelines.manifest import Manifest

    raw = json.loads((digits_run / "manifest.json").read_text())
    assert raw["method"]["description"] == get_method(CompressConfig().method).description
    del raw["method"]["description"]  # as a run recorded before the key existed
    old = Manifest.from_dict(raw, tmp_path / "manifest.json")
    assert old.method["name"] == raw["method"]["name"]
