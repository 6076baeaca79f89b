"""Every default of a compression run, in one place (CLI, recipes and tests read them from here).

Over 300 lines on purpose: each default sits beside the measurement that chose it, and one file is the
one source the CLI, recipes and manifests read; CompressConfig.__post_init__ (~60 lines) is one check
per field, in the order the errors should be met.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from vpns_deploy.sparsity.methods import METHOD_REGISTRY, get_method
from vpns_deploy.sparsity.modes import parse_mode  # noqa: F401 - read from here by pipelines/

# The methods are sparsity/methods.py's registry (one source); the Literal lets recipes name the choices.
METHODS: tuple[str, ...] = METHOD_REGISTRY.names()
Method = Literal[METHODS]  # type: ignore[valid-type]
# Methods whose mask is fixed before training (no mask-finding stage): their whole epoch budget goes to
# fine-tuning.
FIXED_MASK_METHODS: tuple[str, ...] = tuple(m.name for m in METHOD_REGISTRY if m.fixed_mask)
PromptKind = Literal["pad", "expand", "fix", "random"]
# Modes (sparsity/modes.py): unstructured: global top-k over weights; channel: whole coupled channel
# groups (then compacted); N:M (e.g. 2:4): N of every M consecutive weights along input channels.
PROMPT_KINDS: tuple[str, ...] = ("pad", "expand", "fix", "random")
HEADS: tuple[str, ...] = ("keep", "map", "new")  # see vpns_deploy/heads.py
LABEL_MAP_ON: tuple[str, ...] = ("dense", "masked")  # --head map: the network the label map is computed on
PROMPT_TRAINS_IN: tuple[str, ...] = ("both", "mask", "tune")  # the stages whose optimisers move the prompt



def cli(default: object, help: str, details: str = "") -> object:
    """A field that is also a command-line option: its help text sits beside its default, and
    pipelines/cli_options.py builds the option from both (so `compress` and `sweep` cannot drift).
    help: the one line `--help` shows (it must read at 80 columns); details: the full explanation,
    rendered into docs/OPTIONS.md (pipelines/cli_doc.py) beside it."""
    return field(default=default, metadata={"help": help, "details": details})


# INT8 calibration: class-balanced training images run through the whole deployed graph.
DEFAULT_CALIB_IMAGES = 512
# A lower-precision graph ships only while its test top-1 is at most this many points below its fp32
# graph's (export/precision_gate.py): the range post-training quantisation holds on CNNs (ResNet-50
# loses about 0.6 points in NVIDIA's PTQ example, TF-Lite's int8 EfficientNet-Lite well under one).
DEFAULT_MAX_PRECISION_DROP = 1.0

# Paper seeds are 7, 9 and 17 (shared/docs/VPNS.md §1); the first is the default.
DEFAULT_SEED = 7

# Validation split: this fraction of the training split (class-balanced) is held out to judge every
# epoch and every choice the tool makes; the test split only measures. 0.1 keeps 90 % of the data for
# training (CIFAR-10: 45,000 / 5,000) while a top-1 near 90 % on 5,000 images has a binomial standard
# error of 0.42 points (sqrt(0.9 * 0.1 / 5000)). Its seed is fixed, so runs with different --seed
# values are judged on the same images.
DEFAULT_VAL_FRACTION = 0.1
VAL_SEED = 0
# Decoded images are held in RAM when the split fits this fraction of physical memory (CIFAR-10 at
# 32 px: 184 MB); larger sets are streamed from their files by DataLoader workers. 0 always streams.
DEFAULT_MEMORY_BUDGET = 0.25
# Training augmentation by input side (vpns_deploy/data/geometry.py). At or below SMALL_INPUT_MAX px:
# random crop from a copy zero-padded by side // 8, plus flip (the reference's CIFAR pad-4 crop at 32).
# Above: images stored at LARGE_RESIZE_RATIO x the side, random crop of the side, plus flip: the VPNs
# paper's own recipe for CIFAR upsampled to 224 (Resize 9/8 + RandomCrop + flip). Chosen over
# RandomResizedCrop, whose 8-100 % area crops regularise ImageNet training from scratch, not a few
# epochs of mask learning on frozen pretrained weights; it also keeps the in-memory batch-level crop.
SMALL_INPUT_MAX = 64
LARGE_RESIZE_RATIO = 9 / 8
# BatchNorm statistics are re-estimated after every epoch on this many training images, drawn as in
# training (vpns_deploy/batchnorm.py: un-augmented ones cost a ResNet-56 channel cell 4 points), so
# each epoch is judged, and the model shipped, with statistics of the network as masked now. ResNet-20, 90 %, 2,000 images, 1 + 1 epochs: the running averages left by
# 8-16 steps still described the dense network, and the starting mask scored 10 % (chance) on
# validation; re-estimated, 32-37 % (git show 60685c4:bench/probes/init_mask.py; git show 6e83c8b:docs/benchmarks.md).
DEFAULT_BN_IMAGES = 2000
CHANNEL_INITS = ("group_norm", "l1")
SCORE_OPTIMIZERS = ("adam", "sgd")
CHANNEL_WIDTHS = ("learned", "init")
CHANNEL_SPLITS = ("tune", "even")
# channel_split "tune": stage 1 runs this fraction of one epoch's batches, which trainer.epoch_batches
# rounds up to exactly one batch at any data set size.
ONE_BATCH_FRACTION = 1e-9
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# What a run compares its compressed model with (pipelines/compress_stage.py): the network as given
# (after a --head new warm-up), or that network fine-tuned, every weight, for as many optimiser steps as
# the compressed model's stages take. "as-given" is the default: the fine-tune costs about as long again
# as the run itself.
DENSE_REFERENCES: tuple[str, ...] = ("as-given", "finetune")
# What --speedup counts (vpns_deploy/latency_budget.py): "latency", the compacted network's measured speedup
# over the dense one on the target runtime at the target batch; "macs", the MACs reduction (a proxy: the
# same 2.00x MACs ran 1.68x to 2.94x faster across networks and batch sizes on ONNX Runtime, measured).
BUDGETS_BY: tuple[str, ...] = ("latency", "macs")
# Runtimes a latency budget can be measured on (export/target_runtime.py opens each).
TARGET_RUNTIMES: tuple[str, ...] = ("ort-cpu", "ort-cuda", "tensorrt")
# Preflight (vpns_deploy/preflight.py): a run whose projected peak memory exceeds this fraction of the
# memory still available is refused before anything is written. The rest is room for what the
# projection leaves out: the allocator's fragmentation, data-loading workers, other processes' growth.
PREFLIGHT_MEMORY_MARGIN = 0.9
# Bytes of memory the preflight takes as available on the CPU instead of /proc/meminfo (tests).
PREFLIGHT_MEMORY_ENV = "VPNS_DEPLOY_MEMORY_AVAILABLE"
AMP_HELP = ("Mixed precision of training steps: bf16, fp16 (with loss scaling) or off; auto: bf16 on a CUDA GPU "
            "that supports it, fp16 on one that does not, off on the CPU. Masks, top-k and optimiser steps stay fp32.")

# Per-weight score learning rate when none is given. Adam moves a score by about its lr per step, so
# what a stage can change is lr x steps. The reference's 1e-4 fits its 30-epoch stage 1 (11,760 steps
# on CIFAR at batch 256); over 392 steps (1-2 epochs) it barely leaves the magnitude-ranked start,
# and 1e-3 measured about +3 points for both HYDRA and VPNs (ResNet-20, 90 %, two seeds,
# git show 6e83c8b:docs/benchmarks.md). So the default keeps lr x steps at 0.4 (1e-3 over 392 steps), never below the
# reference's rate and never above 1e-3: on a few dozen steps a larger rate lets the noisy gradients of
# a handful of batches reshuffle the mask (ResNet-20, 90 %, 2,000 images, 16 stage-1 steps: validation
# top-1 after stage 2 30.5 % at 1e-2, 59.5 % at 1e-3, 56.0 % at 1e-4; git show 6e83c8b:docs/benchmarks.md).
REFERENCE_LR_SCORES = 1e-4
SCORE_TRAVEL = 0.4
MAX_LR_SCORES = 1e-3
SCORE_LR_RULE = f"max({REFERENCE_LR_SCORES:g}, min({MAX_LR_SCORES:g}, {SCORE_TRAVEL:g} / stage-1 optimiser steps))"


def auto_lr_scores(steps: int) -> float:
    """The default score learning rate for a stage 1 of `steps` optimiser steps (SCORE_LR_RULE)."""
    return max(REFERENCE_LR_SCORES, min(MAX_LR_SCORES, SCORE_TRAVEL / max(steps, 1)))


# Numeric fields that are also command-line options (errors name the option; others the recipe key).
CLI_NUMBERS = frozenset({"sparsity", "speedup", "lr_scores", "epochs_mask", "epochs_tune", "batch_size", "pad",
                         "seed", "train_subset", "test_subset", "epochs", "lr", "val_fraction", "workers",
                         "memory_budget", "bn_images", "target_batch", "max_drop"})


def check_choices(obj: object, table: tuple[tuple[str, str, tuple[str, ...]], ...]) -> None:
    """(field, how the user spells it, its choices): an unknown value is one error naming the choices."""
    from vpns_deploy.errors import UserError

    for name, label, choices in table:
        value = getattr(obj, name)
        if value not in choices:
            raise UserError(f"unknown {label} {value!r}", f"choose one of {', '.join(choices)}")


def check_numbers(obj: object) -> None:
    """One range check for every numeric field of a config dataclass, driven by the field's name.

    Every float must be finite (nan/inf are refused everywhere); learning rates (lr*) > 0; weight
    decays (wd*, *weight_decay) >= 0; momentum in [0, 1). Runs before anything trains, so a bad
    value in a recipe or on the command line costs nothing.
    """
    import math
    from dataclasses import fields

    from vpns_deploy.errors import UserError

    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = f"--{f.name.replace('_', '-')}" if f.name in CLI_NUMBERS else f.name
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}", "pass a finite value")
        if f.name.startswith("lr") and not value > 0:
            raise UserError(f"{flag} is a learning rate and must be > 0, got {value}", "e.g. 0.01")
        if (f.name.startswith("wd") or f.name.endswith("weight_decay")) and value < 0:
            raise UserError(f"{flag} is a weight decay and must be >= 0, got {value}", "e.g. 1e-4, or 0 for none")
        if f.name == "momentum" and not 0 <= value < 1:
            raise UserError(f"{flag} must lie in [0, 1), got {value}", "e.g. 0.9")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers of shared/docs/VPNS.md §1 and §9 (CIFAR adaptation)."""

    lr_scores: float | None = cli(None, f"Stage-1 score learning rate (Adam). Default: {SCORE_LR_RULE}.", (  # Adam, coupled weight decay, cosine per epoch; None: SCORE_LR_RULE
        "Adam learning rate of the per-weight scores in stage 1 (unstructured, N:M). Default: "
        f"{SCORE_LR_RULE}, i.e. the reference's 1e-4 for 30-epoch stages and more for short ones (1e-3 over "
        "392 steps gave HYDRA and VPNs about +3 points on ResNet-20 at 90 %, measured)."))
    # "adam" (VPNs' and our HYDRA's) or "sgd": the paper's own HYDRA baseline (SGD 0.01, momentum 0.9,
    # on the scores), kept selectable so a table can show how much of a margin is the optimiser.
    score_optimizer: str = "adam"
    # Channel scores start at their group's L1 importance over its mean (about 1), so they need a
    # larger step than per-weight scores (about sqrt(6/fan_in)) to reorder within a short stage;
    # the dev branch (VPNS.md §6) uses Adam 1.0 on Kaiming-initialised channel scores.
    lr_channel_scores: float = 1e-2
    wd_scores: float = 1e-4
    lr_prompt_mask: float = 1e-4  # Adam in stage 1, multistep x0.1 at 50 % and 72 % of the stage
    wd_prompt_mask: float = 1e-4
    lr_prompt_tune: float = 0.01  # SGD in stage 2, cosine
    lr_weights: float = 0.01  # SGD in stage 2, cosine
    lr_head: float = 0.01  # SGD (momentum, wd_tune), cosine: the --head new warm-up, fresh head only
    momentum: float = 0.9
    wd_tune: float = 1e-4

    def __post_init__(self) -> None:
        from vpns_deploy.errors import UserError

        if self.score_optimizer not in SCORE_OPTIMIZERS:
            raise UserError(f"unknown score optimizer {self.score_optimizer!r}",
                            f"use one of {', '.join(SCORE_OPTIMIZERS)}")
        if self.lr_scores is not None and not 0 < self.lr_scores < float("inf"):
            raise UserError(f"--lr-scores must be > 0 (recipe: compress.optim.lr_scores), got {self.lr_scores}",
                            "pass e.g. --lr-scores 1e-3, or leave it out")
        check_numbers(self)


