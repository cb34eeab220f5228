"""attention: multi-head self-attention, forward and backward side by side.

Per head, with Q = x Wqᵀ + bq, K and V alike (each head a head_dim-wide slice of the features):
A = softmax(Q Kᵀ / sqrt(head_dim)), the causal mask setting future scores to -inf before the softmax;
in training, inverted dropout on A; O = A V, the heads joined back along the features; y = O Woᵀ + bo.
This is what PyTorch's nn.MultiheadAttention and the ONNX lowering (MatMul/Softmax) compute.

Memory: the score matrix is the one T²·H buffer of a forward pass (softmax runs in place on it), so
inference at T=1024, D=768, 12 heads holds 48 MiB of scores per sample, freed when the layer returns.
Kept for backward: the input x, Q, K, V and the joined heads O (N·T·D each), the attention weights A
(N·H·T·T) and, with dropout in training, its keep mask (N·H·T·T bytes); A's dropped copy is not kept.
"""

from __future__ import annotations

import math

import numpy as np

from dlc.engine.kernels import kernel
from dlc.engine.kernels.dense import rows_times
from dlc.engine.kernels.elementwise import training_rng


def _project(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = rows_times(x, W.T)
    if b is not None:
        y += b
    return y


def _split_heads(a: np.ndarray, heads: int) -> np.ndarray:
    """(N, T, D) -> (N, heads, T, D/heads)."""
    n, t, d = a.shape
    return a.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)


def _join_heads(a: np.ndarray) -> np.ndarray:
    """(N, heads, T, head_dim) -> (N, T, heads*head_dim)."""
    n, h, t, dh = a.shape
    return a.transpose(0, 2, 1, 3).reshape(n, t, h * dh)


def causal_mask(steps: int) -> np.ndarray:
    """True where a step would see a later one: above the diagonal."""
    return np.triu(np.ones((steps, steps), dtype=bool), 1)


@kernel("attention")
def attention(attrs, params, state, xs, ctx):
    x = xs[0]
    n, t, d = x.shape
    heads, p = attrs["heads"], float(attrs["dropout"])
    scale = 1 / math.sqrt(attrs["head_dim"])
    Wq, Wk, Wv, Wo = params["Wq"], params["Wk"], params["Wv"], params["Wo"]
    q = _split_heads(_project(x, Wq, params.get("bq")), heads)
    k = _split_heads(_project(x, Wk, params.get("bk")), heads)
    v = _split_heads(_project(x, Wv, params.get("bv")), heads)
    a = q @ k.transpose(0, 1, 3, 2)  # (N, H, T, T): the scores, then the weights, in place
    a *= scale
    if attrs["causal"]:
        a[:, :, causal_mask(t)] = -np.inf  # the diagonal is never masked, so no row is all -inf
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a /= a.sum(axis=-1, keepdims=True)
    keep = None
    if ctx.training and p > 0:
        keep = training_rng(ctx, "attention dropout").random(a.shape, dtype=x.dtype) >= p
        o = (a * keep) @ v
        o *= 1 / (1 - p)
    else:
        o = a @ v
    o = _join_heads(o)
    y = _project(o, Wo, params.get("bo"))

    def backward(dy):
        rows = dy.reshape(-1, d)
        grads = {"Wo": rows.T @ o.reshape(-1, d)}
        do = _split_heads(dy @ Wo, heads)
        if keep is None:
            dv = a.transpose(0, 1, 3, 2) @ do
        else:
            dv = (a * keep).transpose(0, 1, 3, 2) @ do
            dv *= 1 / (1 - p)
        da = do @ v.transpose(0, 1, 3, 2)
        if keep is not None:
            da *= keep
            da *= 1 / (1 - p)
        # softmax: ds = A * (dA - sum over the row of dA * A); masked entries have A = 0, so ds = 0
        da -= np.einsum("nhij,nhij->nhi", da, a)[..., None]
        da *= a
        da *= scale
        dq = da @ k
        dk = da.transpose(0, 1, 3, 2) @ q
        x_rows = x.reshape(-1, d)
        dx = None
        for name, W, dproj in (("q", Wq, dq), ("k", Wk, dk), ("v", Wv, dv)):
            g = _join_heads(dproj).reshape(-1, d)
            grads["W" + name] = g.T @ x_rows
            if dx is None:
                dx = g @ W
            else:
                dx += g @ W
        if "bo" in params:
            grads["bo"] = rows.sum(axis=0)
            for name, dproj in (("q", dq), ("k", dk), ("v", dv)):
                grads["b" + name] = dproj.sum(axis=(0, 2)).reshape(-1)
        return [dx.reshape(n, t, d)], grads
    return y, backward
