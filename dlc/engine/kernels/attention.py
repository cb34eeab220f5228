"""attention: multi-head self-attention, forward and backward side by side.

Per head, with Q = x Wqᵀ + bq, K and V alike (K without bk with keybias=off; each head a
head_dim-wide slice of the features; with kv=N grouped heads, K and V have N heads, each read by
heads/N consecutive query heads; with rope, Q and K turned by their positions, rotate-half as
Hugging Face Llama):
A = softmax(Q Kᵀ / sqrt(head_dim)), the causal mask (and window) setting hidden scores to -inf before
the softmax;
in training, inverted dropout on A; O = A V, the heads joined back along the features; y = O Woᵀ + bo.
This is what PyTorch's nn.MultiheadAttention and the ONNX lowering (MatMul/Softmax) compute.
With window=HxW on a token grid (Swin) the steps are first gathered into windows (window_order), each
window attends within itself with the relative position bias (and the shifted windows' mask) added to
its scaled scores, and the outputs go back to their steps; B's gradient sums the scores' gradients of
every window and sample at each table entry.

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


def _stacked_bias(params, which: str = "qkv") -> np.ndarray:
    """bq, bk and bv as one vector beside _stacked's matrix (bk and bv for cross-attention), zeros for
    the key's when it has none (keybias=off)."""
    return np.concatenate([params.get("b" + w, np.zeros(len(params["W" + w]), params["W" + w].dtype))
                           for w in which])


