"""attention: multi-head self-attention, forward and backward side by side.

Per head, with Q = x Wqᵀ + bq, K and V alike (each head a head_dim-wide slice of the features; with
kv=N grouped heads, K and V have N heads, each read by heads/N consecutive query heads; with rope,
Q and K turned by their positions, rotate-half as Hugging Face Llama):
A = softmax(Q Kᵀ / sqrt(head_dim)), the causal mask (and window) setting hidden scores to -inf before
the softmax;
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


def _stacked(params, which: str = "qkv") -> np.ndarray:
    """Wq, Wk and Wv as one (D + 2·kv·head_dim, D) matrix (Wk and Wv alone for cross-attention, whose
    keys and values read another tensor): Q, K and V come from one matrix product, and backward's weight
    and input gradients of all three from one each. Stacked anew when needed, not kept: at GPT-2's size
    it is 7 MiB a layer."""
    return np.concatenate([params["W" + w] for w in which])


# Where positions enter: the rotary tables and the mask are functions of the query and key positions,
# which a forward pass over T steps gives as 0..T-1 and a key/value cache as its own offsets.

def hidden_keys(query_positions: np.ndarray, key_positions: np.ndarray, window: int | None = None) -> np.ndarray:
    """(queries, keys), True where a query would see a later key or, with a window of W, a key W or more
    steps back (Mistral: a step sees itself and the W-1 before it)."""
    queries, keys = query_positions[:, None], key_positions[None, :]
    hidden = keys > queries  # booleans, not a (T, T) array of distances: at T = 1024 that is 8 MiB
    if window is not None:
        hidden |= keys <= queries - window
    return hidden


def causal_mask(query_positions: np.ndarray, key_positions: np.ndarray, dtype,
                window: int | None = None) -> np.ndarray:
    """-inf where hidden_keys says so, 0 elsewhere: added to the scores."""
    return np.where(hidden_keys(query_positions, key_positions, window), np.asarray(-np.inf, dtype),
                    np.asarray(0, dtype))


def rotary_tables(positions: np.ndarray, head_dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (len(positions), head_dim), of Hugging Face Llama's rotate-half rope: feature i
    of a head pairs with i + head_dim/2 and turns by position·theta^(-2i/head_dim). The sin table has
    its first half negated, so that rotate_half(x)·sin is swap_halves(x)·sin. Angles in float64."""
    inverse = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.asarray(positions, dtype=np.float64), inverse)
    cos, sin = np.cos(angles), np.sin(angles)
    return np.concatenate((cos, cos), axis=-1).astype(dtype), np.concatenate((-sin, sin), axis=-1).astype(dtype)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x·cos + rotate_half(x)·sin over the last axis (steps on the axis before). Its gradient is the
    inverse turn, rotate(dy, cos, -sin): swapping the halves is its own transpose and turns sin to -sin."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate((x[..., half:], x[..., :half]), axis=-1) * sin


