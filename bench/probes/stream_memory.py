"""Peak memory of bench/data_pipeline.py's streamed compress epoch, by code tree and malloc setting.

Attributes a change in the streamed epoch's peak PSS to a code tree or to glibc's heap settings.
It runs the same command (`vpns-deploy compress` of a random ResNet-20, HYDRA, 1 mask epoch, streamed
with one worker, on the generated 20,000-JPEG folder) once per --tree (a checkout of any commit), and with --glibc-default once more per tree with vpns_deploy.data.heap.steady_heap
turned into a no-op (a sitecustomize on PYTHONPATH), in the order given, one at a time.

    python -m bench.data_pipeline                   # makes /tmp/vpns-data-bench (folder + model)
    git clone -q . /tmp/old && git -C /tmp/old checkout -q 6422977
    python -m bench.probes.stream_memory --tree /tmp/old --tree . --glibc-default \\
        --out bench/runs/memory_by_commit.json
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.data_pipeline import peak_memory
from bench.probes import finish, record

NO_STEADY_HEAP = "import vpns_deploy.data.heap as _h\n_h._done = False  # steady_heap() returns at once\n"


def command(work: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from pipelines.cli import main; main()", "compress", str(work / "r20-random.pt"),
            "--arch", "cifar_resnet20", "--data", f"imagefolder:{work / 'jpeg-20000-256'}", "--input-size", "32",
            "--method", "hydra", "--epochs-mask", "1", "--epochs-tune", "0", "--batch-size", "64",
            "--memory-budget", "0", "--workers", "1", "--device", "cpu", "--quiet", "--out", str(out), "--overwrite"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, action="append", help="code tree to run (repeatable; default: this one)")
    p.add_argument("--glibc-default", action="store_true", help="also run each tree without steady_heap")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vpns-data-bench")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (args.work / "r20-random.pt").is_file() or not (args.work / "jpeg-20000-256").is_dir():
        sys.exit(f"error: {args.work} lacks the generated folder and model; run `python -m bench.data_pipeline` first")
    trees = [t.resolve() for t in (args.tree or [Path(".")])]
    result: dict = {"command": "python -m bench.probes.stream_memory " + shlex.join(sys.argv[1:] if argv is None else argv),
                    "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(NO_STEADY_HEAP)
        for tree in trees:
            commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            for steady in (True, False) if args.glibc_default else (True,):
                run = args.work / "run-memory-probe"
                shutil.rmtree(run, ignore_errors=True)  # a finished run would be skipped, not measured
                path = [str(tree)] if steady else [tmp, str(tree)]
                env = {**os.environ, "VPNS_DEPLOY_CACHE": str(args.work / "cache"), "PYTHONPATH": os.pathsep.join(path)}
                row = peak_memory(command(args.work, run), tree, env)
                row.pop("log_tail")
                record(result, {"tree": str(tree), "commit": commit, "own_malloc_settings": steady, **row})
    return finish(args.out, result)


if __name__ == "__main__":
    main()