def _split_bias(params, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The gradients of the biases the layer has, from the stacked bias's: none for an absent key bias."""
    return {b: g for b, g in grads.items() if b in params}


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


# Swin's windows (torchvision's shifted_window_attention): which step each window's token reads, the
# relative position of two tokens of a window as an index into the bias table, and the mask that keeps
# tokens of different regions of the rolled grid apart.

def window_order(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """(T,) the grid's steps in window order: entry j·wh·ww + i is the step token i of window j reads,
    the grid rolled up and left by the shift first (torch.roll by -shift), windows row by row. The
    outputs go back the same way: step order[k] gets window token k (the roll back undoes the roll)."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    rolled = ((np.arange(h) + sh) % h)[:, None] * w + ((np.arange(w) + sw) % w)[None, :]
    return rolled.reshape(h // wh, wh, w // ww, ww).transpose(0, 2, 1, 3).reshape(-1)


def relative_index(window: tuple[int, int]) -> np.ndarray:
    """(N·N,) for tokens i, j of a window of N = wh·ww, the row of the bias table their offset reads:
    (dy + wh - 1)·(2·ww - 1) + dx + ww - 1, torchvision's relative_position_index."""
    wh, ww = window
    y, x = np.divmod(np.arange(wh * ww), ww)
    return ((y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + x[:, None] - x[None, :] + ww - 1).reshape(-1)


def bias_table(expanded: np.ndarray, window: tuple[int, int]) -> np.ndarray | None:
    """The ((2wh-1)(2ww-1), heads) table whose entries, read at relative_index, give `expanded`
    ((1,) heads, N, N): Swin's relative position bias as an exporter stores it folded; None when its
    values do not repeat so (or are one value throughout, which any table of one value gives)."""
    n, heads = window[0] * window[1], expanded.shape[-3] if expanded.ndim >= 3 else 0
    if expanded.ndim < 3 or expanded.shape[-2:] != (n, n) or expanded.size != heads * n * n:
        return None
    values = expanded.reshape(heads, n * n)
    if not np.isfinite(values).all() or values.min() == values.max():
        return None
    index = relative_index(window)
    table = np.zeros((heads, (2 * window[0] - 1) * (2 * window[1] - 1)), values.dtype)
    table[:, index] = values
    return np.ascontiguousarray(table.T) if np.array_equal(table[:, index], values) else None


def window_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """(windows, N, N) float64: -100 where two tokens of a window come from different regions of the
    rolled grid, 0 elsewhere (torchvision's attn_mask, slices and all)."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    region = np.zeros((h, w))
    rows = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None))
    cols = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None))
    for count, (r, c) in enumerate((r, c) for r in rows for c in cols):
        region[r, c] = count
    tokens = region.reshape(h // wh, wh, w // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    return np.where(tokens[:, None, :] != tokens[:, :, None], -100.0, 0.0)


def window_scores(attrs: dict, table: np.ndarray) -> np.ndarray:
    """(windows or 1, heads, N, N): what Swin adds to a window's scaled scores, the bias read from the
    table at each pair's offset, plus the mask when the windows are shifted."""
    n = attrs["window"][0] * attrs["window"][1]
    bias = table[relative_index(attrs["window"])].reshape(n, n, -1).transpose(2, 0, 1)[None]
    if any(attrs["shift"]):
        bias = bias + window_mask(attrs["grid"], attrs["window"], attrs["shift"])[:, None].astype(table.dtype)
    return bias


@kernel("attention")
def attention(attrs, params, state, xs, ctx):
    if not isinstance(attrs["window"], tuple):
        y, back = attend(attrs, params, xs, ctx)
        return y, lambda dy: back(dy)[:2]
    x = xs[0]
    n, t, d = x.shape
    order = window_order(attrs["grid"], attrs["window"], attrs["shift"])
    tokens = attrs["window"][0] * attrs["window"][1]
    windows = x[:, order].reshape(-1, tokens, d)
    y_windows, back = attend(attrs, params, [windows], ctx, window_scores(attrs, params["B"]))
    y = np.empty_like(y_windows, shape=x.shape)
    y[:, order] = y_windows.reshape(n, t, d)

    def backward(dy):
        dxs, grads, d_scores = back(dy[:, order].reshape(-1, tokens, d))
        table = np.zeros_like(params["B"])
        np.add.at(table, relative_index(attrs["window"]), d_scores.transpose(1, 2, 0).reshape(tokens * tokens, -1))
        grads["B"] = table
        dx = np.empty_like(x)
        dx[:, order] = dxs[0].reshape(n, t, d)
        return [dx], grads
    return y, backward


def attend(attrs, params, xs, ctx, extra: np.ndarray | None = None):
    """Attention of the steps of xs[0] (N, T, D) over themselves, or over the source's steps with
    `from=` (xs[1]); with `mask=` the mask follows. `extra` (windows or 1, heads, T, T) is added to the
    scaled scores of every run of `windows` consecutive samples (Swin's bias and mask). Its backward
    returns (dxs, grads, the gradient of extra summed over every sample and window: (heads, T, T), or
    None without extra)."""
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
            kvp += _stacked_bias(params, "kv")
        qp, kvp = qp.reshape(n, t, d), kvp.reshape(n, s, 2 * kd)
    else:
        qkv = x_rows @ _stacked(params).T
        if bias:
            qkv += _stacked_bias(params)
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
    if extra is not None:
        a.reshape(-1, extra.shape[0], *a.shape[1:3], t, t)[...] += extra[:, :, None]  # (kv, group) = (heads, 1)
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
        d_extra = None if extra is None else da.reshape(-1, heads, t, t).sum(axis=0)
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
                grads.update(_split_bias(params, {"bk": db[:kd], "bv": db[kd:]}))
            return [(g_q @ params["Wq"]).reshape(n, t, d), (g_kv @ _stacked(params, "kv")).reshape(n, s, e),
                    *d_mask], grads, d_extra
        g = d_qkv.reshape(-1, d + 2 * kd)
        dw = g.T @ x_rows
        grads["Wq"], grads["Wk"], grads["Wv"] = dw[:d], dw[d:d + kd], dw[d + kd:]
        if bias:
            db = g.sum(axis=0)
            grads.update(_split_bias(params, {"bq": db[:d], "bk": db[d:d + kd], "bv": db[d + kd:]}))
        return [(g @ _stacked(params)).reshape(n, t, d), *d_mask], grads, d_extra
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
