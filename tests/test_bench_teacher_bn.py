"""bench.teacher_bn on a real tiny model and data: every BN variant measured, JSON with the command."""
from __future__ import annotations

import json

from bench import teacher_bn


def test_teacher_bn_measures_each_variant_and_saves_the_command(tmp_path, digits_model):
    out = tmp_path / "t.json"
    teacher_bn.main(["--model", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--images", "64",
                     "--train-subset", "200", "--test-subset", "100", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["images"] for r in saved["rows"]] == [0, 64, 64]
    assert all(0 <= r["test_top1"] <= 1 for r in saved["rows"]) and saved["test_images"] == 100
    assert saved["command"].startswith("python -m bench.teacher_bn --model")
