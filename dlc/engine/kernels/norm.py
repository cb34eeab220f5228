"""bn, layernorm, rmsnorm, instancenorm, groupnorm and lrn: normalisation over the batch, over each sample's
features, over each sample's channel or group of channels, over neighbouring channels.

bn follows PyTorch and ONNX BatchNormalization: training normalises with the batch's biased variance
and moves the running statistics by `momentum` (running = (1 - momentum) * running + momentum * batch,
the variance unbiased); inference reads the running statistics. lrn is ONNX LRN across channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlc.engine.kernels import Across, Arrays, Ctx, Forward, kernel
from dlc.engine.kernels.dense import column_sums, row_sums


def _channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against axis 1 of an (N, C) or (N, C, H, W) batch."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _batch_last(x: np.ndarray) -> np.ndarray:
    """The (C, ..., N) view of an (N, C, ...) batch."""
    return np.moveaxis(x, 0, -1)


def _batch_innermost(x: np.ndarray) -> bool:
    """Whether x is an NCHW view of the conv path's (C, H, W, N) memory (or a Fortran-ordered (N, C))."""
    return _batch_last(x).flags.c_contiguous


def _by_channel(x: np.ndarray, batch_innermost: bool) -> np.ndarray:
    """x as an (A, C, B) array with the channels on axis 1: (1, C, H*W*N) of batch-innermost memory, else
    (N, C, H*W) of images or (N, C, 1) of vectors; a view of x when x is in that layout."""
    c = x.shape[1]
    if batch_innermost:
        return np.ascontiguousarray(_batch_last(x)).reshape(1, c, -1)
    return x.reshape(x.shape[0], c, -1)


def _like(a: np.ndarray, x: np.ndarray, batch_innermost: bool) -> np.ndarray:
    """_by_channel's (A, C, B) array back at x's shape, in the same layout."""
    if batch_innermost:
        return np.moveaxis(a.reshape(_batch_last(x).shape), -1, 0)
    return a.reshape(x.shape)


def _channel_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=(0, 2)); on one contiguous (C, B) matrix as a matrix-vector product, BLAS's order."""
    return row_sums(a[0])[:, 0] if a.shape[0] == 1 else a.sum(axis=(0, 2))


