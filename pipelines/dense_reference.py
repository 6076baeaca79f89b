"""The dense reference a compress run is compared with, measured before any mask, and what it is.

With --head new the network as given is a backbone whose fresh head trained for a few steps: a
compressed model fine-tuned for whole stages easily passes it, which says nothing about what pruning
cost. So the run says plainly what its reference is (manifest, summary, report), and
--dense-reference finetune trains a copy of the dense network, every weight, for as many optimiser
steps as the compressed model gets: the fair comparison, at about the run's own cost again.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from pipelines.compress_record import DenseReference
from vpns_deploy.baseline_check import baseline_batches, measure_baseline
from vpns_deploy.compress import dense_finetune
from vpns_deploy.config import CompressConfig
from vpns_deploy.data import Splits
from vpns_deploy.data.batches import num_batches
from vpns_deploy.evaluate import EVAL_BATCH, top1
from vpns_deploy.heads import dense_label_map, warm_up_head
from vpns_deploy.models import LoadedModel
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet
from vpns_deploy.run_work import compressed_steps, dense_finetune_epochs


def reference_record(cfg: CompressConfig, warmup_steps: int, finetune_steps: int, compressed: int) -> dict:
    """{kind, label (short, for table headers), text (one sentence)}: what the dense reference is."""
    start = (f"backbone + new head warmed up for {warmup_steps} steps" if cfg.head == "new"
             else "the model as given" + (" with its own frequency label map" if cfg.head == "map" else ""))
    if cfg.dense_reference == "finetune":
        return {"kind": "finetune", "label": "dense, fine-tuned",
                "text": f"{start}, then fine-tuned (all weights) for {finetune_steps} optimiser steps "
                        f"(the compressed model: {compressed})",
                "optimizer_steps": finetune_steps}
    return {"kind": "as-given", "label": "dense, head warm-up only" if cfg.head == "new" else "dense, as given",
            "text": f"{start}, not fine-tuned", "optimizer_steps": 0}


def _eval_task(reporter: Reporter, what: str, batches: int):
    return reporter.task(what, batches, EVAL_BATCH, kind="forward", announce=True)


def dense_reference(loaded: LoadedModel, splits: Splits, cfg: CompressConfig, device: torch.device,
                    reporter: Reporter) -> DenseReference:
    """The dense network (after a --head new warm-up; fine-tuned with --dense-reference finetune), its
    test top-1 and the simplest baseline's (baseline_check, on the network as given); says what runs."""
    warmup = warm_up_head(loaded, splits, cfg, device, reporter) if cfg.head == "new" else []  # before the masks
    given = copy.deepcopy(loaded.net).to(device).eval()
    finetune, dense = [], given
    if cfg.dense_reference == "finetune":
        dense = copy.deepcopy(given)
        finetune = dense_finetune(dataclasses.replace(loaded, net=dense), splits, cfg,
                                  dense_finetune_epochs(cfg, len(splits.train)), device, reporter)
        dense.eval()
    dense_map, dense_map_record = (dense_label_map(dense, loaded, splits, cfg, device) if cfg.head == "map"
                                   else (None, None))
    with _eval_task(reporter, "dense reference, test top-1", num_batches(len(splits.test), EVAL_BATCH)) as bar:
        dense_top1 = top1(PromptedNet(dense, loaded.inputs, None, dense_map).to(device), splits.test, device,
                          prompted=False, on_batch=bar.advance)
    with _eval_task(reporter, "baseline (magnitude mask, no training)", baseline_batches(splits, cfg)) as bar:
        baseline = measure_baseline(given, loaded, dense_map, splits, cfg, device, on_batch=bar.advance)
    record = reference_record(cfg, sum(r.optimizer_steps for r in warmup), sum(r.optimizer_steps for r in finetune),
                              compressed_steps(cfg, len(splits.train)))
    record["epochs"] = [r.to_dict() for r in finetune]
    val_text = f" / {len(splits.val)} validation" if splits.val is not None else ""
    reporter.line(
        f"{cfg.method} {cfg.mode} {cfg.target_text} on {device}: {len(splits.train)} train{val_text} / "
        f"{len(splits.test)} test images ({data_text(splits)}), dense top-1 {dense_top1:.2%} "
        f"({record['text']}), magnitude mask without training {baseline.test_top1:.2%}"
    )
    return DenseReference(dense, dense_top1, dense_map, dense_map_record, warmup, baseline, record)


def data_text(splits: Splits) -> str:
    d = splits.details
    size = f"{d['input_size']} px" if d.get("input_size") else "own size"
    where = "in RAM" if splits.storage == "memory" else f"streamed, {d.get('workers', 0)} workers"
    return f"{size}, {where}"
