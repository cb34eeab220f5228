"""How far a model in lower precision (float16, bfloat16, int8) strays from the float32 model it was made
from, on the same inputs through onnxruntime: what `dlc export --dtype` and `dlc quantize` report.

The relative difference is the largest absolute difference over the largest absolute float32 value of
the output, not an element-wise ratio, which is unbounded where an output is near zero: a probability of
1e-9 that becomes 2e-9 is no error anyone sees. Top-1 agreement is reported for a classifier's output
(classes on the last axis; a sequence model's every step counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the unit roundoff of each type, half the spacing of its numbers at 1: 2^-(mantissa bits + 1)
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
SAMPLES = 8  # random samples both models run on where the user gives none


@dataclass
class Agreement:
    samples: int
    max_abs: float
    max_rel: float  # max |y - y_ref| / max |y_ref|
    top1: float | None  # fraction of predictions (samples, or steps of a sequence) whose top class agrees

    def as_json(self) -> dict:
        return {"samples": self.samples, "max_abs_diff": self.max_abs, "max_rel_diff": self.max_rel,
                "top1_agreement": self.top1}

    def line(self) -> str:
        top1 = f", top-1 agreement {self.top1:.2%}" if self.top1 is not None else ""
        return f"max abs difference {self.max_abs:.2e}, max relative {self.max_rel:.2e}{top1}"


def agreement(reference: np.ndarray, other: np.ndarray) -> Agreement:
    """The two outputs of the same batch (the float32 model's first)."""
    ref, y = reference.astype(np.float64), other.astype(np.float64)
    diff = float(np.abs(y - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] >= 2:
        top1 = float(np.mean(ref.argmax(axis=-1) == y.argmax(axis=-1)))
    return Agreement(len(ref), diff, diff / scale if scale else diff, top1)
