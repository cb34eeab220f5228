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
from dlc.engine.kernels.dense import row_max, row_sums
from dlc.engine.kernels.elementwise import training_rng


def _stacked(params) -> np.ndarray:
    """Wq, Wk and Wv as one (3D, D) matrix: Q, K and V come from one matrix product, and backward's
    weight and input gradients of all three from one each. Stacked anew when needed, not kept: at
    GPT-2's size it is 7 MiB a layer."""
    return np.concatenate((params["Wq"], params["Wk"], params["Wv"]))


def causal_mask(steps: int, dtype) -> np.ndarray:
    """-inf where a step would see a later one (above the diagonal), 0 elsewhere: added to the scores."""
    return np.triu(np.full((steps, steps), -np.inf, dtype=dtype), 1)


@kernel("attention")
def attention(attrs, params, state, xs, ctx):
    x = xs[0]
    n, t, d = x.shape
    heads, p = attrs["heads"], float(attrs["dropout"])
    dh = d // heads
    scale = 1 / math.sqrt(attrs["head_dim"])
    bias = "bq" in params
    x_rows = x.reshape(-1, d)
    qkv = x_rows @ _stacked(params).T
    if bias:
        qkv += np.concatenate((params["bq"], params["bk"], params["bv"]))
    # (N, T, 3, heads, head_dim) -> three (N, heads, T, head_dim) views: each head's matrix is a strided
    # one that matmul hands to BLAS as it is (a contiguous copy cost more than it saved)
    q, k, v = qkv.reshape(n, t, 3, heads, dh).transpose(2, 0, 3, 1, 4)
    a = q @ k.transpose(0, 1, 3, 2)  # (N, H, T, T): the scores, then the weights, in place
    a *= scale
    if attrs["causal"]:
        a += causal_mask(t, a.dtype)  # the diagonal is never masked, so no row is all -inf
    a -= row_max(a)
    np.exp(a, out=a)
    a /= row_sums(a)
    keep = None
    if ctx.training and p > 0:
        keep = training_rng(ctx, "attention dropout").random(a.shape, dtype=x.dtype) >= p
    # O = A V written straight into (N, T, heads, head_dim): the heads joined with no copy
    o = np.empty((n, t, heads, dh), dtype=x.dtype)
    np.matmul(a if keep is None else a * keep, v, out=o.transpose(0, 2, 1, 3))
    o_rows = o.reshape(-1, d)
    if keep is not None:
        o_rows *= 1 / (1 - p)
    Wo = params["Wo"]
    y = o_rows @ Wo.T
    if bias:
        y += params["bo"]

    def backward(dy):
        rows = dy.reshape(-1, d)
        grads = {"Wo": rows.T @ o_rows}
        do = (rows @ Wo).reshape(n, t, heads, dh).transpose(0, 2, 1, 3)
        # dQ, dK and dV written into one (N, T, 3, heads, head_dim) buffer: as (N·T, 3D) rows it is the
        # gradient of the stacked projection, so its weight and input gradients are one product each
        d_qkv = np.empty((n, t, 3, heads, dh), dtype=x.dtype)
        dq, dk, dv = d_qkv.transpose(2, 0, 3, 1, 4)
        if keep is None:
            np.matmul(a.transpose(0, 1, 3, 2), do, out=dv)
        else:
            np.matmul((a * keep).transpose(0, 1, 3, 2), do, out=dv)
            dv *= 1 / (1 - p)
        da = do @ v.transpose(0, 1, 3, 2)
        if keep is not None:
            da *= keep
            da *= 1 / (1 - p)
        # softmax: ds = A * (dA - sum over the row of dA * A); masked entries have A = 0, so ds = 0
        da -= np.einsum("nhij,nhij->nhi", da, a)[..., None]
        da *= a
        da *= scale
        np.matmul(da, k, out=dq)
        np.matmul(da.transpose(0, 1, 3, 2), q, out=dk)
        g = d_qkv.reshape(-1, 3 * d)
        dw = g.T @ x_rows
        grads["Wq"], grads["Wk"], grads["Wv"] = dw[:d], dw[d:2 * d], dw[2 * d:]
        if bias:
            grads["bo"] = rows.sum(axis=0)
            db = g.sum(axis=0)
            grads["bq"], grads["bk"], grads["bv"] = db[:d], db[d:2 * d], db[2 * d:]
        return [(g @ _stacked(params)).reshape(n, t, d)], grads
    return y.reshape(n, t, d), backward
