"""The measurement layer: one top-1 for every runtime, latency bounded in time with an interval,
speedups flagged when they are noise, and the CPU facts the report states."""
from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from calibration.cpu import cpu_facts
from calibration.latency import (BLOCK_MS, MAX_BLOCK, MAX_RUNS, MIN_ROUNDS, MIN_TIMED, Latency, block_size,
                                 latency_by_batch, measure_interleaved, speedup)
from calibration.runtime import OrtRuntime, TorchRuntime, top1
from calibration.session import cpu_session
from pipelines.cli import app


def _matmul_graph(path, n: int = 384, layers: int = 8) -> None:
    """A real ONNX graph that takes a few milliseconds per call: uint8 NHWC in, `layers` MatMuls."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["images"], ["x0"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x0", "shape"], ["h0"])]
    inits = [numpy_helper.from_array(np.array([-1, n], dtype=np.int64), "shape")]
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32) / n, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                           ["batch", n, 1, 1])],
                              [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["batch", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_latency_stops_at_its_budget_with_an_interval(tmp_path):
    """A graph too slow for MAX_RUNS calls in the budget stops near the budget, with at least
    MIN_TIMED calls and a 95 % interval that holds its median."""
    _matmul_graph(tmp_path / "slow.onnx")
    rt = OrtRuntime(cpu_session(tmp_path / "slow.onnx", threads=1))
    # batch 256: about 6 ms a call on one idle core, so MAX_RUNS calls never fit the 0.4 s budget (at
    # batch 64 an idle machine made all its calls in time and the budget was never what stopped it)
    sample = np.random.default_rng(0).integers(0, 255, (256, 384, 1, 1), dtype=np.uint8)
    t0 = time.perf_counter()
    lat = latency_by_batch({"a": rt, "b": rt}, sample, budget_s=0.4, batches=(256,))
    took = time.perf_counter() - t0
    for name in ("a", "b"):
        got = lat[name]["256"]
        assert MIN_TIMED <= got.runs < MAX_RUNS, got.runs
        assert got.ci95_ms[0] <= got.median_ms <= got.ci95_ms[1]
    slowest = max(max(lat[n]["256"].times_ms) for n in lat) / 1e3
    assert took <= 2 * 0.4 + 4 * slowest + 0.5, took  # two graphs' budgets plus the calls that straddle them


def test_fast_graphs_get_enough_rounds_for_an_interval_whatever_the_budget(tmp_path):
    """The interval resamples rounds: graphs that take multi-call turns run MIN_ROUNDS rounds even when
    a tiny budget is spent after the first, and the interval has a width."""
    _matmul_graph(tmp_path / "fast.onnx", n=16, layers=1)  # microseconds a call: MAX_BLOCK calls a turn
    rt = OrtRuntime(cpu_session(tmp_path / "fast.onnx", threads=1))
    x = np.random.default_rng(0).integers(0, 255, (1, 16, 1, 1), dtype=np.uint8)
    got = measure_interleaved({"a": rt, "b": rt}, {"a": x, "b": x}, 1e-4)
    for lat in got.values():
        assert lat.block > 1 and lat.runs == lat.block * (lat.runs // lat.block)
        assert lat.runs // lat.block >= MIN_ROUNDS and lat.ci95_ms[0] < lat.ci95_ms[1], lat
    assert speedup(got["a"], got["b"]).ci95[0] < speedup(got["a"], got["b"]).ci95[1]


class _LoggedRuntime(OrtRuntime):
    """A real ONNX Runtime session that also writes down, in order, which graph each call was."""

    def __init__(self, session, name: str, log: list[str]) -> None:
        super().__init__(session, name)
        self.log = log

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.log.append(self.name)
        return super().infer(batch)


def test_graphs_take_turns_in_blocks_after_an_untimed_call(tmp_path):
    """A fast graph runs back to back (about BLOCK_MS per turn, one untimed call first: the caches the
    other graph filled), a graph slower than BLOCK_MS one call per turn; turns alternate."""
    assert block_size(0.1) == MAX_BLOCK and block_size(BLOCK_MS / 4) == 4 and block_size(5 * BLOCK_MS) == 1
    _matmul_graph(tmp_path / "fast.onnx", n=16, layers=1)  # microseconds a call
    _matmul_graph(tmp_path / "slow.onnx", n=768, layers=16)  # batch 384: about 3.6 GMAC, over 13 ms a call (one turn: one call)
    log: list[str] = []
    fast = _LoggedRuntime(cpu_session(tmp_path / "fast.onnx", threads=1), "fast", log)
    slow = _LoggedRuntime(cpu_session(tmp_path / "slow.onnx", threads=1), "slow", log)
    rng = np.random.default_rng(0)
    batches = {"fast": rng.integers(0, 255, (1, 16, 1, 1), dtype=np.uint8),
               "slow": rng.integers(0, 255, (384, 768, 1, 1), dtype=np.uint8)}
    got = measure_interleaved({"fast": fast, "slow": slow}, batches, 0.3)
    warm = got["fast"].warmup
    rounds = got["slow"].runs  # one timed call per turn for the slow graph
    expected = []
    for i in range(rounds):
        turn = {"fast": ["fast"] * (MAX_BLOCK + 1), "slow": ["slow"]}  # the untimed call, then the block
        expected += turn["fast"] + turn["slow"] if i % 2 == 0 else turn["slow"] + turn["fast"]
    assert log[2 * warm:] == expected
    assert got["fast"].runs == MAX_BLOCK * rounds and rounds >= MIN_TIMED


def test_cpu_sessions_sleep_between_calls(tmp_path):
    """Graphs are timed interleaved, so no session's threads may spin between calls: spinning made
    ResNet-56 read 2.7x slower at batch 1 interleaved than alone (calibration/session.py)."""
    _matmul_graph(tmp_path / "g.onnx", n=8, layers=1)
    options = cpu_session(tmp_path / "g.onnx").get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _latency(times: list[float], block: int = 1) -> Latency:
    t = np.asarray(times)
    return Latency(1, len(t), 0, float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                   float(t.min()), (0.0, 0.0), 0.0, False, tuple(float(x) for x in times), block)


def test_speedup_interval_flags_noise():
    rng = np.random.default_rng(1)
    dense = _latency(list(10 + rng.normal(0, 0.3, 40)))
    clear = speedup(dense, _latency(list(5 + rng.normal(0, 0.2, 40))))
    assert clear.speedup == pytest.approx(2, rel=0.05) and clear.ci95[0] > 1.0 and not clear.within_noise
    noisy = speedup(dense, _latency(list(10 + rng.normal(0, 3.0, 40))))
    assert noisy.ci95[0] <= 1.0 <= noisy.ci95[1] and noisy.within_noise
    assert noisy.to_dict()["within_noise"] is True


def test_intervals_resample_whole_rounds_and_pair_the_graphs_rounds():
    """A turn's calls share the machine's state: one draw, not ten. Load that hits both graphs in a
    round cancels in the speedup's interval as it does in the ratio; the same loads in another order
    (rounds no longer side by side) do not."""
    from calibration.latency import _latency as timed

    rng = np.random.default_rng(2)
    load = rng.lognormal(0.0, 0.1, 40)  # the machine's state in each of 40 rounds
    per_round = np.repeat(10 * load, 10) + rng.normal(0, 0.01, 400)
    by_call, by_round = timed(1, list(per_round), 0, 1.0, block=1), timed(1, list(per_round), 0, 1.0, block=10)
    assert by_round.block == 10 and by_round.median_ms == by_call.median_ms
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_round.ci95_ms) > 2 * width(by_call.ci95_ms)
    dense = _latency(list(np.repeat(10 * load, 10)), block=10)
    paired = speedup(dense, _latency(list(np.repeat(4 * load, 10)), block=10))
    assert paired.speedup == pytest.approx(2.5) and width(paired.ci95) < 1e-9
    apart = speedup(dense, _latency(list(np.repeat(4 * rng.permutation(load), 10)), block=10))
    assert apart.ci95[0] < 2.45 and apart.ci95[1] > 2.55 and width(apart.ci95) > 0.1


def test_cpu_facts_name_the_instruction_sets_and_the_int8_verdict(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma\n")
    facts = cpu_facts(avx2)
    assert facts.model == "Some CPU" and facts.instruction_sets == ("AVX2",) and not facts.int8_dot_product
    assert "cannot be expected to run faster than fp32" in facts.int8_note()
    vnni = tmp_path / "vnni"
    vnni.write_text("model name\t: Other\nflags\t\t: avx2 avx512f avx512_vnni\n")
    facts = cpu_facts(vnni)
    assert facts.instruction_sets == ("AVX2", "AVX-512", "AVX-512 VNNI") and facts.int8_dot_product
    assert "can beat fp32" in facts.int8_note("x")


def test_one_top1_loop_for_pytorch_and_onnxruntime(digits_run):
    """The shipped graph in ONNX Runtime and its PyTorch model, through the same loop and feed."""
    import torch

    from pipelines.load_run import load_run

    loaded = load_run(digits_run)
    test = loaded.test_split()
    ships = loaded.run.manifest.export.ships_prompt
    ort_top1 = top1(OrtRuntime(cpu_session(digits_run / "model.onnx")), test)
    torch_top1 = top1(TorchRuntime(loaded.prompted(ships), torch.device("cpu"), ships), test)
    assert ort_top1 == pytest.approx(torch_top1, abs=1 / len(test)) and ort_top1 > 0.5


def test_report_states_intervals_noise_and_the_cpu(tmp_path, digits_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    result = CliRunner().invoke(app, ["report", str(run), "--remeasure", "--latency-budget", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    assert report["schema"] == 2 and report["machine"]["latency_budget_s"] == 4
    for b, sp in report["speedup"].items():
        lo, hi = sp["ci95"]
        assert lo <= sp["speedup"] <= hi and sp["within_noise"] == (lo <= 1.0 <= hi)
        for kind in ("dense", "compressed", "network_only"):
            lat = report["latency_ms"][kind][b]
            assert lat["ci95_ms"][0] <= lat["median_ms"] <= lat["ci95_ms"][1] and lat["runs"] >= MIN_TIMED
    assert report["cpu"]["instruction_sets"] == list(cpu_facts().instruction_sets)
    md = (run / "report.md").read_text()
    assert "CPU: " in md and report["cpu"]["int8_note"] in md and "within noise" in md


def test_latency_budget_must_be_positive(tmp_path, digits_run):
    result = CliRunner().invoke(app, ["report", str(digits_run), "--remeasure", "--latency-budget", "0"])
    err = result.stderr.strip()
    assert result.exit_code == 2 and len(err.splitlines()) == 1 and "--latency-budget" in err and "> 0" in err


def test_report_fingerprint_names_the_measuring_machine(digits_run):
    """A report measured on one machine is not 'done' on another: the fingerprint holds the CPU, cores,
    GPUs and ONNX Runtime build, and is stable on the same machine."""
    from calibration.cpu import measuring_machine
    from pipelines.run_dir import RunDir
    from pipelines.stage_keys import report_record

    m = RunDir.open(digits_run).manifest
    here = measuring_machine()
    assert here["cores"] >= 1 and here["onnxruntime"] and here["cpu"]
    assert report_record(m, 2.0, None).fingerprint == report_record(m, 2.0, None, machine=here).fingerprint
    for change in ({"cores": here["cores"] + 1}, {"cpu": "another CPU"}, {"gpus": ["NVIDIA H200"]}):
        assert report_record(m, 2.0, None, machine=here | change).fingerprint != report_record(m, 2.0, None).fingerprint
