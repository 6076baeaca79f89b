"""What the CPU the report ran on can do: the instruction sets that decide int8 and fp32 speed.

int8 convolutions and matrix products are fast on x86 only with dot-product instructions that
multiply bytes and accumulate into 32-bit sums in one step: AVX-512 VNNI, AVX-VNNI (AVX2 width) or
AMX. Without them ONNX Runtime emulates the int8 dot product with several AVX2/AVX-512 instructions
and adds the Quantize/Dequantize nodes of the Q/DQ graph on top, so int8 is not expected to beat
fp32 there (measured: 2x slower than fp32 on an AVX2 CPU without VNNI).
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

# cpuinfo flag -> the name people know it by, in the order the report lists them.
FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
         "amx_int8": "AMX-INT8"}
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # any of these: a one-step int8 dot product


@dataclass(frozen=True)
class CpuFacts:
    model: str
    instruction_sets: tuple[str, ...]  # FLAGS' names, of those present
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): what PyTorch's kernels use
    int8_dot_product: bool

    def int8_note(self, measured: str = "") -> str:
        """One sentence on what int8 can gain here; `measured` (the report's own numbers) is appended."""
        sets = ", ".join(self.instruction_sets) or "no AVX2"
        if self.int8_dot_product:
            text = (f"This CPU ({sets}) has an int8 dot-product instruction, so ONNX Runtime's int8 kernels "
                    "can beat fp32 here")
        else:
            text = (f"This CPU ({sets}) has no int8 dot-product instruction (no VNNI or AMX): int8 cannot be "
                    "expected to run faster than fp32 here (the Q/DQ conversions come on top); int8 is for "
                    "size here, and for speed on CPUs with VNNI/AMX or on GPUs")
        return text + (f"; measured: {measured}." if measured else ".")

    @property
    def description(self) -> str:
        """The CPU as results name it: model (instruction sets)."""
        return f"{self.model} ({', '.join(self.instruction_sets)})"

    def to_dict(self) -> dict:
        return asdict(self) | {"int8_note": self.int8_note()}


def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFacts:
    """The flags of the first processor in /proc/cpuinfo (Linux); elsewhere only torch's capability."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:
        pass
    return CpuFacts(model, tuple(name for flag, name in FLAGS.items() if flag in flags), _torch_capability(),
                    any(f in flags for f in INT8_DOT))


def _torch_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch without it: the flags still say enough
        return "unknown"


def measuring_machine() -> dict:
    """What a latency measurement depends on besides the graphs: the CPU, the cores this process may use,
    the GPUs and the ONNX Runtime build. Part of the report's fingerprint, so a run copied to another
    machine (or given other cores) is measured again instead of showing the first machine's numbers."""
    import os

    import onnxruntime as ort
    import torch

    facts = cpu_facts()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": facts.model, "instruction_sets": list(facts.instruction_sets), "cores": cores, "gpus": gpus,
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
