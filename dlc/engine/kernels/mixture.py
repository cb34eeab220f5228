"""experts: the node that joins a mixture of experts (dlc/layers/mixture.py).

Dense and masked: every expert has already run on every step (its nodes come before this one), and the
weights of the experts a step does not route to are zero, so they receive zero gradient for that step.
That costs E/K times the routed work, but keeps the engine, the ONNX export and the PyTorch module
the same plain graph.
"""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, kernel


def route(logits: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, K), weights (N, K)) of each row's K largest logits and their softmax. Ties go to the
    lower expert index (a stable sort), as ONNX's TopK and the PyTorch module do."""
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :top]
    kept = np.take_along_axis(logits, idx, axis=1)
    w = np.exp(kept - kept[:, :1])  # the first is the largest
    return idx, w / w.sum(axis=1, keepdims=True)


def balance_grad(logits: np.ndarray, idx: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """The load-balancing loss alpha·E·Σ_i f_i·P_i (Switch Transformer; with top-K assignment as Mixtral's
    HF implementation) and its gradient on the logits. f_i, the fraction of steps with expert i among
    their top K, is a count and carries no gradient; P_i is the mean over steps of the softmax over all
    E logits."""
    n, e = logits.shape
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    f = np.bincount(idx.ravel(), minlength=e) / n
    value = alpha * e * float(f @ p.mean(axis=0))
    # d/dz_nj of (1/n)·Σ_i c_i·p_ni, c = alpha·E·f: p_nj·(c_j - Σ_i c_i·p_ni) / n
    c = alpha * e * f
    return value, p * (c[None, :] - (p @ c)[:, None]) / n


@kernel("experts")
def experts(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    logits, outs = xs[0], xs[1:]
    e, shape = len(outs), outs[0].shape
    z = logits.reshape(-1, e)
    ys = np.stack([y.reshape(len(z), -1) for y in outs], axis=1)  # (N, E, D)
    idx, w = route(z, attrs["top"])
    gate = np.zeros_like(z)
    np.put_along_axis(gate, idx, w, axis=1)
    y = np.einsum("ne,ned->nd", gate, ys).reshape(shape)
    balance = None
    if ctx.training and attrs["balance"] > 0 and ctx.aux is not None:
        value, balance = balance_grad(z, idx, attrs["balance"])
        ctx.aux.append(value)

    def backward(dy: np.ndarray):
        dy = dy.reshape(len(z), -1)
        douts = [(gate[:, i:i + 1] * dy).reshape(shape) for i in range(e)]
        dw = np.take_along_axis(np.einsum("nd,ned->ne", dy, ys), idx, axis=1)
        dkept = w * (dw - (w * dw).sum(axis=1, keepdims=True))
        dz = np.zeros_like(z)
        np.put_along_axis(dz, idx, dkept, axis=1)
        if balance is not None:
            dz += balance.astype(z.dtype)
        return [dz.reshape(logits.shape), *douts], {}
    return y, backward
