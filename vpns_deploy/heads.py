"""Transfer heads: what to do when the model's classes are not the data's (--head keep|map|new).

keep: the head already outputs the data's classes. map: the source head is kept and the frequency
label mapping of shared/docs/VPNS.md §4 picks one source class per target class. new: the head is
replaced by a fresh C-way layer, trained alone for a short warm-up before stage 1 (which freezes
weights, so an untrained head could never learn there).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim import SGD

from vpns_deploy.config import HEAD_HELP, HEADS, OptimConfig  # noqa: F401 - HEAD_HELP: was defined here
from vpns_deploy.errors import UserError

if TYPE_CHECKING:
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.data.dataset import AugmentPolicy, ImageSet, Splits
    from vpns_deploy.models.checkpoint import LoadedModel
    from vpns_deploy.progress import Reporter
    from vpns_deploy.prompts import PromptedNet
    from vpns_deploy.trainer import EpochRecord

# Seed offset of the FLM and warm-up data streams, so they never replay the stages' own streams.
FLM_STREAM, WARMUP_STREAM = 101, 202


def logits_layer(net: nn.Module) -> tuple[str, nn.Module] | None:
    """The layer that produces the logits: the last Linear or Conv2d in module order.

    Covers Linear heads and conv heads (SqueezeNet's 1x1 classifier conv), where "the last
    nn.Linear" would pick nothing or a layer inside the backbone.
    """
    found = None
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            found = (name, module)
    return found


def head_outputs(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def head_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the logits layer (weight and bias)."""
    found = logits_layer(net)
    if found is None:
        return set()
    name, module = found
    return {f"{name}.{k}" for k, _ in module.named_parameters(recurse=False)}


def checkpoint_classes(net: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """The class count of sd's head when the head is the only part of sd that does not fit net
    (same keys, shapes differ only in the logits layer's output dimension); None otherwise."""
    own = net.state_dict()
    if {k for k in own if not k.endswith("num_batches_tracked")} - set(sd) or set(sd) - set(own):
        return None
    wrong = {k for k in sd if own[k].shape != sd[k].shape}
    keys = head_keys(net)
    if not wrong or not wrong <= keys:
        return None
    name = next(k for k in keys if k.endswith(".weight"))
    if own[name].shape[1:] != sd[name].shape[1:]:
        return None
    return int(sd[name].shape[0])


def mismatch_error(source: int, target: int, what: str = "the model's head") -> UserError:
    """The one-line error for a class-count mismatch under --head keep."""
    fix = (f"pass --head map (keeps the source head and maps each data class to one of its {source} classes) "
           f"or --head new (a fresh {target}-way head, warmed up before stage 1)")
    if source < target:
        fix = f"pass --head new (a fresh {target}-way head; --head map needs at least {target} source classes)"
    return UserError(f"class-count mismatch: {what} has {source} outputs but the data has {target} classes", fix)


def fresh_head(old: nn.Module, num_classes: int) -> nn.Module:
    """A new layer of the old head's kind and input width, with num_classes outputs."""
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    assert isinstance(old, nn.Conv2d)
    return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                     bias=old.bias is not None)


def replace_head(net: nn.Module, num_classes: int, seed: int) -> str:
    """Swap the logits layer for a fresh one (seeded init); returns its module name."""
    found = logits_layer(net)
    if found is None:
        raise UserError("--head new: the model has no Linear or Conv2d layer that produces its logits",
                        "use --head keep with a matching model")
    name, old = found
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = fresh_head(old, num_classes).to(old.weight.device, old.weight.dtype)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return name


def check_head(loaded: "LoadedModel", head: str, data_classes: int) -> None:
    """The head choice fits the model and the data, or a one-line error before anything runs."""
    if head not in HEADS:
        raise UserError(f"unknown --head {head!r}", f"choose one of {', '.join(HEADS)}")
    source = loaded.num_classes
    if head == "keep" and source != data_classes:
        raise mismatch_error(source, data_classes)
    if head == "map" and source < data_classes:
        raise UserError(
            f"--head map needs at least as many source classes as data classes: the model's head has {source}, "
            f"the data {data_classes}",
            f"pass --head new (a fresh {data_classes}-way head)",
        )


# --- frequency label mapping (VPNS.md §4) -------------------------------------------------------------

def greedy_one_to_one(counts: torch.Tensor) -> torch.Tensor:
    """seq[j] = source row mapped to target column j: repeatedly take the global maximum of the count
    matrix (ties: the first in flat, row-major order), then retire its row and column (set to -1)."""
    counts = counts.clone().to(torch.float64)
    n_source, n_target = counts.shape
    if n_source < n_target:
        raise ValueError(f"{n_source} source classes cannot map one-to-one onto {n_target} targets")
    seq = torch.full((n_target,), -1, dtype=torch.long)
    for _ in range(n_target):
        flat = int(torch.argmax(counts))  # torch returns the first maximal index
        i, j = divmod(flat, n_target)
        seq[j] = i
        counts[i, :] = -1
        counts[:, j] = -1
    return seq


@torch.no_grad()
def prediction_counts(model: "PromptedNet", train: "ImageSet", augment: "AugmentPolicy | None", batch_size: int,
                      device: torch.device, seed: int) -> torch.Tensor:
    """count[source i, target j]: target-j training images (augmented) the network predicts as i.

    Eval mode, no prompt (the zero prompt), raw source logits (no label map yet); its own seeded
    stream, so the stages' data order is untouched and a rerun gives the same counts.
    """
    from vpns_deploy.data.batches import train_batches

    was_training = model.training
    model.eval()
    counts: torch.Tensor | None = None
    gen = torch.Generator().manual_seed(seed * 1000 + FLM_STREAM)
    for x, y in train_batches(train, batch_size, gen, device, augment):
        logits = model(x, prompted=False, mapped=False)
        if counts is None:
            counts = torch.zeros(logits.shape[1], train.num_classes, dtype=torch.long)
        pred = logits.argmax(1).cpu()
        counts.index_put_((pred, y.cpu()), torch.ones_like(pred), accumulate=True)
    model.train(was_training)
    assert counts is not None, "empty training set"
    return counts


def frequency_label_map(model: "PromptedNet", train: "ImageSet", augment: "AugmentPolicy | None", batch_size: int,
                        device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq, counts): the FLM sequence over the augmented training set, and the counts it came from."""
    counts = prediction_counts(model, train, augment, batch_size, device, seed)
    return greedy_one_to_one(counts), counts


def source_class_names(num_source: int) -> tuple[list[str] | None, str | None]:
    """Names of the source classes where they can be known: a 1000-way head is taken as ImageNet-1k."""
    if num_source != 1000:
        return None, None
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"]), "ImageNet-1k (assumed from the 1000-way head)"


def label_map_record(seq: torch.Tensor, counts: torch.Tensor, target_names: list[str]) -> dict:
    """The manifest's record of a frozen label map: per target class its source index (and name)."""
    names, names_from = source_class_names(int(counts.shape[0]))
    per_class = counts.sum(0)
    rows = []
    for j, i in enumerate(seq.tolist()):
        row = {"target": j, "target_name": target_names[j], "source": i,
               "images": int(counts[i, j]), "of": int(per_class[j])}
        if names is not None:
            row["source_name"] = names[i]
        rows.append(row)
    return {"kind": "frequency", "source_classes": int(counts.shape[0]), "source_names": names_from,
            "computed_on": "masked network after the initial mask, zero prompt, augmented training set, eval mode",
            "seq": seq.tolist(), "map": rows}


# --- new head: warm-up ---------------------------------------------------------------------------------

def warm_up_head(loaded: "LoadedModel", splits: "Splits", cfg: "CompressConfig", device: torch.device,
                 reporter: "Reporter") -> list["EpochRecord"]:
    """Train only the fresh head (SGD, cosine) on augmented batches, everything else frozen.

    BN running statistics update as in stage 1. Runs before the masks exist, so the initial mask
    sees the trained head. Deterministic (own seeded stream), so a resumed run repeats it exactly.
    """
    from vpns_deploy.prompts import PromptedNet
    from vpns_deploy.schedules import cosine
    from vpns_deploy.trainer import PLAIN, StagePlan, run_stage, stream_generators

    net = loaded.net.to(device)
    name, head = logits_layer(net)  # type: ignore[misc]
    for p in net.parameters():
        p.requires_grad_(False)
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    o, epochs = cfg.optim, cfg.head_warmup_epochs
    opt = SGD(params, lr=o.lr_head, momentum=o.momentum, weight_decay=o.wd_tune)
    plan = StagePlan("head", epochs, [(opt, cosine(opt, epochs))], (PLAIN,),
                     describe={"trains": f"the new head ({name}) only", "frozen": "everything else",
                               "passes": [PLAIN], "lr_head": o.lr_head})
    model = PromptedNet(net, loaded.inputs, None).to(device)
    gens = stream_generators(cfg.seed * 1000 + WARMUP_STREAM)
    history = run_stage(model, plan, splits, cfg.batch_size, device, cfg.seed, reporter, gens=gens)
    for p in net.parameters():
        p.requires_grad_(True)
    return history


def set_label_map(model: "PromptedNet", splits: "Splits", cfg: "CompressConfig", device: torch.device,
                  reporter: "Reporter") -> dict:
    """Compute the FLM on model as it stands (masked, zero prompt), freeze it into model.label_map,
    and return its manifest record."""
    seq, counts = frequency_label_map(model, splits.train, splits.augment, cfg.batch_size, device, cfg.seed)
    assert model.label_map is not None, "PromptedNet was built without a label-map buffer"
    model.label_map.copy_(seq.to(model.label_map.device))
    record = label_map_record(seq, counts, list(splits.train.classes))
    reporter.line(label_map_line(record))
    return record


def label_map_line(record: dict) -> str:
    """What the user reads about a frozen frequency label map."""
    hits, seen = sum(r["images"] for r in record["map"]), sum(r["of"] for r in record["map"])
    return (f"label map (frequency, {record['source_classes']} -> {len(record['seq'])} classes): "
            f"{hits / max(1, seen):.1%} of training images fall on their class's source")


# --- what compress does with the head, before and after the method runs --------------------------------

def prepare_head(loaded: "LoadedModel", cfg: "CompressConfig", data_classes: int,
                 num_classes_given: int | None = None) -> int:
    """Check the head choice against model and data (one-line errors), and for --head new put the
    fresh data-sized head in place (seeded), so everything after sees the network it will train.
    Returns the checkpoint head's class count."""
    if cfg.head != "keep" and num_classes_given is not None and num_classes_given != loaded.num_classes:
        raise UserError(f"--num-classes {num_classes_given} but the checkpoint's head has {loaded.num_classes} outputs",
                        "leave --num-classes out (it is read from the checkpoint)")
    check_head(loaded, cfg.head, data_classes)
    source = loaded.num_classes
    if cfg.head == "new":
        replace_head(loaded.net, data_classes, cfg.seed)
        loaded.num_classes = data_classes
    return source


def dense_label_map(net: nn.Module, loaded: "LoadedModel", splits: "Splits", cfg: "CompressConfig",
                    device: torch.device) -> tuple[torch.Tensor, dict]:
    """--head map: the dense network's own FLM (the reference computes it at start-up too), so the
    dense reference is measured with the mapping that suits it."""
    from vpns_deploy.prompts import PromptedNet

    model = PromptedNet(net, loaded.inputs, None).to(device)
    seq, counts = frequency_label_map(model, splits.train, splits.augment, cfg.batch_size, device, cfg.seed)
    record = label_map_record(seq, counts, list(splits.train.classes))
    record["computed_on"] = "dense network, no prompt, augmented training set, eval mode"
    return seq, record


def head_record(cfg: "CompressConfig", net: nn.Module, data_classes: int, warmup: list["EpochRecord"]) -> dict:
    """The manifest's account of the head: what was done and, for a new head, what its warm-up cost."""
    found = logits_layer(net)
    out: dict = {"kind": cfg.head, "layer": found[0] if found else None,
                 "outputs": head_outputs(found[1]) if found else None, "data_classes": data_classes}
    if cfg.head == "new":
        out["warmup"] = {"epochs": len(warmup), "optimizer_steps": sum(r.optimizer_steps for r in warmup),
                         "images_seen": sum(r.images_seen for r in warmup), "lr": cfg.optim.lr_head,
                         "optimizer": "SGD (momentum, wd_tune), cosine; only the new head trains",
                         "counted_in": "metrics.epochs (stage 'head')"}
    return out
