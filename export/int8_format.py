"""Which int8 graph ships: ONNX Runtime's QDQ or QOperator format, chosen by measuring both on this CPU.

ONNX Runtime's quantiser writes int8 in two forms: QDQ (QuantizeLinear/DequantizeLinear around float
Conv/MatMul, fused into integer kernels by the runtime) and QOperator (QLinearConv, QLinearMatMul
directly). Which runs faster depends on the CPU (its int8 dot-product instructions: calibration/cpu.py)
and on the runtime's fusions, so export quantises the compressed graph both ways with the same
calibration images and times the two interleaved (calibration.latency). QOperator ships only where
its speedup over QDQ at the serving batch has a 95 % interval wholly above 1; otherwise QDQ, which is
also what TensorRT reads (with --trt: Q/DQ with symmetric int8 activations, the only form TensorRT
takes, and nothing is measured). The dense reference gets the same format, so the report compares like
with like. Both candidates come from the same recipe (precision.py): the accuracy gate after it
(precision_gate.py) judges whichever ships.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.calibrator import ImageCalibrationReader
from calibration.cpu import cpu_facts
from calibration.latency import LATENCY_BATCHES, latency_by_batch, speedup
from calibration.runtime import OrtRuntime
from calibration.session import cpu_session, cpu_threads
from export.precision import INT8_FORMATS, INT8_RECIPE, to_int8

FORMAT_BUDGET_S = 4.0  # seconds of timed calls per candidate (over the latency batches)
DEFAULT_FORMAT = "qdq"


@dataclass
class Int8Format:
    """The int8 format export shipped, why, and what it measured (per format, per batch)."""

    format: str
    reason: str
    measured: dict = field(default_factory=dict)  # format -> batch -> Latency.to_dict()
    speedup: dict = field(default_factory=dict)  # batch -> QOperator over QDQ: Speedup.to_dict()
    cpu: dict = field(default_factory=dict)  # instruction sets and whether they hold an int8 dot product
    tensorrt: bool = False  # symmetric int8 activations (TensorRT's form), else uint8 asymmetric

    @property
    def activations(self) -> str:
        return "int8 symmetric" if self.tensorrt else "uint8 asymmetric"

    @property
    def runtimes(self) -> str:
        """Which runtimes the shipped int8 graph is for: QOperator ops are ONNX Runtime's own."""
        if self.format == "qoperator":
            return "ONNX Runtime only (QLinear* operators)"
        if self.tensorrt:
            return "TensorRT and ONNX Runtime (Q/DQ, symmetric int8 activations)"
        return "ONNX Runtime and other Q/DQ readers; not TensorRT (it needs symmetric int8 activations: export --trt)"

    def to_dict(self) -> dict:
        return {"format": self.format, "reason": self.reason, "measured": self.measured, "speedup": self.speedup,
                "cpu": self.cpu, "recipe": INT8_RECIPE, "activations": self.activations, "runtimes": self.runtimes}


def choose_int8_format(fp32: Path, dst: Path, calib, sample: np.ndarray, tensorrt: bool,
                       budget_s: float = FORMAT_BUDGET_S) -> Int8Format:
    """Quantise `fp32` into `dst` in the format that is faster here (see the module docstring)."""
    facts = cpu_facts()
    cpu = {"model": facts.model, "instruction_sets": list(facts.instruction_sets),
           "int8_dot_product": facts.int8_dot_product}
    if tensorrt:
        to_int8(fp32, dst, ImageCalibrationReader(calib), DEFAULT_FORMAT, tensorrt=True)
        return Int8Format(DEFAULT_FORMAT, "TensorRT engines are asked for (--trt): they are built from Q/DQ graphs "
                          "with symmetric int8 activations only; not measured", cpu=cpu, tensorrt=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        paths = {f: Path(tmp) / f"{f}.onnx" for f in INT8_FORMATS}
        for f, path in paths.items():
            to_int8(fp32, path, ImageCalibrationReader(calib), f)
        threads = cpu_threads()
        runtimes = {f: OrtRuntime(cpu_session(p, threads), f) for f, p in paths.items()}
        lat = latency_by_batch(runtimes, sample, budget_s)
        gains = {b: speedup(lat["qdq"][b], lat["qoperator"][b]) for b in lat["qdq"]}
        serving = str(LATENCY_BATCHES[-1])
        g = gains[serving]
        faster = g.ci95[0] > 1.0
        chosen = "qoperator" if faster else DEFAULT_FORMAT
        where = f"at batch {serving} on this CPU ({', '.join(facts.instruction_sets) or 'no AVX2'}, {threads} threads)"
        numbers = f"QOperator/QDQ speed {g.speedup:.2f}x [95 % interval {g.ci95[0]:.2f}, {g.ci95[1]:.2f}]"
        reason = (f"QOperator is faster {where}: {numbers}" if faster else
                  f"QOperator is not clearly faster {where} ({numbers}): QDQ, which more runtimes read")
        os.replace(paths[chosen], dst)
    return Int8Format(chosen, reason, {f: {b: v.to_dict() for b, v in lat[f].items()} for f in lat},
                      {b: s.to_dict() for b, s in gains.items()}, cpu)