@kernel("attention")
def attention(attrs, params, state, xs, ctx):
    x = xs[0]
    # the labelled inputs, in the order of the kind's options: the source of keys and values, the mask
    read = iter(xs[1:])
    cross = attrs["from"] is not None
    src = next(read) if cross else x
    mask = next(read) if attrs["mask"] is not None else None
    n, t, d = x.shape
    s, e = src.shape[1:]
    heads, kv, dh, p = attrs["heads"], attrs["kv"], attrs["head_dim"], float(attrs["dropout"])
    group, kd = heads // kv, attrs["kv"] * attrs["head_dim"]
    scale = 1 / math.sqrt(dh)
    bias = "bq" in params
    x_rows, src_rows = x.reshape(-1, d), src.reshape(-1, e)
    if cross:  # queries from x, keys and values from the source: a product each
        qp = x_rows @ params["Wq"].T
        kvp = src_rows @ _stacked(params, "kv").T
        if bias:
            qp += params["bq"]
            kvp += np.concatenate((params["bk"], params["bv"]))
        qp, kvp = qp.reshape(n, t, d), kvp.reshape(n, s, 2 * kd)
    else:
        qkv = x_rows @ _stacked(params).T
        if bias:
            qkv += np.concatenate((params["bq"], params["bk"], params["bv"]))
        qkv = qkv.reshape(n, t, d + 2 * kd)
        qp, kvp = qkv[..., :d], qkv[..., d:]
    # (N, kv, group, T, head_dim) queries and (N, kv, 1, S, head_dim) keys and values: query head
    # j·group + i reads key/value head j, and matmul broadcasts each key head over its group. Strided
    # views that matmul hands to BLAS as they are (a contiguous copy cost more than it saved).
    q, (k, v) = _query_heads(qp, kv, group, dh), _kv_heads(kvp, kv, dh)
    positions = np.arange(t)
    if attrs["rope"]:
        cos, sin = rotary_tables(positions, dh, attrs["rope"], x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    a = q @ k.swapaxes(-1, -2)  # (N, kv, group, T, S): the scores, then the weights, in place
    a *= scale
    if attrs["causal"]:
        # the diagonal is never masked, so no row is all -inf
        a += causal_mask(positions, positions, a.dtype, attrs["window"])
    if mask is not None:
        # padding (0 in the mask) gets the lowest finite score, as Hugging Face's BERT: no weight, and a
        # query whose keys are all padding averages them rather than dividing 0 by 0
        np.copyto(a, np.finfo(a.dtype).min, where=(mask == 0)[:, None, None, None, :])
    a -= row_max(a)
    np.exp(a, out=a)
    a /= row_sums(a)
    keep = None
    if ctx.training and p > 0:
        keep = training_rng(ctx, "attention dropout").random(a.shape, dtype=x.dtype) >= p
    # O = A V written straight into (N, T, heads, head_dim): the heads joined with no copy
    o = np.empty((n, t, kv, group, dh), dtype=x.dtype)
    np.matmul(a if keep is None else a * keep, v, out=o.transpose(0, 2, 3, 1, 4))
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
        do = (rows @ Wo).reshape(n, t, kv, group, dh).transpose(0, 2, 3, 1, 4)
        # dQ, dK and dV written into the layout of the projections (one buffer for self-attention, the
        # gradient of the stacked projection, so its weight and input gradients are one product each)
        if cross:
            d_qp, d_kvp = np.empty((n, t, d), dtype=x.dtype), np.empty((n, s, 2 * kd), dtype=x.dtype)
        else:
            d_qkv = np.empty((n, t, d + 2 * kd), dtype=x.dtype)
            d_qp, d_kvp = d_qkv[..., :d], d_qkv[..., d:]
        dq, (dk, dv) = _query_heads(d_qp, kv, group, dh), _kv_heads(d_kvp, kv, dh)
        weights = a if keep is None else a * keep
        # a key/value head's gradient sums over the query heads of its group
        grouped_product(weights.swapaxes(-1, -2), do, dv)
        if keep is not None:
            dv *= 1 / (1 - p)
        da = do @ v.swapaxes(-1, -2)
        if keep is not None:
            da *= keep
            da *= 1 / (1 - p)
        # softmax: ds = A * (dA - sum over the row of dA * A); masked entries have A = 0, so ds = 0
        da -= np.einsum("...ij,...ij->...i", da, a)[..., None]
        da *= a
        da *= scale
        if attrs["rope"]:  # the gradients of the turned queries and keys, turned back
            dq[...] = rotate(da @ k, cos, -sin)
            dk[...] = rotate((da.swapaxes(-1, -2) @ q).sum(axis=2, keepdims=True), cos, -sin)
        else:
            np.matmul(da, k, out=dq)
            grouped_product(da.swapaxes(-1, -2), q, dk)
        if bias:
            grads["bo"] = rows.sum(axis=0)
        # the mask is read, not learned: no gradient for token ids, zero for a float mask
        d_mask = [] if mask is None else [None if mask.dtype.kind in "iub" else np.zeros_like(mask)]
        if cross:
            g_q, g_kv = d_qp.reshape(-1, d), d_kvp.reshape(-1, 2 * kd)
            grads["Wq"], dw = g_q.T @ x_rows, g_kv.T @ src_rows
            grads["Wk"], grads["Wv"] = dw[:kd], dw[kd:]
            if bias:
                grads["bq"], db = g_q.sum(axis=0), g_kv.sum(axis=0)
                grads["bk"], grads["bv"] = db[:kd], db[kd:]
            return [(g_q @ params["Wq"]).reshape(n, t, d), (g_kv @ _stacked(params, "kv")).reshape(n, s, e),
                    *d_mask], grads
        g = d_qkv.reshape(-1, d + 2 * kd)
        dw = g.T @ x_rows
        grads["Wq"], grads["Wk"], grads["Wv"] = dw[:d], dw[d:d + kd], dw[d + kd:]
        if bias:
            db = g.sum(axis=0)
            grads["bq"], grads["bk"], grads["bv"] = db[:d], db[d:d + kd], db[d + kd:]
        return [(g @ _stacked(params)).reshape(n, t, d), *d_mask], grads
    return y.reshape(n, t, d), backward


def grouped_product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = the sum over each group's query heads (axis 2) of a @ b, written into out (N, kv, 1, ., .);
    one matmul straight into out when every group is one head (plain multi-head attention)."""
    if a.shape[2] == 1:
        np.matmul(a, b, out=out)
    else:
        np.sum(a @ b, axis=2, keepdims=True, out=out)


def _query_heads(qp: np.ndarray, kv: int, group: int, dh: int) -> np.ndarray:
    """A view of (N, T, heads·head_dim) query projections as (N, kv, group, T, head_dim); writing into it
    writes into qp (backward's gradient buffers)."""
    n, t, _ = qp.shape
    q = qp.reshape(n, t, kv, group, dh)
    assert np.shares_memory(q, qp)  # a view, not a copy (backward writes)
    return q.transpose(0, 2, 3, 1, 4)


def _kv_heads(kvp: np.ndarray, kv: int, dh: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of (N, S, 2·kv·head_dim) key and value projections as keys and values (N, kv, 1, S, head_dim)."""
    n, s, _ = kvp.shape
    kd = kv * dh
    k, v = kvp[..., :kd].reshape(n, s, kv, 1, dh), kvp[..., kd:].reshape(n, s, kv, 1, dh)
    assert np.shares_memory(k, kvp) and np.shares_memory(v, kvp)
    return k.transpose(0, 2, 3, 1, 4), v.transpose(0, 2, 3, 1, 4)
