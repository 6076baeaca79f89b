"""Does the exported graph compute what the PyTorch model computes, on real images?"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.feeds import nhwc_batches
from calibration.session import cpu_session, run
from vpns_deploy.data.batches import to_unit_float
from vpns_deploy.data.dataset import ImageSet
from vpns_deploy.errors import UserError
from vpns_deploy.prompts import PromptedNet

ATOL = 1e-3  # float32 graph vs eager: measured ~1e-5; 1e-3 flags a real divergence, not rounding
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
                 images: int = 256, batch_size: int = 64) -> Parity:
    """ORT on raw uint8 NHWC vs the training-path PyTorch model on the same images (CPU, fp32)."""
    subset = data.head(images)
    session = cpu_session(onnx_path)
    model = model.cpu().eval()
    worst, agree, n = 0.0, 0, 0
    passed = True
    for batch, _ in nhwc_batches(subset, batch_size):
        got = run(session, batch)
        ref = model(to_unit_float(torch.from_numpy(batch).permute(0, 3, 1, 2)), prompted=prompted).numpy()
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        passed &= bool(np.all(diff <= ATOL + RTOL * np.abs(ref)))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        n += len(batch)
    return Parity(n, worst, agree / max(n, 1), ATOL, RTOL, passed)


def require_parity(parity: Parity, what: str) -> None:
    if not parity.passed:
        raise UserError(
            f"{what}: ONNX Runtime and PyTorch disagree (max |logit diff| {parity.max_abs_diff:.2e} > "
            f"{parity.atol:g} + {parity.rtol:g}*|logit|, top-1 agreement {parity.top1_agreement:.2%})",
            "the exported graph is wrong; report the model as an issue and do not ship this file",
        )


@dataclass(frozen=True)
class Agreement:
    """A lower-precision graph against its fp32 source, both in ONNX Runtime on the same images."""

    images: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare_graphs(reference: Path, candidate: Path, data: ImageSet, images: int = 1000,
                   batch_size: int = 64) -> Agreement:
    subset = data.head(images)
    ref_s, cand_s = cpu_session(reference), cpu_session(candidate)
    worst, agree, n = 0.0, 0, 0
    for batch, _ in nhwc_batches(subset, batch_size):
        a, b = run(ref_s, batch), run(cand_s, batch).astype(np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(batch)
    return Agreement(n, worst, agree / max(n, 1))
