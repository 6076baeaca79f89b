"""--speedup as a measured latency target: the budget search, the latency cache's keys, and the whole
path (compress -> export -> report) on the digits model, a target it cannot meet included."""
from __future__ import annotations

import io
import json
import math

import onnx
import pytest
from rich.console import Console
from torch import nn

from calibration.latency_cache import LatencyCache
from vpns_deploy.config import CompressConfig
from vpns_deploy.errors import UserError
from vpns_deploy.latency_budget import MAX_CANDIDATES, TOLERANCE, Measured, search
from vpns_deploy.models.registry import InputSpec
from vpns_deploy.progress import Reporter


class PowerLaw:
    """A runtime whose speedup is macs_ratio ** exponent: the shape the search assumes, exactly."""

    def __init__(self, exponent: float, ceiling: float = math.inf, dense_before: float | None = None) -> None:
        self.exponent, self.ceiling, self.calls, self.dense_before = exponent, ceiling, 0, dense_before

    def measure(self, widths, build) -> Measured:
        self.calls += 1
        s = min(self.ceiling, (widths[0] / 1000) ** self.exponent)
        return Measured(s, (s * 0.98, s * 1.02), 10.0, 10.0 / s, cached=False)

    def describe(self) -> dict:
        return {"runtime": "power law", "batch": 1}

    def forget(self, widths) -> None:
        pass

    def dense_ms_before(self) -> float | None:
        return self.dense_before


def _select(ratio: float):
    """Widths that encode the budget (1000 x ratio, on a grid of 10), as channel rounding does."""
    return (int(round(ratio * 100)) * 10,), nn.Identity


@pytest.mark.parametrize("exponent", [0.5, 0.8, 1.3])
def test_search_meets_a_target_when_macs_mispredict_latency(exponent):
    probe = PowerLaw(exponent)
    found = search(2.0, _select, probe, max_ratio=50.0)
    assert found.met, found.to_dict()
    assert abs(found.chosen.measured.speedup / 2.0 - 1) <= TOLERANCE
    assert probe.calls <= MAX_CANDIDATES
    assert found.chosen.macs_ratio == pytest.approx(2.0 ** (1 / exponent), rel=0.1)


class Loaded(PowerLaw):
    """The same runtime on a machine whose load grows: every call, the dense graph runs 10 % slower."""

    def measure(self, widths, build) -> Measured:
        m = super().measure(widths, build)
        slow = 1.1 ** self.calls
        return Measured(m.speedup, m.ci95, m.dense_ms * slow, m.ms * slow, cached=False)


def test_a_search_on_a_busy_machine_says_so():
    quiet = search(2.0, _select, PowerLaw(0.5), max_ratio=50.0)
    assert quiet.busy_line() is None and quiet.to_dict()["busy"] is False
    busy = search(2.0, _select, Loaded(0.5), max_ratio=50.0)
    assert len(busy.candidates) >= 3  # 1.1 ** 3 > BUSY_SPREAD
    assert busy.to_dict()["busy"] and "something else was using this machine" in busy.busy_line()
    lo, hi = busy.to_dict()["dense_ms_range"]
    assert hi / lo == pytest.approx(1.1 ** (len(busy.candidates) - 1))


def test_one_candidate_on_a_machine_busy_all_along_is_caught_by_the_cache():
    """The dense graph took 7 ms here before and 10 ms now: one candidate met the target at once, so
    the search's own spread is nil, and only the cache shows the load."""
    steady = search(2.0, _select, PowerLaw(1.0, dense_before=9.5), max_ratio=50.0)
    assert len(steady.candidates) == 1 and steady.busy_line() is None
    busy = search(2.0, _select, PowerLaw(1.0, dense_before=7.0), max_ratio=50.0)
    assert len(busy.candidates) == 1 and busy.met
    assert "it took 7 ms when this machine measured it before" in busy.busy_line()
    assert busy.to_dict()["busy"] and busy.to_dict()["dense_ms_cached"] == 7.0


def test_an_unreachable_target_gives_the_fastest_point_and_says_so():
    found = search(3.0, _select, PowerLaw(1.0, ceiling=1.6), max_ratio=4.0)
    assert not found.met and found.reachable == pytest.approx(1.6)
    assert found.chosen.measured.speedup == pytest.approx(1.6)
    assert "out of reach" in found.line() and "best reachable point" in found.line()


