"""The streaming data pipeline, measured: decode + augment throughput, and peak memory of one compress
epoch against the old decode-everything-into-RAM design.
Over 300 lines on purpose: its three measurements (throughput, memory, epoch time) share the generated
folder, the old tree and the peak-memory runner, which belong together.

    python -m bench.data_pipeline                       # the full benchmark (run it on quiet cores)
    python -m bench.data_pipeline --cifar-tar ../shared/data/cifar10-jpeg.tar.gz \\
        --model ../shared/models/cifar10/resnet20-12fca82f.th --epoch-time-only [--epoch-repeats 2]  # ResNet-20 epoch, before/after
                                                        # (its "epoch" part of the same JSON, the rest kept)

Parts (each saved in one JSON, default bench/results/data_pipeline.json, with the exact command):
1. throughput: a generated ImageFolder of --images JPEGs of --side px (10 classes); images/s of
   decode + resize + augment (the training stream: RandomCrop + flip through torchvision.transforms.v2
   in DataLoader workers) at each --sizes with each --workers, over --throughput-images images.
2. rss: peak memory (PSS summed over the process and its DataLoader workers, sampled from
   /proc/*/smaps_rollup; and the main process's ru_maxrss) of one `vpns-deploy compress` epoch
   (HYDRA, 1 mask epoch, --input-size --rss-size, streamed: --memory-budget 0) on that folder, against
   the old in-memory design: the pre-change loader (git commit OLD_DATA_COMMIT, extracted with git
   archive) run on the same folder, and the bytes of the uint8 tensor it holds (N x 3 x side x side).
3. epoch (--cifar-tar and --model): ResNet-20 on CIFAR-10-JPEG, one HYDRA mask epoch, train seconds
   per epoch with the pre-change code and with this code (in RAM, --val-fraction 0 so both train
   on the same 50,000 images), same machine, one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OLD_DATA_COMMIT = "f6d3e7aa1f4d056c4829a173b75ca11aea80c26b"  # the last commit before streaming data
CLASSES = 10
EXE = str(Path(sys.executable).with_name("vpns-deploy"))


def write_jpeg_folder(root: Path, images: int, side: int, test_fraction: float = 0.1, seed: int = 0) -> Path:
    """An ImageFolder of smooth random colour JPEGs (quality 90), `images` in train/, a tenth more in test/."""
    from PIL import Image

    done = root / ".complete"
    if done.exists() and done.read_text() == f"{images} {side}":
        return root
    rng = np.random.default_rng(seed)
    counts = {"train": images, "test": max(CLASSES, int(images * test_fraction))}
    for split, n in counts.items():
        for i in range(n):
            c = i % CLASSES
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: JPEG-like content, not noise
            Image.fromarray(small).resize((side, side), Image.BILINEAR).save(d / f"{i:06d}.jpg", quality=90)
    done.write_text(f"{images} {side}")
    return root


def throughput(folder: Path, sizes: list[int], workers: list[int], n: int, batch: int, log: bool = True) -> list[dict]:
    """Images/s of the streamed, augmented training set (decode + resize + crop + flip)."""
    from vpns_deploy.data import load_splits
    from vpns_deploy.data.batches import train_batches
    from vpns_deploy.models.registry import IMAGENET_MEAN, IMAGENET_STD, InputSpec

    rows = []
    for size in sizes:
        spec = InputSpec(3, IMAGENET_MEAN, IMAGENET_STD, size=size)
        for w in workers:
            splits = load_splits(f"imagefolder:{folder}", spec, train_subset=n, memory_budget=0.0, workers=w)
            gen = torch.Generator().manual_seed(0)
            t0, seen = time.perf_counter(), 0
            for x, _ in train_batches(splits.train, batch, gen, torch.device("cpu"), splits.augment, w):
                seen += len(x)
            secs = time.perf_counter() - t0
            rows.append({"size": size, "workers": w, "images": seen, "seconds": secs, "images_per_s": seen / secs,
                         "augment": vars(splits.augment)})
            if not log:
                continue
            print(f"  {size:>4} px  {w} workers  {seen / secs:8.1f} images/s  ({seen} in {secs:.1f} s)", flush=True)
    return rows


def _tree_pss_kib(pid: int) -> int:
    """PSS of a process and all its descendants (KiB): shared pages counted once overall."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
            for tid in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def peak_memory(cmd: list[str], cwd: Path, env: dict | None = None, interval: float = 0.1) -> dict:
    """Run cmd; peak tree PSS (sampled) and the main process's maxrss, exit code and seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    output: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        output.extend(proc.stdout)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it ourselves, to read its rusage
        if pid != 0:
            break
        peak[0] = max(peak[0], _tree_pss_kib(proc.pid))
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    return {"returncode": proc.returncode, "peak_pss_mib": peak[0] / 1024, "main_maxrss_mib": usage.ru_maxrss / 1024,
            "seconds": time.perf_counter() - t0, "minor_faults": usage.ru_minflt, "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime, "log_tail": "".join(output)[-1500:]}


def old_tree(commit: str, dest: Path) -> Path | None:
    """The pre-change code, extracted with git archive (None where git or the commit is unavailable)."""
    if (dest / "vpns_deploy").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  old design not measured: git archive {commit[:10]} failed ({exc})", flush=True)
        return None
    return dest


def _random_model(path: Path) -> Path:
    from vpns_deploy.models import get_arch

    if not path.exists():
        torch.manual_seed(0)
        torch.save(get_arch("cifar_resnet20").build(CLASSES).state_dict(), path)
    return path


def rss(folder: Path, work: Path, images: int, side: int, size: int, workers: int, old: Path | None,
        batch: int) -> dict:
    model = _random_model(work / "r20-random.pt")
    env = {**os.environ, "VPNS_DEPLOY_CACHE": str(work / "cache")}
    new_cmd = [EXE, "compress", str(model), "--arch", "cifar_resnet20", "--data", f"imagefolder:{folder}",
               "--input-size", str(size), "--method", "hydra", "--epochs-mask", "1", "--epochs-tune", "0",
               "--batch-size", str(batch), "--memory-budget", "0", "--workers", str(workers), "--device", "cpu",
               "--quiet", "--out", str(work / "run-stream"), "--overwrite"]
    print(f"  new: {shlex.join(new_cmd)}", flush=True)
    _fresh(work / "run-stream")
    result = {"new_stream": {"command": new_cmd, **peak_memory(new_cmd, ROOT, env)}}
    result["old_tensor_bytes"] = (images + max(CLASSES, int(images * 0.1))) * 3 * side * side
    if old is not None:
        # The old design decodes both splits at their own size into RAM before anything trains: its
        # loader alone is the floor of its compress footprint.
        code = (f"from vpns_deploy.data import load_splits; s = load_splits('imagefolder:{folder}'); "
                "print(tuple(s.train.images.shape), tuple(s.test.images.shape))")
        old_cmd = [sys.executable, "-c", code]
        print(f"  old (in {old}): {shlex.join(old_cmd)}", flush=True)
        result["old_loader"] = {"command": old_cmd, "cwd": str(old), "commit": OLD_DATA_COMMIT,
                                **peak_memory(old_cmd, old, env)}
    return result


def _fresh(run: Path) -> None:
    """Remove the bench's own earlier run: `compress` skips a finished run with the same settings (even
    with --overwrite), so without this a timed run would report the earlier run's seconds."""
    shutil.rmtree(run, ignore_errors=True)


