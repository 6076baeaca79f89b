"""Does the exported graph compute what the PyTorch model computes, on real images?"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from calibration.feeds import nhwc_batches
from calibration.runtime import FedRuntime, OrtRuntime, TorchRuntime, paired_logits
from calibration.session import cpu_session
from vpns_deploy.data.dataset import ImageSet
from vpns_deploy.errors import UserError
from vpns_deploy.prompts import PromptedNet

ATOL = 1e-3  # float32 graph vs eager: measured ~1e-5; 1e-3 flags a real divergence, not rounding
# Relative to each image's largest |logit|, not to each logit: float32 rounding grows with the size of
# the activations that produced the logits, and a near-zero logit beside large ones carries the same
# absolute error (MobileNetV3-small, calibrated random weights, channel mode: max |diff| 4.2e-3, every
# top-1 equal, failed 1e-3 + 1e-3*|logit| and passes against the image's max |logit|).
RTOL = 1e-3


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def check_parity(onnx_path: Path, model: PromptedNet, data: ImageSet, prompted: bool,
                 images: int = 256, batch_size: int = 64,
                 feed: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> Parity:
    """ORT on raw uint8 NHWC vs the training-path PyTorch model on the same images (CPU, fp32); feed:
    each batch -> (what the graph gets, what the model gets) where they differ (a graph with a resize
    in front: export/resize_front.frame)."""
    graph, reference = OrtRuntime(cpu_session(onnx_path)), TorchRuntime(model, torch.device("cpu"), prompted)
    if feed is not None:
        graph = FedRuntime(graph, lambda batch: feed(batch)[0])
        reference = FedRuntime(reference, lambda batch: feed(batch)[1])
    worst, agree, n = 0.0, 0, 0
    passed = True
    for got, ref in paired_logits(graph, reference, data.head(images), batch_size):
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        passed &= bool(np.all(diff <= ATOL + RTOL * np.abs(ref).max(axis=1, keepdims=True)))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        n += len(got)
    return Parity(n, worst, agree / max(n, 1), ATOL, RTOL, passed)


def require_parity(parity: Parity, what: str) -> None:
    if not parity.passed:
        raise UserError(
            f"{what}: ONNX Runtime and PyTorch disagree (max |logit diff| {parity.max_abs_diff:.2e} > "
            f"{parity.atol:g} + {parity.rtol:g}*max|logit|, top-1 agreement {parity.top1_agreement:.2%})",
            "the exported graph is wrong; report the model as an issue and do not ship this file",
        )


# A max |logit diff| up to this fraction of the largest |logit| is rounding, and top-2 margins below it
# are ties (fp16 keeps 11 significant bits, ~5e-4 relative per operation).
TIE_RELATIVE = 1e-2


@dataclass(frozen=True)
class Agreement:
    """A lower-precision graph against its fp32 source, both in ONNX Runtime on the same images.

    top1_agreement counts a changed top-1 class only where fp32 decided it: where fp32's top-2 margin
    exceeds the measured max |logit diff|. A smaller margin is a tie at the candidate's resolution
    (random-weight EfficientNet: exact ties, max |diff| 8e-16, yet 1.56 % "changed" by argmax), and
    either class is as right as the other. The rule applies only while the max |logit diff| is
    rounding-sized (at most TIE_RELATIVE of the largest |fp32 logit|, or 1e-6): a larger difference
    (an overflow) makes every change count, as do non-finite candidate logits.
    raw_top1_agreement is plain argmax agreement; ties the number of images within the margin.
    """

    images: int
    max_abs_diff: float
    top1_agreement: float
    raw_top1_agreement: float = 1.0
    ties: int = 0
    reference_top1: float | None = None  # against the images' labels (compare_graphs)
    candidate_top1: float | None = None
    top1_drop_ci95: float | None = None  # half-width of the drop's 95 % interval, points (paired images)

    @property
    def top1_drop_points(self) -> float | None:
        """Top-1 points the candidate loses against the reference (negative: it gains)."""
        if self.reference_top1 is None or self.candidate_top1 is None:
            return None
        return 100.0 * (self.reference_top1 - self.candidate_top1)

    def to_dict(self) -> dict:
        return asdict(self) | {"top1_drop_points": self.top1_drop_points}


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per row: the largest logit minus the second largest (0 for a single class)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top = np.partition(logits, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def agreement_of(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Agreement of candidate logits with reference logits (see Agreement for the rule)."""
    finite = np.isfinite(candidate).all(axis=1)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    worst = float(diff.max()) if finite.all() else float("inf")
    same = reference.argmax(1) == candidate.argmax(1)
    margin = top2_margin(reference.astype(np.float64))
    rounding = np.isfinite(worst) and worst <= max(TIE_RELATIVE * float(np.abs(reference).max(initial=0.0)), 1e-6)
    tie = finite & (margin <= worst) & rounding
    agree = (same | tie) & finite
    n = max(len(reference), 1)
    return Agreement(len(reference), worst, float(agree.sum()) / n, float((same & finite).sum()) / n, int(tie.sum()))


def compare_graphs(reference: Path, candidate: Path, data: ImageSet, images: int = 1000,
                   batch_size: int = 64) -> Agreement:
    """Agreement of two graphs on the first `images` test images, and each one's top-1 on them."""
    subset = ImageSet(data.images[:images], data.labels[:images], data.classes)
    refs, cands, labels = [], [], []
    a, b = OrtRuntime(cpu_session(reference)), OrtRuntime(cpu_session(candidate))
    for batch, batch_labels in nhwc_batches(subset, batch_size):
        refs.append(a.infer(batch).astype(np.float32))
        cands.append(b.infer(batch).astype(np.float32))
        labels.append(batch_labels)
    if not refs:
        return Agreement(0, 0.0, 1.0)
    ref, cand, y = np.concatenate(refs), np.concatenate(cands), np.concatenate(labels)
    ref_right, cand_right = ref.argmax(1) == y, cand.argmax(1) == y
    return replace(agreement_of(ref, cand), reference_top1=float(ref_right.mean()),
                   candidate_top1=float(cand_right.mean()),
                   top1_drop_ci95=paired_halfwidth(ref_right, cand_right))


def paired_halfwidth(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """Half-width, in top-1 points, of the 95 % interval of top-1(a) - top-1(b) measured on the same
    images: only the images on which the two disagree carry the difference's variance."""
    n = max(len(a_right), 1)
    d = a_right.astype(np.float64) - b_right.astype(np.float64)
    return float(100 * 1.96 * np.sqrt(max(d.var(), 0.0) / n))