def test_the_cache_is_keyed_by_machine_runtime_batch_and_input(tmp_path):
    key = {"machine": {"cpu": "A", "cores": 2}, "runtime": "ort-cpu", "threads": 2, "input": [3, 32, 32],
           "batch": 1, "precision": "fp32", "network": "n"}
    point = {"speedup": 1.7, "ci95": [1.6, 1.8], "dense_ms": 2.0, "ms": 1.2, "runs": 20}
    LatencyCache(key, tmp_path).put((16, 32), point)
    assert LatencyCache(key, tmp_path).get((16, 32))["speedup"] == 1.7
    assert LatencyCache(key, tmp_path).get((16, 16)) is None  # other widths
    for change in ({"batch": 32}, {"machine": {"cpu": "B", "cores": 2}}, {"runtime": "ort-cuda"},
                   {"input": [3, 64, 64]}, {"threads": 1}):
        assert LatencyCache(key | change, tmp_path).get((16, 32)) is None, change
    # a file that is not what the cache wrote is ignored, then rewritten
    path = LatencyCache(key, tmp_path).path
    path.write_text("{not json")
    assert LatencyCache(key, tmp_path).get((16, 32)) is None
    LatencyCache(key, tmp_path).put((16, 32), point)
    assert json.loads(path.read_text())["points"]
    LatencyCache(key, tmp_path).put((32, 32), point)
    LatencyCache(key, tmp_path).forget([(16, 32)])  # points timed on a busy machine are dropped, others kept
    assert LatencyCache(key, tmp_path).get((16, 32)) is None and LatencyCache(key, tmp_path).get((32, 32))


def test_the_probe_times_once_per_widths_and_target(tmp_path):
    """A real ONNX Runtime probe: a second probe of the same network and target reads the cache (the
    candidate is not even built), another batch size measures again."""
    from export.target_runtime import NetworkProbe

    dense = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
    small = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))

    def never():
        raise AssertionError("a cached candidate must not be built")

    inputs = InputSpec(3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 16)
    with NetworkProbe(dense, inputs, (3, 16, 16), "ort-cpu", 1, budget_s=0.2, cache_root=tmp_path) as probe:
        assert probe.dense_ms_before() is None  # nothing measured on this machine yet
        first = probe.measure((16,), lambda: small)
        # what is timed is the graph as it deploys: uint8 NHWC images in, preprocessing inside
        (graph_input,) = onnx.load(probe.workdir / "candidate.onnx").graph.input
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:] == [16, 16, 3]
    assert not first.cached and first.speedup > 0 and first.dense_ms > 0
    with NetworkProbe(dense, inputs, (3, 16, 16), "ort-cpu", 1, budget_s=0.2, cache_root=tmp_path) as probe:
        assert probe.dense_ms_before() == first.dense_ms  # what the dense graph took here before
        assert probe.measure((16,), never) == Measured(first.speedup, first.ci95, first.dense_ms, first.ms, True)
    with NetworkProbe(dense, inputs, (3, 16, 16), "ort-cpu", 2, budget_s=0.2, cache_root=tmp_path) as probe:
        assert not probe.measure((16,), lambda: small).cached


def test_speedup_outside_channel_mode_says_why_it_cannot_be_faster():
    with pytest.raises(UserError) as e:
        CompressConfig(mode="unstructured", speedup=2.0)
    assert "keeps every layer's shape" in str(e.value) and "pass --mode channel" in str(e.value)
    with pytest.raises(UserError, match="target-batch"):
        CompressConfig(mode="channel", speedup=2.0, target_batch=0)
    with pytest.raises(UserError, match="budget-by"):
        CompressConfig(mode="channel", speedup=2.0, budget_by="flops")
    assert CompressConfig(mode="channel", speedup=2.0).latency_budget
    assert not CompressConfig(mode="channel", speedup=2.0, budget_by="macs").latency_budget