def epoch_time(cifar_tar: Path, model: Path, work: Path, old: Path | None, batch: int, repeats: int = 1) -> dict:
    """ResNet-20 on CIFAR-10-JPEG: one HYDRA mask epoch, before and after, the same 50,000 images.

    Each design first runs once untimed (it fills the decoded-tensor cache), then `repeats` timed runs
    each, interleaved old, new, new, old, old, new, ... so neither design always runs first; the
    reported train_seconds is the median of a design's timed runs (every run is kept in `runs`)."""
    env = {**os.environ, "VPNS_DEPLOY_CACHE": str(work / "cache")}
    common = [str(model), "--arch", "cifar_resnet20", "--data", f"tar:{cifar_tar}", "--method", "hydra",
              "--epochs-mask", "1", "--epochs-tune", "0", "--batch-size", str(batch), "--device", "cpu", "--quiet",
              "--overwrite"]
    out: dict = {}
    designs = {"new": (ROOT, [EXE, "compress", *common, "--val-fraction", "0", "--out", str(work / "epoch-new")])}
    if old is not None:
        designs = {"old": (old, [sys.executable, "-m", "vpns_deploy.cli", "compress", *common,
                                 "--out", str(work / "epoch-old")]), **designs}
    names = list(designs)
    order = [(name, "warm-cache") for name in names]
    for r in range(repeats):
        order += [(name, f"timed {r + 1}") for name in (names if r % 2 == 0 else names[::-1])]
    timed: dict[str, list[dict]] = {name: [] for name in names}
    for name, attempt in order:
        cwd, cmd = designs[name]
        if name in out:  # failed before
            continue
        print(f"  {name} ({attempt}): {shlex.join(cmd)}", flush=True)
        _fresh(Path(cmd[cmd.index("--out") + 1]))
        res = peak_memory(cmd, cwd, env)
        if res["returncode"] != 0:
            out[name] = res
            continue
        if attempt == "warm-cache":
            continue
        manifest = json.loads((Path(cmd[cmd.index("--out") + 1]) / "manifest.json").read_text())
        ep = manifest["metrics"]["epochs"][0]
        timed[name].append({"train_seconds": ep["train_seconds"], "eval_seconds": ep["eval_seconds"],
                            "images_seen": ep["images_seen"], "train_images": manifest["data"]["train_images"],
                            "attempt": attempt, **res})
        print(f"    {name} {attempt}: {ep['train_seconds']:.1f} s train, {res['minor_faults']} minor faults", flush=True)
    for name, runs in timed.items():
        if name in out or not runs:
            continue
        mid = sorted(runs, key=lambda r: r["train_seconds"])[(len(runs) - 1) // 2]  # the (lower) median run
        cwd, cmd = designs[name]
        out[name] = {"command": cmd, "cwd": str(cwd), **mid,
                     "train_seconds_runs": [r["train_seconds"] for r in runs], "runs": runs}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="training JPEGs to generate")
    p.add_argument("--side", type=int, default=256, help="side of the generated JPEGs (px)")
    p.add_argument("--sizes", default="32,128,224", help="network input sizes for the throughput part")
    p.add_argument("--workers", default="0,1,2", help="worker counts for the throughput part")
    p.add_argument("--throughput-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64, help="throughput and compress batch size")
    p.add_argument("--rss-size", type=int, default=32, help="--input-size of the measured compress epoch")
    p.add_argument("--rss-workers", type=int, default=1)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--cifar-tar", type=Path, help="CIFAR-10-JPEG tar for the epoch-time part")
    p.add_argument("--model", type=Path, help="ResNet-20 CIFAR-10 state dict for the epoch-time part")
    p.add_argument("--epoch-time-only", action="store_true")
    p.add_argument("--epoch-repeats", type=int, default=1,
                   help="timed epochs per design, interleaved (old, new, new, old, ...); the median is reported")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vpns-data-bench")
    p.add_argument("--out", type=Path, help="JSON to write (default bench/results/data_pipeline.json; "
                   "--epoch-time-only replaces its epoch part and keeps the rest)")
    args = p.parse_args(argv)
    # the pre-change code runs from its own extracted tree (another cwd): paths must be absolute
    args.cifar_tar = args.cifar_tar.resolve() if args.cifar_tar else None
    args.model = args.model.resolve() if args.model else None
    if args.out is None:
        args.out = ROOT / "bench" / "results" / "data_pipeline.json"
    if args.epoch_time_only and (args.cifar_tar is None or args.model is None):
        p.error("--epoch-time-only needs --cifar-tar and --model")
    return args


def _throughput_and_memory(args: argparse.Namespace, old: Path | None) -> dict:
    """Decode + augment images/s over sizes x workers, then one compress epoch's peak memory."""
    result: dict = {}
    t0 = time.perf_counter()
    folder = write_jpeg_folder(args.work / f"jpeg-{args.images}-{args.side}", args.images, args.side)
    print(f"folder: {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    throughput(folder, [int(args.sizes.split(",")[0])], [0], args.batch_size, args.batch_size, log=False)  # imports
    print("throughput (decode + resize + augment):", flush=True)
    result["throughput"] = throughput(folder, [int(s) for s in args.sizes.split(",")],
                                      [int(w) for w in args.workers.split(",")], args.throughput_images, args.batch_size)
    if not args.skip_rss:
        print("peak memory of one compress epoch:", flush=True)
        r = result["rss"] = rss(folder, args.work, args.images, args.side, args.rss_size, args.rss_workers, old,
                                args.batch_size)
        print(f"  new (streamed): peak PSS {r['new_stream']['peak_pss_mib']:.0f} MiB "
              f"(exit {r['new_stream']['returncode']}); old design holds {r['old_tensor_bytes'] / 2**20:.0f} MiB "
              "of images" + (f", its loader peaked at {r['old_loader']['peak_pss_mib']:.0f} MiB"
                             if "old_loader" in r else ""), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from pipelines.run_dir import now, versions
    from vpns_deploy.atomic import atomic_write_json

    args.work.mkdir(parents=True, exist_ok=True)
    command = shlex.join([sys.executable, "-m", "bench.data_pipeline", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}", flush=True)
    result: dict = {"command": command, "created": now(), "versions": versions(), "cpu_count": os.cpu_count(),
                    "images": args.images, "side": args.side}
    old = old_tree(OLD_DATA_COMMIT, args.work / f"old-{OLD_DATA_COMMIT[:10]}")
    if not args.epoch_time_only:
        result.update(_throughput_and_memory(args, old))
    if args.cifar_tar is not None and args.model is not None:
        print("ResNet-20 on CIFAR-10-JPEG, one epoch, before and after:", flush=True)
        result["epoch"] = epoch_time(args.cifar_tar, args.model, args.work, old, 256, args.epoch_repeats)
        for name, r in result["epoch"].items():
            if "train_seconds" in r:
                runs = ", ".join(f"{t:.1f}" for t in r["train_seconds_runs"])
                print(f"  {name}: {r['train_seconds']:.1f} s train (median of {runs}), {r['eval_seconds']:.1f} s eval",
                      flush=True)
    if args.epoch_time_only and args.out.is_file():  # the epoch part alone: the other parts are kept
        result = {**json.loads(args.out.read_text()), "epoch": result["epoch"],
                  "epoch_measured": {k: result[k] for k in ("command", "created", "versions", "cpu_count")}}
    atomic_write_json(args.out, result)
    print(f"saved {args.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
