"""Training losses and weight penalties: each returns its value and its gradient together.

`LOSSES[name](out, target) -> (value, dout)`: value is a Python float averaged over the batch, dout
the gradient of that value with respect to `out`, in `out`'s dtype. Where an output predicts more
than one thing per sample (softmax over the channels of an image, the last axis of a sequence), every
position is one prediction and the value averages over all of them.

Targets are class indices (integers, one fewer axis than `out`) or arrays shaped like `out`
(one-hot rows, probabilities); a vector of N values against an output of shape (N, 1) is read as
one value per sample.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dlc.engine.kernels.elementwise import logistic, softmax_axis
from dlc.errors import DlcError


def _is_indices(out: np.ndarray, target: np.ndarray) -> bool:
    """Class indices, or values shaped like the output (one-hot rows, probabilities, regression)?"""
    if target.shape == out.shape:
        return False
    labels = list(out.shape)
    del labels[softmax_axis(out)]
    if target.shape == tuple(labels):
        return True
    raise DlcError(f"targets of shape {target.shape} do not fit outputs of shape {out.shape}: "
                   f"expected class indices {tuple(labels)} or values {out.shape}")


def _checked_indices(target: np.ndarray, classes: int) -> np.ndarray:
    t = target.astype(np.intp, copy=False)
    if t.size and (t.min() < 0 or t.max() >= classes):
        bad = t.min() if t.min() < 0 else t.max()
        raise DlcError(f"class label {int(bad)} is outside 0..{classes - 1} for an output of {classes} units")
    return t


def check_class_labels(loss: str, out_shape: tuple[int, ...], y: np.ndarray) -> None:
    """Raise, before the first step, what `loss` raises at a batch of targets y whose class labels
    lie outside the classes of outputs of out_shape (one sample's). The torch engine's losses index
    with the labels unchecked: a traceback on the CPU, a device-side assert on CUDA."""
    out = np.broadcast_to(np.float32(0), (len(y), *out_shape))  # the outputs' shape, without their memory
    labels_for_mse = loss == "mse" and out.ndim == 2 and out.shape[1] > 1 and y.shape == out.shape[:1]
    if (loss in ("xent", "hinge") and _is_indices(out, y)) or labels_for_mse:
        _checked_indices(y, out.shape[softmax_axis(out)])


def _as_rows(out: np.ndarray) -> np.ndarray:
    """(predictions, classes): the class axis (the one softmax normalises) last, the rest as rows."""
    if out.ndim == 2:
        return out
    return np.moveaxis(out, softmax_axis(out), -1).reshape(-1, out.shape[softmax_axis(out)])


def _from_rows(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The inverse of _as_rows: back to `out`'s shape and axis order."""
    if out.ndim == 2:
        return rows
    axis = softmax_axis(out) % out.ndim
    moved = out.shape[:axis] + out.shape[axis + 1:] + out.shape[axis:axis + 1]
    return np.moveaxis(rows.reshape(moved), -1, axis)


def _one_hot(labels: np.ndarray, classes: int, dtype) -> np.ndarray:
    t = _checked_indices(labels, classes)
    onehot = np.zeros((len(t), classes), dtype=dtype)
    onehot[np.arange(len(t)), t] = 1
    return onehot


def _per_sample(out: np.ndarray, target) -> np.ndarray:
    """Targets for an output that predicts values, not one class: a vector fits an (N, 1) output."""
    target = np.asarray(target)
    if target.shape != out.shape and target.shape == out.shape[:1] and out.shape[1:] == (1,):
        target = target.reshape(out.shape)
    if target.shape != out.shape:
        raise DlcError(f"targets of shape {target.shape} do not fit outputs of shape {out.shape}")
    return target.astype(out.dtype, copy=False)


def xent(logits: np.ndarray, target) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy on logits: log-sum-exp keeps it finite for any logit size."""
    target = np.asarray(target)
    z = _as_rows(logits)
    m = len(z)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    total = p.sum(axis=1, keepdims=True)
    p /= total
    log_total = np.log(total)
    if _is_indices(logits, target):
        t = _checked_indices(target.ravel(), z.shape[1])
        rows = np.arange(m)
        # -log softmax(z)[t] = log(sum exp z) - z[t]
        value = (log_total.sum() - z[rows, t].sum()) / m
        p[rows, t] -= 1
        dz = p
    else:
        t = _as_rows(target.astype(logits.dtype, copy=False))
        value = -(t * (z - log_total)).sum() / m
        # d/dz of -sum t log softmax(z) is p * sum(t) - t; sum(t) is 1 for a distribution
        dz = p * t.sum(axis=1, keepdims=True) - t
    dz *= 1 / m
    return float(value), _from_rows(dz, logits)


def bce(prob: np.ndarray, target) -> tuple[float, np.ndarray]:
    """Binary cross-entropy on probabilities, summed over outputs, averaged over the batch.

    Probabilities are clipped one machine epsilon away from 0 and 1 so the log stays finite; the
    gradient is that of the unclipped formula at the clipped point, so a saturated wrong answer
    still pulls its output back.
    """
    t = _per_sample(prob, target)
    eps = float(np.finfo(prob.dtype).eps)
    p = np.clip(prob, eps, 1 - eps)
    n = prob.shape[0]
    value = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / n
    return float(value), (p - t) / (p * (1 - p)) * (1 / n)


def bce_logits(logits: np.ndarray, target) -> tuple[float, np.ndarray]:
    """bce fused with the sigmoid before it, on logits: stable where sigmoid saturates."""
    t = _per_sample(logits, target)
    n = logits.shape[0]
    # -[t log s(z) + (1-t) log(1-s(z))] = max(z, 0) - t z + log(1 + exp(-|z|))
    value = (np.maximum(logits, 0) - t * logits + np.log1p(np.exp(-np.abs(logits)))).sum() / n
    return float(value), (logistic(logits) - t) * (1 / n)


def mse(out: np.ndarray, target) -> tuple[float, np.ndarray]:
    """The quadratic cost: half the squared error summed over outputs, averaged over the batch."""
    target = np.asarray(target)
    n = out.shape[0]
    if out.ndim == 2 and out.shape[1] > 1 and target.shape == out.shape[:1]:
        target = _one_hot(target, out.shape[1], out.dtype)  # class labels, one unit per class
    diff = out - _per_sample(out, target)
    return float(0.5 * (diff * diff).sum() / n), diff * (1 / n)


def hinge(scores: np.ndarray, target) -> tuple[float, np.ndarray]:
    """Multiclass SVM loss (Weston-Watkins, as in CS231n): sum over j != y of max(0, s_j - s_y + 1)."""
    target = np.asarray(target)
    s = _as_rows(scores)
    m = len(s)
    if _is_indices(scores, target):
        y = _checked_indices(target.ravel(), s.shape[1])
    else:
        y = _as_rows(target).argmax(axis=1)
    rows = np.arange(m)
    margins = s - s[rows, y][:, None] + 1
    margins[rows, y] = 0
    active = margins > 0
    value = (margins * active).sum() / m
    ds = active.astype(scores.dtype)
    ds[rows, y] = -active.sum(axis=1)
    ds *= 1 / m
    return float(value), _from_rows(ds, scores)


LOSSES: dict[str, Callable] = {"xent": xent, "bce": bce, "bce_logits": bce_logits, "mse": mse, "hinge": hinge}


def l2_penalty(params: dict, names, lam: float) -> tuple[float, dict]:
    """Weight decay: lam/2 * sum of squares over the named arrays, and its gradient lam * w.

    The 1/2 makes the gradient lam * w, the update PyTorch's weight_decay and the course's
    w <- (1 - eta lam) w - eta dC/dw apply.
    """
    value = sum(float((params[k] * params[k]).sum()) for k in names) * (0.5 * lam)
    return value, {k: lam * params[k] for k in names}


def l1_penalty(params: dict, names, lam: float) -> tuple[float, dict]:
    """lam * sum of absolute values over the named arrays, and its (sub)gradient lam * sign(w)."""
    value = sum(float(np.abs(params[k]).sum()) for k in names) * lam
    return value, {k: lam * np.sign(params[k]) for k in names}


def maxnorm_(W: np.ndarray, c: float, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Scale each unit's incoming weight vector down to norm <= c, in place, and return W.

    A unit's incoming weights are W's rows for fc (units, in_features) and a filter for conv
    (C_out, ...): by default the norm runs over every axis but the first. For recurrent weights
    (dirs, G*H, D) pass axes=(-1,). A projection, not a penalty: apply it after each update.
    """
    axes = tuple(range(1, W.ndim)) if axes is None else axes
    norms = np.sqrt((W * W).sum(axis=axes, keepdims=True))
    W *= np.minimum(1, c / np.maximum(norms, np.finfo(W.dtype).tiny))
    return W