def test_target_path_end_to_end_on_digits(digits_model, tmp_path, monkeypatch):
    """A target digits cannot meet (its 8-px network is mostly per-call overhead): the best reachable
    point, a clear line, exit without error; the manifest and the report say what was asked and reached."""
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from pipelines.report_stage import run_report
    from pipelines.run_dir import RunDir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = CompressConfig(mode="channel", speedup=20.0, target_batch=2, epochs_mask=1, epochs_tune=1, batch_size=64,
                         max_drop=50.0, train_subset=400, target_probe_seconds=0.3)
    buf = io.StringIO()
    out = run_compress(digits_model, "digits_cnn", "digits", cfg, tmp_path / "run",
                       reporter=Reporter(quiet=True, console=Console(file=buf, width=400)))
    said = buf.getvalue()
    assert "warning: --speedup 20 is out of reach on ort-cpu, batch 2" in said, said
    target = RunDir.open(out).manifest.metrics["target"]
    lat = target["latency"]
    assert target["budget_by"] == "latency" and target["batch"] == 2 and not lat["met"]
    assert 1 <= len(lat["candidates"]) <= MAX_CANDIDATES
    assert lat["measured"]["speedup"] == max(c["speedup"] for c in lat["candidates"])
    assert lat["probe"]["runtime"] == "ort-cpu" and not lat["verified"]["cached"]  # timed again at the end
    assert "latency check: the compacted network runs" in said
    # VPNs learned a prompt: what it costs the compacted graph was timed too, and decided whether it ships
    from vpns_deploy.prompts import PROMPT_LATENCY_RULE

    with_prompt = lat["verified"]["with_prompt"]
    lo, hi = with_prompt["latency_ratio_ci95"]
    assert 0 < lo <= with_prompt["latency_ratio"] <= hi and "latency check, prompt folded in:" in said
    assert with_prompt["speedup"] == pytest.approx(lat["verified"]["speedup"] / with_prompt["latency_ratio"])
    decision = RunDir.open(out).manifest.metrics["prompt_decision"]
    assert decision["speedup_with_prompt"] == with_prompt["speedup"]
    preferred = decision["val_top1_prompted"] >= decision["val_top1_plain"]
    assert decision["fold"] == (preferred and with_prompt["within_tolerance"])
    assert (decision["rule"] == PROMPT_LATENCY_RULE) == (preferred and not with_prompt["within_tolerance"])
    assert target["accuracy"]["within"] and "accuracy budget" in said
    assert "time: " in said and "latency search 0:00:" in said  # what each phase of the run cost

    # the results page's summariser reads the same record (bench/target.py)
    from bench.target import cell, summarise

    row = cell(out)
    assert row["macs_budget"]["macs_ratio"] <= 20.0  # the first candidate: the MACs budget itself, or the floor
    assert row["check"]["speedup"] == lat["verified"]["speedup"] and not row["check"]["within"]
    assert f"| {row['network']} | 2 | 20x |" in summarise({"run": row})["markdown"]["Latency targets"]

    run_export(out, reporter=Reporter(quiet=True))
    report = run_report(out, reporter=Reporter(quiet=True), print_table=False, latency_budget=1.0)
    assert "2" in report["latency_ms"]["dense"]  # the target batch is timed beside 1 and 64
    shipped = report["target"]["shipped"]
    assert shipped is not None and shipped["met"] is False
    md = (out / "report.md").read_text()
    assert "Target: 20x faster than dense at batch 2 on ort-cpu: not met" in md
    # where the time goes: ORT's per-node profile of both graphs, mapped back to the network's modules
    layers = report["slowest_layers"]
    assert 0 < len(layers["compressed"]) <= 10 and all(n["ms"] > 0 for n in layers["dense"])
    assert any(n["module"].startswith("features") for n in layers["dense"]), layers["dense"]
    assert "Slowest layers, fp32, batch 1" in md

    # the accuracy cells' summariser reads manifest and report together (bench/target_transfer.py)
    from bench import target_transfer

    acc = target_transfer.cell(out)
    assert acc["verified"]["speedup"] == lat["verified"]["speedup"] and acc["target_met"] is False
    assert acc["speedup"]["1"] == report["shipping"]["candidates"][acc["ships"]["1"]]["speedup_vs_dense_fp32"]["1"]
    assert acc["optimizer_steps"] == sum(e["optimizer_steps"] for e in RunDir.open(out).manifest.metrics["epochs"])
    table = target_transfer.summarise({"digits": acc})["markdown"]["Latency targets: accuracy"]
    assert table.splitlines()[2].startswith("| digits | VPNs | 20x |")


def test_run_identity_ignores_target_settings_a_run_does_not_use():
    """Runs made before the latency target existed keep their identity (found, skipped, resumed): its
    settings count only when --speedup is a measured latency, and an unset --max-drop not at all."""
    from pipelines.manifest import identity

    plain = CompressConfig(sparsity=0.9).to_dict()
    assert identity(plain) == identity(plain | {"target_batch": 32, "budget_by": "macs", "max_drop": None})
    macs = CompressConfig(mode="channel", speedup=2.0, budget_by="macs").to_dict()
    assert "budget_by" not in identity(macs) and identity(macs) == identity(macs | {"target_batch": 8})
    latency = CompressConfig(mode="channel", speedup=2.0).to_dict()
    assert identity(latency) != identity(macs)
    assert identity(latency) != identity(latency | {"target_batch": 8})


class Steps(PowerLaw):
    """A runtime whose latency falls in one step: 2.7x up to 4.5x fewer MACs, then 3.6x."""

    def measure(self, widths, build) -> Measured:
        self.calls += 1
        ratio = widths[0] / 1000
        s = ratio * 0.64 if ratio < 4.5 else 3.6 + 0.01 * (ratio - 4.5)
        s = min(s, 2.7) if ratio < 4.5 else s
        return Measured(s, (s * 0.98, s * 1.02), 10.0, 10.0 / s, cached=False)


def test_a_target_inside_a_latency_step_ships_the_least_pruned_network_that_meets_it():
    found = search(3.0, _select, Steps(1.0), max_ratio=10.0)
    assert not found.met and found.reachable is None
    assert found.chosen.measured.speedup >= 3.0  # the promise kept, with speed to spare
    assert found.chosen.macs_ratio == min(c.macs_ratio for c in found.candidates if c.measured.speedup >= 3.0)
    assert 4.5 <= found.chosen.macs_ratio < 5.0  # bisection closed in on the step
    assert "least pruned network at least that fast" in found.line()
