"""Scoring a run: the loss and accuracy of outputs, and which epoch is the best so far."""

from __future__ import annotations

from typing import Callable

import numpy as np

from dlc.engine.losses import LOSSES
from dlc.graph import Graph
from dlc.train.dataset import Data, LazyRows, Split

EVAL_CHUNK = 1024  # lazy samples scored at a time


def _labels_of(out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class indices: y itself, or the argmax of target rows shaped like the output."""
    return y.argmax(axis=-1) if y.ndim == out.ndim else y


def predictions(out: np.ndarray) -> int:
    """How many predictions outputs hold: one per sample, or one per step of a TxV sequence output."""
    return out.size // out.shape[-1]


def classifies(data: Data, classes: int) -> bool:
    """Whether accuracy means something: class labels, or 0/1 targets of a one-unit output."""
    y = data.train.y
    if y.ndim >= 2 and y.dtype != np.int64:  # target rows, not labels per step
        return classes > 1
    return classes > 1 or bool(np.all((y == 0) | (y == 1)))


def count_correct(out: np.ndarray, y: np.ndarray, classes: int) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) over every prediction (each step of a sequence output is one);
    a one-unit output is right when it is on the target's side of 0.5."""
    if classes == 1:
        return int(((out.reshape(-1) > 0.5) == (y.reshape(-1) > 0.5)).sum()), 0  # every step of a Tx1 output
    rows, labels = out.reshape(-1, classes), _labels_of(out, y).reshape(-1)
    top1 = int(np.count_nonzero(rows.argmax(axis=1) == labels))
    if classes <= 5:
        return top1, 0
    # A top-5 hit is a label ranked within the first five: the classes scoring above it, plus those
    # tied with it at a lower index (the order of a stable sort, whose first is argmax's pick). No
    # partition needed (it cost most of this function at batch 10), and a constant output is one
    # hit in five classes, not a hit everywhere.
    score = rows[np.arange(len(rows)), labels][:, None]
    rank = (rows > score).sum(axis=1)
    tied = rows == score
    if np.count_nonzero(tied) > len(rows):  # a tie besides the label itself: rare, so checked first
        rank += (tied & (np.arange(classes) < labels[:, None])).sum(axis=1)
    return top1, int(np.count_nonzero(rank < 5))


def eval_loss(graph: Graph, out: np.ndarray, y: np.ndarray, loss: str) -> float:
    """The loss of inference outputs; after a final softmax, xent reads log-probabilities as logits
    (softmax(log p) = p), the same value the fused training loss computes."""
    if loss == "xent" and graph.output.kind == "softmax":
        out = np.log(np.maximum(out, np.finfo(out.dtype).tiny))
    return LOSSES[loss](out, y)[0]


def evaluate(predict: Callable[[np.ndarray], np.ndarray], graph: Graph, split: Split, loss: str,
             classes: int, scored: bool) -> dict:
    """Loss, top-1 and top-5 accuracy of a split, from the trainer's inference outputs: at once for
    arrays in memory, a chunk at a time for lazy rows (their outputs alone may not fit)."""
    chunk = EVAL_CHUNK if isinstance(split.x, LazyRows) else max(len(split), 1)
    losses, top1, top5, n = [], 0, 0, 0
    for start in range(0, len(split), chunk):
        out, y = predict(split.x[start:start + chunk]), split.y[start:start + chunk]
        hits = count_correct(out, y, classes)
        losses.append((eval_loss(graph, out, y, loss), len(y)))
        top1, top5, n = top1 + hits[0], top5 + hits[1], n + predictions(out)
    return {"loss": losses[0][0] if len(losses) == 1 else sum(v * k for v, k in losses) / len(split),
            "accuracy": top1 / n if scored else None,
            "top5": top5 / n if scored and classes > 5 else None}


def improves(best: dict, key: str, value: float) -> bool:
    """Higher accuracy or lower loss than the best so far (or no best yet)."""
    if not best:
        return True
    return value > best["value"] if key.endswith("accuracy") else value < best["value"]
