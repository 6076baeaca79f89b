"""bench/probes/prompt_travel.py on a real VPNs run: what it reads, and the Adam bound it states."""
from __future__ import annotations

import json


def test_prompt_travel_reads_a_real_run_and_states_stage_ones_bound(digits_run, tmp_path):
    from bench.probes.prompt_travel import REFERENCE_LR_PROMPT_MASK, REFERENCE_STAGE1_STEPS, main, travel

    row = travel(digits_run)
    manifest = json.loads((digits_run / "manifest.json").read_text())
    mask_steps = sum(e["optimizer_steps"] for e in manifest["metrics"]["epochs"] if e["stage"] == "mask")
    assert row["optimizer_steps"]["mask"] == mask_steps > 0
    assert row["stage1_adam_bound"] == mask_steps * manifest["config"]["optim"]["lr_prompt_mask"]
    assert row["reference_stage1_adam_bound"] == REFERENCE_STAGE1_STEPS * REFERENCE_LR_PROMPT_MASK
    assert row["frame_values"] > 0 and 0 < row["mean_abs"] <= row["max_abs"]  # stage 2 moved the frame
    assert 0.0 <= row["share_at_least_one_level"] <= 1.0
    out = tmp_path / "travel.json"
    main([str(digits_run), str(tmp_path / "not-a-run"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["run"] for r in saved["runs"]] == [str(digits_run)]  # a folder without prompt.pt is left out