HEAD_HELP = (
    "keep: the model's head already has the data's classes (default). map: keep the source head (e.g. "
    "ImageNet's 1000 classes) and map each data class to one source class by frequency label mapping "
    "(greedy one-to-one on the counts of the network's predictions over the augmented training set with "
    "the zero prompt, computed on the dense network before the initial mask (label_map_on = masked: after "
    "it, as the reference), then frozen; needs at least as many "
    "source as data classes); the mapping is folded into the exported graph. new: replace the head by a "
    "fresh layer for the data's classes, trained alone (other weights frozen) for --head-warmup-epochs "
    f"before stage 1 (SGD {OptimConfig.lr_head:g}, cosine; recipes: compress.optim.lr_head); its optimiser steps "
    "count in the run's budget."
)


@dataclass(frozen=True)
class CompressConfig:
    """One compression run: what to prune, how, and on what budget."""

    method: Method = cli("vpns", f"One of {', '.join(METHODS)}.", " ".join(
        f"{m.name}: {m.description}" for m in METHOD_REGISTRY))
    mode: str = cli("unstructured", "unstructured, channel (physically smaller, faster everywhere) or N:M such as 2:4.", (
        "unstructured (global top-k over weights); channel (whole coupled channel groups, then physically "
        "removed: faster on every runtime); N:M such as 2:4 (N of every M input-channel weights: sparse tensor "
        "cores)."))
    sparsity: float = cli(0.9, "Fraction removed, in (0, 1): of prunable weights, or of channels (--mode channel).", "Fraction removed, in (0, 1): of prunable weights (unstructured) or of prunable "
                               "channels (channel). Unused by N:M.")
    speedup: float | None = cli(None, "--mode channel: how many times faster than dense, instead of --sparsity.", (  # channel mode only: overrides sparsity
        "Channel mode: how many times faster the compressed network must run than the dense one, replacing "
        "--sparsity. With --budget-by latency (default) it is measured: the deployed graphs (fp32) on "
        "--target-runtime at --target-batch, the channel budget searched until the compacted network meets it "
        "(within 5 %); with --budget-by macs it is a MACs reduction (2.0 halves the MACs). Unstructured and N:M "
        "sparsity keep every layer's shape, so no runtime here runs them faster: only channel mode can."))
    budget_by: str = cli("latency", "What --speedup counts: latency (measured on the target) or macs.", (
        "What --speedup counts. latency: the measured speedup of the compacted network over the dense one on "
        "--target-runtime at --target-batch (a few candidate budgets compacted, exported and timed, cached per "
        "machine, runtime, input size and batch). macs: the MACs reduction, not measured (a proxy: the same "
        "2x MACs ran 1.7x to 2.9x faster across networks and batch sizes)."))
    target_runtime: str = cli("ort-cpu", "Where --speedup is measured: ort-cpu, ort-cuda or tensorrt.", (
        "The runtime --speedup (with --budget-by latency) is measured on: ONNX Runtime on the CPU (ort-cpu) "
        "or a CUDA GPU (ort-cuda), or TensorRT where it is installed."))
    target_batch: int = cli(1, "Batch size --speedup is measured at.", (
        "Images per call when --speedup is measured: 1 for interactive use, the serving batch otherwise. "
        "Speedups differ by batch (the same network can be 2x faster at batch 1 and 1.8x at batch 64)."))
    # Seconds of timed calls per graph (dense and candidate, interleaved) for each candidate budget the
    # latency search measures (at least 3 calls each); at most latency_budget.MAX_CANDIDATES candidates.
    target_probe_seconds: float = 4.0
    max_drop: float | None = cli(None, "Accuracy budget: validation top-1 points below the dense reference.", (
        "The accuracy budget: validation top-1 points the compressed network may lose against the dense "
        "reference (see --dense-reference). A run over it finishes and says so (exit 0) with the point it "
        "reached; a lower --speedup or longer training is the way back into the budget."))
    channel_min_keep: float = 0.1  # channel mode: every group keeps at least this fraction
    # channel mode: kept channels per group in multiples of this. ONNX Runtime's CPU convs run 16-channel
    # blocks: ResNet-56 at 2x fewer MACs ran 1.96x faster with multiples of 16, 1.43x with 8 (measured).
    channel_round_to: int = 16
    # channel mode: where scores (VPNs, HYDRA) start. group_norm: the mask Torch-Pruning's iterative
    # group-norm pruner reaches at the budget (after a short fine-tune it beat our one-shot L1 ranking
    # 59.6 % to 22.4 % on ResNet-56 at 2x fewer MACs, measured); l1: one-shot L1 filter norm over mean.
    channel_init: str = "group_norm"
    # channel mode: "init": widths stay at the initial mask's, stage 1 re-picks which channels (per-group
    # top-k); "learned": stage 1 picks every group's width too (global top-k). ResNet-56, 2x fewer MACs,
    # 1 + 1 epochs: "init" 79.78 % vs Torch-Pruning + 2 epochs 77.69 %; "learned" emptied the residual
    # streams again (32 -> 16 channels) and trailed it (measured; git show 6e83c8b:docs/benchmarks.md).
    channel_widths: str = "init"
    # channel mode, methods that learn scores (VPNs, HYDRA): how the epochs split between the stages.
    # "tune": stage 1 runs one batch and stage 2 runs epochs_mask + epochs_tune epochs, the same
    # optimiser steps as "even" plus that batch. The scores start at Torch-Pruning's group-norm mask,
    # whose widths stage 1 keeps (channel_widths "init"), so stage 1 can only re-pick channels inside
    # groups, with the weights frozen at a network that scores ~21 % at 2x fewer MACs; its steps pay in
    # stage 2 instead. ResNet-56 at 2x fewer MACs, equal steps (docs/benchmarks.md, "Channel mode"):
    # 82.14 % vs 80.13 % for "even" at 1 + 1 epochs (mean of seeds 7 and 9), 83.88 % vs 82.20 % at
    # 2 + 2 (seed 7; Torch-Pruning + fine-tune 82.78 %).
    # "even": the paper's split, stage 1 for epochs_mask epochs (mask_batches_fraction of each).
    channel_split: str = "tune"
    # What to do with the model's head (vpns_deploy/heads.py): keep (classes match), map (frequency
    # label mapping onto the source head, shared/docs/VPNS.md §4) or new (fresh head + warm-up).
    head: str = cli("keep", "keep (the head has the data's classes), map (source classes mapped to them) or new.", HEAD_HELP)
    head_warmup_epochs: int = cli(1, "--head new: epochs that train only the fresh head, before stage 1.", (
        "--head new: epochs that train only the fresh head (SGD, cosine; recipes: compress.optim.lr_head) "
        "before stage 1, counted in the run's optimiser steps."))
    # --head map: which network the frequency label map is computed on. The paper computes it on the
    # masked network right after the initial mask (VPNS.md §4). Measured on EfficientNet-Lite0
    # (ImageNet) -> CIFAR-10 at 128 px (git show 60685c4:bench/probes/flm_mask.py, docs/benchmarks.md): under the initial
    # 70 % or 90 % mask the network predicts 1-2 ImageNet classes for every image, so the map is
    # arbitrary (chance top-1 before training), while the dense network's map gives 42.7 % top-1 with
    # no training at all. So the default is "dense"; "masked" is the paper's placement.
    label_map_on: str = "dense"
    # unstructured mode: a sparsity that would leave some layer without any weight (its output a
    # constant) is refused unless this is set; see masks.MaskSet.
    allow_empty_layers: bool = cli(False, "Accept a --sparsity that leaves some layer without any weight.", (
        "Unstructured mode: accept a --sparsity so high that some layer keeps no weight at all (its output "
        "becomes a constant). Refused without this."))
    epochs_mask: int = cli(30, "Stage-1 (mask finding) epochs (--mode channel: they go to stage 2).", (
        "Stage-1 (mask finding) epochs. Channel mode with VPNs or HYDRA: stage 1 runs one batch and these "
        "epochs go to stage 2 (measured better at equal steps; recipes: compress.channel_split = \"even\" "
        "restores the split)."))
    epochs_tune: int = cli(30, "Stage-2 (subnetwork tuning) epochs.")
    # Fraction of each stage-1 epoch's batches that stage 1 runs (1: all of them): how a run splits its
    # optimiser steps between mask finding and tuning finer than whole epochs, so a step budget can go to
    # the stage where it pays; recipes: compress.mask_batches_fraction.
    mask_batches_fraction: float = 1.0
    batch_size: int = cli(256, "Images per optimiser step.")
    prompt: PromptKind = cli("pad", "Visual prompt: pad (additive frame), expand, fix or random.", (
        "pad: additive frame (identity, zero init); expand: image zero-padded by --pad and the border learned "
        "(sigmoid); fix: top-left square (sigmoid); random: square at a random place per step (sigmoid; "
        "expected mask at evaluation)."))
    pad: int | None = cli(None, "Prompt width in pixels; default 7 % of the image side (2 px at 32 px).")
    # False: the zero-prompt control. The prompt stays exactly zero (nothing optimises it) while both
    # passes still run, so a comparison with VPNs isolates what the learned prompt itself adds.
    prompt_trainable: bool = True
    # Which stages move the prompt: both (VPNS.md §1-2), mask (stage 1 only) or tune (stage 2 only). The
    # issue-14 probe "which stage the prompt trains in" (bench/transfer.py vpns-p<stage>); the other stage
    # still runs both passes with the prompt as it stands.
    prompt_trains_in: str = "both"
    seed: int = cli(DEFAULT_SEED, "Seed of scores, data order and augmentation.")
    device: str = cli("auto", "auto (CUDA if present), cpu or cuda.")
    train_subset: int | None = cli(None, "Use N class-balanced training images (quick runs).")
    test_subset: int | None = cli(None, "Evaluate on N class-balanced test images (default: all).")
    val_fraction: float = cli(DEFAULT_VAL_FRACTION, "Training images held out for validation (it decides the prompt); 0: none.", (  # of the training split; 0: no validation split
        "Fraction of the training split held out (class-balanced, the same images for every --seed) as the "
        "validation split: it is evaluated after every epoch and decides whether the prompt ships; the test "
        "split is measured only at the end of a stage (of at least one epoch) and never chooses anything. 0: no validation split. "
        "With --train-subset N it is carved from the N images."))
    workers: int | None = cli(None, "Processes that decode streamed images. Default: CPU cores - 1, at most 8.", (  # None: data.loader.default_workers()
        "DataLoader processes that decode and augment streamed images. Default: the CPU cores minus one, at "
        "most 8 (0 on a single core). Never changes a result."))
    memory_budget: float = cli(DEFAULT_MEMORY_BUDGET, "Fraction of RAM decoded images may use; a larger data set is streamed.", (
        "Fraction of RAM the decoded images may take: a data set that fits is decoded once into memory (tar "
        "archives also cached on disk by sha256 and size); a larger one is streamed from its files by the "
        "workers. 0: always stream."))
    bn_images: int = cli(DEFAULT_BN_IMAGES, "Training images that re-estimate BatchNorm after every epoch; 0: never.", (
        "BatchNorm statistics are re-estimated after every epoch on this many training images (augmented as "
        "in training), "
        "so each epoch is judged, and the model shipped, with statistics of the network as masked now (short "
        "runs otherwise evaluate with the dense network's). 0: keep training's running averages."))
    # Off by default, measured (docs/benchmarks.md, "Over training budgets"; ResNet-20, equal optimiser steps): at 90 %
    # magnitude + fine-tune gained at every budget (+4.0 at 2,000 images to +0.8 at 50,000), but at 70 % on
    # 50,000 images it lost 3.5 points (82.81 vs 86.34) and at 50 % 4.2: the teacher is the user's network
    # before it saw this data (81 % on its test split), so a student that can pass it is pulled back to
    # it. VPNs and HYDRA gained at 2,000 images and lost up to 1.4 points from 10,000 on.
    distill: bool = cli(False, "Stage 2 also learns from the dense network's logits (distillation).", (
        "Stage 2 (and magnitude's fine-tune) learns from the dense network's logits: "
        "distill_alpha x T^2 x KL at temperature distill_temperature plus (1 - alpha) x cross-entropy. The "
        "teacher's forward passes cost time, not optimiser steps. Off unless given: it helps where the pruned "
        "network stays below the dense one (ResNet-20 at 90 %: +4 points at 2,000 images, +0.8 at 50,000) and "
        "costs where it can pass it (70 % on 50,000 images: -3.5), since the teacher never saw this data; "
        "useless with --head map or new."))
    distill_temperature: float = 4.0  # recipes: compress.distill_temperature
    distill_alpha: float = 0.5  # weight of the soft (teacher) term; recipes: compress.distill_alpha
    # Mixed precision of training steps (vpns_deploy/amp.py): auto = bf16 on CUDA GPUs that have it,
    # else fp16 with loss scaling; off on the CPU (no bf16/fp16 units on this project's CPUs).
    amp: str = cli("auto", "Mixed precision of training: auto, bf16, fp16 or off (auto: off on the CPU).", AMP_HELP)
    preflight: bool = cli(True, "Measure one training step first; stop early with settings that fit.", (
        "Before the run: measure one training step (time, peak memory) at small batches, print the projected "
        "run time and peak memory, and stop with settings that fit when the run would not fit in free memory."))
    dense_reference: str = cli("as-given", "What dense means: as-given, or finetune at the run's step budget.", (
        "What the run compares with. as-given: the model as given (with --head new: backbone plus the new "
        "head after its warm-up, not fine-tuned). finetune: that model fine-tuned, all weights, for as many "
        "optimiser steps as the compressed model gets (the fair reference; about doubles the run time)."))
    sync_bn: bool = cli(False, "Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm).", "Under torchrun on CUDA GPUs: BatchNorm statistics over the global batch "
                               "(SyncBatchNorm) instead of each GPU's share.")
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        from vpns_deploy.errors import UserError

        check_numbers(self)
        if not 0.0 < self.sparsity < 1.0:
            raise UserError(
                f"sparsity must lie strictly between 0 and 1, got {self.sparsity}",
                "pass e.g. --sparsity 0.9 (90 % of prunable weights removed)",
            )
        kind = parse_mode(self.mode)[0]
        if self.speedup is not None and self.mode != "channel":
            raise UserError(
                f"--speedup needs --mode channel: {self.mode} sparsity keeps every layer's shape, so no runtime "
                "here runs it faster (ONNX Runtime computes it dense; TensorRT speeds up only 2:4 on wide layers)",
                "pass --mode channel --speedup 2 (whole channels removed: faster everywhere), or --sparsity",
            )
        if self.speedup is not None and self.speedup <= 1.0:
            raise UserError(f"--speedup must be > 1, got {self.speedup}", "pass e.g. --speedup 2.0 (twice as fast)")
        if self.target_batch < 1:
            raise UserError(f"--target-batch must be >= 1, got {self.target_batch}", "e.g. 1, or your serving batch")
        if not 0.0 < self.target_probe_seconds < 600:
            raise UserError(f"target_probe_seconds must lie in (0, 600), got {self.target_probe_seconds}", "e.g. 4")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise UserError(f"--max-drop must lie in [0, 100] top-1 points, got {self.max_drop}", "e.g. 1.0")
        if not 0.0 < self.channel_min_keep <= 1.0:
            raise UserError(f"channel_min_keep must lie in (0, 1], got {self.channel_min_keep}", "e.g. 0.1")
        check_choices(self, (("channel_init", "channel_init", CHANNEL_INITS),
                             ("channel_widths", "channel_widths", CHANNEL_WIDTHS),
                             ("channel_split", "channel_split", CHANNEL_SPLITS), ("prompt", "prompt", PROMPT_KINDS),
                             ("head", "--head", HEADS), ("prompt_trains_in", "prompt_trains_in", PROMPT_TRAINS_IN),
                             ("label_map_on", "label_map_on", LABEL_MAP_ON), ("amp", "--amp", AMP_CHOICES),
                             ("dense_reference", "--dense-reference", DENSE_REFERENCES),
                             ("budget_by", "--budget-by", BUDGETS_BY),
                             ("target_runtime", "--target-runtime", TARGET_RUNTIMES)))
        if self.mode == "channel" and self.channel_split == "tune" and self.channel_widths == "learned":
            raise UserError("channel_widths \"learned\" needs channel_split \"even\": the widths are learned in "
                            "stage 1, which channel_split \"tune\" cuts to one batch",
                            "set compress.channel_split = \"even\" in the recipe")
        if self.dense_reference == "finetune" and self.head == "map":
            raise UserError("--dense-reference finetune needs --head keep or new: with --head map the source head "
                            "is kept, and fine-tuning it on the data's labels would train the wrong classes",
                            "pass --dense-reference as-given, or --head new")
        if self.channel_round_to < 1:
            raise UserError(f"channel_round_to must be >= 1, got {self.channel_round_to}", "e.g. 8")
        method = get_method(self.method)
        if self.epochs_mask < 0 or self.epochs_tune < 0:
            raise UserError("epoch counts must be >= 0", "pass --epochs-mask/--epochs-tune >= 0")
        method.check(kind, self.epochs_mask)
        if not 0.0 < self.mask_batches_fraction <= 1.0:
            raise UserError(f"mask_batches_fraction must lie in (0, 1], got {self.mask_batches_fraction}",
                            "e.g. 0.5: stage 1 runs half of every epoch's batches")
        if self.batch_size < 1:
            raise UserError("batch size must be >= 1", "pass --batch-size 256 or similar")
        if self.head_warmup_epochs < (1 if self.head == "new" else 0):
            raise UserError(f"--head-warmup-epochs must be >= 1 with --head new, got {self.head_warmup_epochs}",
                            "a fresh head must train before stage 1 freezes the weights; e.g. 1")
        if self.pad is not None and self.pad < 1:
            raise UserError(f"--pad must be >= 1, got {self.pad}", "pass e.g. --pad 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}",
                            "e.g. 0.1 (10 % of the training images), or 0 for no validation split")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}", "0 decodes in the training process")
        if not 0.0 <= self.memory_budget <= 1.0:
            raise UserError(f"--memory-budget must lie in [0, 1], got {self.memory_budget}",
                            "a fraction of RAM, e.g. 0.25; 0 always streams from the files")
        if self.distill_temperature <= 0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise UserError(f"distill_temperature must be > 0 and distill_alpha in [0, 1], got "
                            f"{self.distill_temperature} and {self.distill_alpha}", "e.g. 4.0 and 0.5")
        if self.bn_images < 0:
            raise UserError(f"bn_images must be >= 0, got {self.bn_images}", "e.g. 2000, or 0 to keep training's averages")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}", "or leave it out")

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(N, M) for an N:M mode, else None."""
        return parse_mode(self.mode)[1]

    @property
    def target_text(self) -> str:
        """What the run aims at, for names and logs: s0.9, 2x, 2:4."""
        if self.pattern is not None:
            return self.mode.replace(":", "of")
        if self.mode == "channel" and self.speedup is not None:
            return f"x{self.speedup:g}"
        return f"s{self.sparsity:g}"

    @property
    def latency_budget(self) -> bool:
        """--speedup is a measured latency target (channel mode, --budget-by latency)."""
        return self.mode == "channel" and self.speedup is not None and self.budget_by == "latency"

    @property
    def uses_prompt(self) -> bool:
        return get_method(self.method).uses_prompt

    @property
    def passes_per_batch(self) -> int:
        """VPNs steps twice per batch (prompted + un-prompted pass), the baselines once."""
        return get_method(self.method).passes_per_batch

    @property
    def stage1_one_batch(self) -> bool:
        """Whether a learned-score method's stage 1 is cut to one batch and its epochs go to stage 2
        (channel mode's channel_split "tune")."""
        return self.mode == "channel" and self.channel_split == "tune"

    @property
    def mask_epochs(self) -> int:
        """Stage-1 epochs as run: one under channel_split "tune", else epochs_mask."""
        return 1 if self.stage1_one_batch else self.epochs_mask

    @property
    def mask_fraction(self) -> float:
        """Fraction of each stage-1 epoch's batches as run (one batch under channel_split "tune")."""
        return ONE_BATCH_FRACTION if self.stage1_one_batch else self.mask_batches_fraction

    @property
    def tune_epochs_effective(self) -> int:
        """Stage-2 epochs as run: the whole epoch budget where there is no (or only a one-batch) mask search."""
        return get_method(self.method).tune_epochs(self)

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(raw: dict) -> CompressConfig:
    """A CompressConfig from its to_dict() (a run's manifest, a checkpoint): validated like the CLI's."""
    from vpns_deploy.errors import UserError

    values = dict(raw)
    if values.get("mode") == "channel":  # recorded before channel_split existed: made with the even split
        values.setdefault("channel_split", "even")
    try:
        return CompressConfig(**{**values, "optim": OptimConfig(**values.get("optim", {}))})
    except TypeError as exc:  # a key this version does not know (or lacks)
        raise UserError(f"recorded settings do not fit this vpns-deploy's CompressConfig ({exc})",
                        "re-run compress with this version") from None


def default_pad(image_size: int) -> int:
    """The paper's 16-px frame on 224-px images, scaled to the data's side."""
    return max(1, round(image_size * 16 / 224))


# Deviations from the reference implementation; written into --help and every manifest.
DEVIATIONS: tuple[str, ...] = (
    "exact global top-k (ties broken by index) instead of |s| > kth-value, so the sparsity is exact",
    "label mapping: identity with --head keep (the head matches the data's classes); --head map runs the "
    "reference's frequency label mapping once, un-prompted (the zero prompt), on the dense network before the "
    "initial mask (label_map_on = dense; the reference maps under the initial mask, where a 90 %-masked "
    "EfficientNet-Lite0 predicts one ImageNet class for every image: measured) and freezes it; --head new replaces the head (the reference never does) and warms it up first",
    "input size is the architecture's own (--input-size overrides): 32 px for the CIFAR ResNets, the "
    "model config's (e.g. 224) for torchvision/timm ImageNet models; prompt frame scaled to 7 % of the side",
    "no model selection on the test set: the last epoch of stage 2 is reported",
    "per-epoch evaluation on a validation split held out from the training images (val_fraction, "
    "class-balanced, fixed seed) instead of the test set; the test set is measured only at the end of "
    "each stage that trains at least one epoch (not after channel mode's one-batch stage 1)",
    "inputs above 64 px: training images resized to 9/8 of the side, random crop + flip (the paper's "
    "upsampled-CIFAR recipe); at 64 px and below the reference's pad-4-style crop (side / 8) + flip",
    "weights, biases and BN affine are frozen in stage 1 (equivalent: no optimiser held them)",
    "pruned weights are zeroed once at the start of stage 2 and stay exactly zero",
    "prompt in stage 1: Adam with multistep x0.1 at 50 %/72 % of the stage (the paper's runner)",
    "the stage-1 prompt milestones never fall before the end of the first epoch (the reference's "
    "int(0.5*e) puts both at epoch 0 when e = 1, and the prompt would train at 1e-6)",
    "the random prompt uses its expected mask (coverage probability) at evaluation and export",
    "HYDRA uses the same score optimiser (Adam) as VPNs, so only the prompt and second pass differ",
    f"score learning rate {SCORE_LR_RULE} unless given (the reference's 1e-4 at its 30-epoch stage 1, "
    "more for shorter stages)",
    f"BatchNorm statistics re-estimated after every epoch on {DEFAULT_BN_IMAGES} training images drawn as "
    "trained (prompted un-augmented and plain augmented batches in turn), so every epoch is judged and the "
    "model shipped with "
    "statistics of the masked network (the reference keeps training's running averages)",
    "channel mode: groups of coupled channels (torch-pruning) are scored and removed together, "
    "residual streams included; scores start at Torch-Pruning's iterative group-norm mask (Adam 1e-2; "
    "the dev branch starts from Kaiming noise) whose per-group widths stage 1 keeps; stage 1 runs one batch "
    "and its epochs go to stage 2 (channel_split = tune; measured better at equal optimiser steps; "
    "\"even\" is the paper's split); each group keeps "
    ">= 10 % of its channels, in multiples of 16; the model is physically compacted after stage 2",
    "N:M mode: N of every M consecutive input-channel weights per output (and kernel position) are "
    "kept in every layer whose input channels divide by M; other layers stay dense and are listed",
)
