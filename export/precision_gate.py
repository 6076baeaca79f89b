"""Whether a lower-precision graph may ship: judged on real test images against its fp32 graph.

fp16 and int8 graphs are compared with the verified fp32 graph in ONNX Runtime on the same test images
(calibration.parity.compare_graphs): top-1 of both against the labels and top-1 agreement. A graph
ships only while it loses at most `max_drop` top-1 points (the measured drop, whose 95 % interval is
recorded beside it: on 1,000 images about +-0.5 to 1 point where a tenth of the predictions change); int8 that loses more is made again with the
fallback recipe (the stem and the classifier in float), and a precision that still loses more is left
out of the run with one line and the reason, recorded in manifest.json. The compressed graph (what ships)
is gated; the dense reference is written with the recipe the compressed graph shipped with and judged,
its verdict recorded, but it never decides what ships. fp16 that changes the top-1
class of more than 1 % of the images is not rounding but overflow and is left out the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from calibration.parity import Agreement

# Names the gate's rule in export's fingerprint: runs exported under another rule are exported again.
GATE_RULE = "compressed-graph-decides-1"
FP16_MIN_AGREEMENT = 0.99  # below this fp16 is not rounding noise but overflow
# int8 recipes tried in order (precision.to_int8's keep_float): the full recipe, then the fallback.
INT8_RECIPES = ("none", "edges")
RECIPE_TEXT = {"none": "every weighted layer in int8", "edges": "stem and classifier kept in float"}


@dataclass(frozen=True)
class Verdict:
    ships: bool
    reason: str

    def to_dict(self) -> dict:
        return {"ships": self.ships, "reason": self.reason}


def judge(precision: str, agreement: Agreement, max_drop: float) -> Verdict:
    """Ship `precision` only within `max_drop` top-1 points of fp32 (and, for fp16, without overflow)."""
    drop = agreement.top1_drop_points
    numbers = (f"test top-1 {agreement.reference_top1:.2%} fp32 -> {agreement.candidate_top1:.2%} {precision} on "
               f"{agreement.images} images (drop {drop:+.2f} +- {agreement.top1_drop_ci95 or 0:.2f} points), "
               f"top-1 agreement {agreement.top1_agreement:.2%}"
               if drop is not None else f"top-1 agreement {agreement.top1_agreement:.2%} on {agreement.images} images")
    if precision == "fp16" and agreement.top1_agreement < FP16_MIN_AGREEMENT:
        return Verdict(False, f"fp16 changes the top-1 class of {1 - agreement.top1_agreement:.2%} of test images "
                              f"(max |logit diff| {agreement.max_abs_diff:.2e}): the model overflows in fp16")
    if drop is not None and drop > max_drop:
        return Verdict(False, f"{numbers}: loses {drop:.2f} points, more than the {max_drop:g} allowed "
                              "(--max-precision-drop)")
    return Verdict(True, f"{numbers}: within the {max_drop:g}-point tolerance")