def _channel_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * b).sum(axis=(0, 2)) without the product array; one dot product per channel on (1, C, B)."""
    if a.shape[0] == 1:
        return np.matmul(a[0][:, None, :], b[0][:, :, None]).reshape(-1)
    return np.einsum("acb,acb->c", a, b)


@dataclass
class Normalised:
    """bn's forward up to its affine map, on (A, C, B) views (_by_channel), where every per-channel vector
    broadcasts as (C, 1)."""

    xc: np.ndarray  # x - mean
    inv_std: np.ndarray
    scale: np.ndarray  # gamma * inv_std
    beta: np.ndarray
    inner: bool  # x was batch-innermost
    n: int  # values per channel in the batch (both parts' where it trains as two)
    across: Across | None  # the batch's other part

    def gradients(self, d3: np.ndarray, training: bool) -> tuple[np.ndarray, Arrays]:
        """(the input's gradient, gamma's and beta's) from the output's gradient d3, as (A, C, B)."""
        xc, inv_std, scale, n = self.xc, self.inv_std, self.scale, self.n
        dbeta = _channel_sums(d3)
        dgamma = _channel_dots(d3, xc) * inv_std  # sum of dy * xhat
        dx = d3 * scale[:, None]
        if training:
            # the batch statistics depend on every x: remove dy's mean and its part along xhat,
            # scale * (dy - dbeta / n - xhat * dgamma / n) with xhat = xc * inv_std
            sums, dots = dbeta, dgamma
            if self.across is not None:
                # over the whole batch, in this part's scale: each part's dy is of the mean of its own
                # losses, so the parts' sums add weighted by their shares and come back divided by this one's
                w, c = self.across.weight, len(dbeta)
                both = self.across.total(np.concatenate([dbeta, dgamma], dtype=np.float64) * w) / w
                sums, dots = both[:c].astype(d3.dtype), both[c:].astype(d3.dtype)
            along = xc * (scale * inv_std * dots / n)[:, None]
            along += (scale * sums / n)[:, None]
            dx -= along
        return dx, {"gamma": dgamma, "beta": dbeta}


def normalise(attrs: dict, params: Arrays, state: Arrays, x: np.ndarray, ctx: Ctx) -> Normalised:
    """bn's statistics (the batch's in training, which move the running ones; else the running ones)."""
    inner = _batch_innermost(x)
    x3 = _by_channel(x, inner)
    n = x3.shape[0] * x3.shape[2]
    eps = float(attrs["eps"])
    gamma, beta = params["gamma"].astype(x.dtype, copy=False), params["beta"].astype(x.dtype, copy=False)
    across = ctx.across if ctx.training else None
    if not ctx.training:
        xc = x3 - state["mean"].astype(x.dtype, copy=False)[:, None]
        var = state["var"]
    elif across is None:
        mean = _channel_sums(x3) / n
        xc = x3 - mean[:, None]
        var = _channel_dots(xc, xc) / n
    else:  # part of a batch: the whole batch's mean and variance, from the sums of both parts
        sums = across.total(np.concatenate([_channel_sums(x3), [n]], dtype=np.float64))
        n = int(sums[-1])
        mean = (sums[:-1] / n).astype(x.dtype)
        xc = x3 - mean[:, None]
        var = (across.total(_channel_dots(xc, xc)) / n).astype(x.dtype)
    if ctx.training and (across is None or across.first):  # the running statistics move once a step
        momentum = float(attrs["momentum"])
        state["mean"] *= 1 - momentum
        state["mean"] += momentum * mean
        state["var"] *= 1 - momentum
        state["var"] += (momentum * n / max(n - 1, 1)) * var
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
    return Normalised(xc, inv_std, gamma * inv_std, beta, inner, n, across)


@kernel("bn")
def bn(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    # The conv path's (1, C, B) memory takes its sums and dot products as BLAS products, and
    # y = xc * (gamma * inv_std) + beta keeps only xc = x - mean: 3 passes over the batch forward and 4
    # backward where the textbook formulas with xhat took 7 each (EfficientNet's 64@28x28 bn, batch 64:
    # see the commit).
    x = xs[0]
    b = normalise(attrs, params, state, x, ctx)
    y = b.xc * b.scale[:, None]
    y += b.beta[:, None]

    def backward(dy):
        dx, grads = b.gradients(_by_channel(dy, b.inner), ctx.training)
        return [_like(dx, x, b.inner)], grads
    return _like(y, x, b.inner), backward


def bn_silu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """bn then silu as one step (dlc/engine/fusion.py), with the same bits: silu(z) = z * logistic(z)
    and logistic(z) = (1 + tanh(z/2)) / 2, so with h = z/2, silu(z) = h * (1 + tanh(h)). bn's affine map
    makes h directly, halving gamma * inv_std and beta, which is exact in binary floating point (as is
    every other halving and doubling here): 7 passes over the batch forward where the two kernels take 8.
    """
    x = xs[0]
    b = normalise(attrs, params, state, x, ctx)
    half = b.xc * (b.scale / 2)[:, None]  # bn's output / 2
    half += (b.beta / 2)[:, None]
    sig = np.tanh(half)
    sig += 1  # 2 * logistic(bn's output)
    y = half * sig
    sig *= 0.5

    def backward(dy):
        # silu's backward, then bn's: d(z·s)/dz = s + y·(1 - s)
        g = 1 - sig
        g *= y
        g += sig
        g *= _by_channel(dy, b.inner)
        dx, grads = b.gradients(g, ctx.training)
        return [_like(dx, x, b.inner)], grads
    return _like(y, x, b.inner), backward


@kernel("layernorm")
def layernorm(attrs, params, state, xs, ctx):
    if not attrs["channels"]:
        return layernorm_last(xs[0], params, float(attrs["eps"]))
    # each position's channels: the last-axis norm of the channels-last view, as PyTorch's ConvNeXt does
    x = np.moveaxis(xs[0], 1, -1)
    y, backward = layernorm_last(x, params, float(attrs["eps"]))

    def channels_backward(dy):
        (dx,), grads = backward(np.ascontiguousarray(np.moveaxis(dy, 1, -1)))
        return [np.moveaxis(dx, -1, 1)], grads
    return np.ascontiguousarray(np.moveaxis(y, -1, 1)), channels_backward


def layernorm_last(x: np.ndarray, params: Arrays, eps: float) -> Forward:
    # ONNX LayerNormalization over the last axis: each vector, or each step of a sequence, on its own
    x = np.ascontiguousarray(x)
    gamma, beta = params["gamma"], params["beta"]
    d = x.shape[-1]
    mean = row_sums(x)
    mean /= d
    xhat = x - mean
    var = row_sums(xhat * xhat)
    var /= d
    var += eps
    inv_std = np.sqrt(var, out=var)
    np.reciprocal(inv_std, out=inv_std)
    xhat *= inv_std
    y = xhat * gamma
    y += beta

    def backward(dy):
        rows = dy.reshape(-1, d)
        dy_xhat = dy * xhat
        grads = {"gamma": column_sums(dy_xhat.reshape(rows.shape)), "beta": column_sums(rows)}
        g = dy * gamma
        # the mean and variance depend on every feature: remove g's mean and its part along xhat
        along = row_sums(np.multiply(dy_xhat, gamma, out=dy_xhat))  # g · xhat
        along /= d
        g_mean = row_sums(g)
        g_mean /= d
        g -= g_mean
        g -= np.multiply(xhat, along, out=dy_xhat)
        g *= inv_std
        return [g], grads
    return y, backward


@kernel("rmsnorm")
def rmsnorm(attrs, params, state, xs, ctx):
    # ONNX RMSNormalization over the last axis: x / sqrt(mean(x²) + eps) * gamma, no centring
    x, gamma = xs[0], params["gamma"]
    d = x.shape[-1]
    inv_rms = row_sums(x * x)
    inv_rms /= d
    inv_rms += float(attrs["eps"])
    np.sqrt(inv_rms, out=inv_rms)
    np.reciprocal(inv_rms, out=inv_rms)
    xhat = x * inv_rms
    y = xhat * gamma

    def backward(dy):
        dy_xhat = dy * xhat
        grads = {"gamma": column_sums(dy_xhat.reshape(-1, d))}
        g = dy * gamma
        # the mean square depends on every feature: remove g's part along xhat
        along = row_sums(np.multiply(dy_xhat, gamma, out=dy_xhat))  # g · xhat
        along /= d
        g -= np.multiply(xhat, along, out=dy_xhat)
        g *= inv_rms
        return [g], grads
    return y, backward


@kernel("instancenorm")
def instancenorm(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    # ONNX InstanceNormalization: each sample's channel over its H·W pixels, in training and inference alike
    x = xs[0]
    hw = x.shape[2] * x.shape[3]
    gamma = _channel_view(params["gamma"], x.ndim).astype(x.dtype, copy=False)
    beta = _channel_view(params["beta"], x.ndim).astype(x.dtype, copy=False)
    mean = x.mean(axis=(2, 3), keepdims=True)
    xhat = x - mean
    inv_std = 1 / np.sqrt((xhat * xhat).mean(axis=(2, 3), keepdims=True) + x.dtype.type(attrs["eps"]))
    xhat *= inv_std
    y = xhat * gamma + beta

    def backward(dy):
        grads = {"gamma": (dy * xhat).sum(axis=(0, 2, 3)), "beta": dy.sum(axis=(0, 2, 3))}
        g = dy * gamma
        # the statistics depend on every pixel of the channel: remove g's mean and its part along xhat
        g -= g.mean(axis=(2, 3), keepdims=True) + xhat * (g * xhat).sum(axis=(2, 3), keepdims=True) / hw
        return [g * inv_std], grads
    return y, backward


@kernel("groupnorm")
def groupnorm(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    # PyTorch's GroupNorm: each sample's group of C/G channels over all their positions, in training and
    # inference alike; instancenorm's forward and backward on the (N, G, C/G·positions) view
    x = xs[0]
    n = x.shape[0]
    grouped = x.reshape(n, attrs["groups"], -1)
    size = grouped.shape[2]
    gamma = _channel_view(params["gamma"], x.ndim).astype(x.dtype, copy=False)
    beta = _channel_view(params["beta"], x.ndim).astype(x.dtype, copy=False)
    xhat = grouped - grouped.mean(axis=2, keepdims=True)
    inv_std = 1 / np.sqrt((xhat * xhat).mean(axis=2, keepdims=True) + x.dtype.type(attrs["eps"]))
    xhat *= inv_std
    y = xhat.reshape(x.shape) * gamma + beta
    axes = (0, *range(2, x.ndim))  # all but the channels

    def backward(dy):
        grads = {"gamma": (dy * xhat.reshape(x.shape)).sum(axis=axes), "beta": dy.sum(axis=axes)}
        g = (dy * gamma).reshape(grouped.shape)
        # the statistics depend on every value of the group: remove g's mean and its part along xhat
        g -= g.mean(axis=2, keepdims=True) + xhat * (g * xhat).sum(axis=2, keepdims=True) / size
        return [(g * inv_std).reshape(x.shape)], grads
    return y, backward


def _window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """s[:, c] = sum of a[:, c - before .. c + after] over channels that exist (zero padding)."""
    s = a.copy()
    C = a.shape[1]
    for k in range(1, before + 1):
        s[:, k:] += a[:, :C - k]
    for k in range(1, after + 1):
        s[:, :C - k] += a[:, k:]
    return s


@kernel("lrn")
def lrn(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    size = int(attrs["size"])
    alpha, beta, k = float(attrs["alpha"]), float(attrs["beta"]), float(attrs["k"])
    # ONNX LRN: the window holds floor((size-1)/2) channels before and ceil((size-1)/2) after
    before = (size - 1) // 2
    after = size - 1 - before
    d = _window_sum(x * x, before, after)
    d *= alpha / size
    d += k
    scale = d ** -beta
    y = x * scale

    def backward(dy):
        # x_j enters the denominator of every channel whose window holds j: the transposed window
        g = dy * y / d
        dx = dy * scale - (2 * beta * alpha / size) * x * _window_sum(g, after, before)
        return [dx], {}
    return y, backward
