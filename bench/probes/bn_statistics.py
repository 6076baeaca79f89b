"""Which BatchNorm statistics should a finished run be evaluated with?

Loads a run's shipped network (no unpickling: the run's own state dicts) and its data exactly as
compress split them (the manifest's model, data spec, input overrides and configuration), then
measures top-1 (plain, and prompted where the run has a prompt) on the test split:
  saved        the statistics the run shipped with;
  augmented    re-estimated on --images training images drawn as training draws them (the product's
               way: plain batches augmented, prompted ones not);
  unaugmented  re-estimated on --images un-augmented training images;
  test         re-estimated on the test images themselves (diagnosis only: a bound on matched statistics).

    python -m bench.probes.bn_statistics /tmp/tp-product-nobn --test-subset 2000 \\
        --out bench/runs/tp_bn_diagnosis.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bench.probes import finish
from pipelines.compress_stage import prepare_inputs
from pipelines.load_run import load_run
from vpns_deploy.batchnorm import recalibrate_bn
from vpns_deploy.evaluate import top1_pair
from vpns_deploy.models.input_overrides import InputOverrides

CPU = torch.device("cpu")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=int, default=2000, help="training images per re-estimation")
    p.add_argument("--test-subset", type=int, default=None, help="class-balanced test images (default: the run's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    loaded = load_run(args.run)
    m = loaded.run.manifest
    cfg = m.compress_config()
    cfg = replace(cfg, test_subset=args.test_subset or cfg.test_subset)
    _, splits = prepare_inputs(Path(m.model.source), m.model.arch, m.data.spec, cfg,
                               inputs=InputOverrides.from_dict(m.model.input_overrides))
    out: dict = {"command": "python -m bench.probes.bn_statistics " + shlex.join(sys.argv[1:] if argv is None else argv),
                 "run": str(args.run), "test_images": len(splits.test), "images": args.images}
    model = loaded.prompted(True)
    has_prompt = model.prompt is not None
    passes = (True, False) if has_prompt else (False,)
    out["saved"] = top1_pair(model, splits.test, CPU, has_prompt)
    for name, data, policy in (("augmented", splits.train, splits.augment), ("unaugmented", splits.train, None),
                               ("test", splits.test, None)):
        recalibrate_bn(model, data, args.images, args.batch_size, CPU, cfg.seed, passes, policy)
        out[name] = top1_pair(model, splits.test, CPU, has_prompt)
        print(name, out[name], flush=True)
    print(json.dumps(out), flush=True)
    return finish(args.out, out)


if __name__ == "__main__":
    main()
