"""posembed, clstoken, tokens, image and seqpool: the kinds that make, extend, lay out and pool sequences (N, T, D)."""

from __future__ import annotations

import math

import numpy as np

from dlc.engine.kernels import kernel


def sinusoids(start: int, steps: int, dim: int, dtype) -> np.ndarray:
    """Fixed positions start..start+steps-1 as tensor2tensor's timing signal and Whisper's `sinusoids`:
    sin(p·w_i) in the first half of the features, cos(p·w_i) in the second, w_i = 10000^(-i/(D/2 - 1)) for
    i < D/2 (the first frequency 1, the last 1/10000). Vaswani et al. interleave sin and cos over
    w_i = 10000^(-2i/D) instead. Angles in float64."""
    half = dim // 2
    frequencies = np.exp(-math.log(10000) / (half - 1) * np.arange(half))
    angles = np.arange(start, start + steps, dtype=np.float64)[:, None] * frequencies
    return np.concatenate((np.sin(angles), np.cos(angles)), axis=1).astype(dtype)


def position_rows(attrs, params, start: int, steps: int, dtype) -> np.ndarray:
    """The rows of positions start..start+steps-1 that posembed adds: its table's, or the sinusoids."""
    if attrs["fixed"]:
        return sinusoids(start, steps, attrs["dim"], dtype)
    return params["P"][start:start + steps]


@kernel("posembed")
def posembed(attrs, params, state, xs, ctx):
    x = xs[0]
    t = x.shape[1]
    if attrs["fixed"]:
        return x + position_rows(attrs, params, 0, t, x.dtype), lambda dy: ([dy], {})
    P = params["P"]

    def backward(dy):
        dP = np.zeros_like(P)  # the rows past the sequence's steps are not read: no gradient
        dP[:t] = dy.sum(axis=0)
        return [dy], {"P": dP}
    return x + P[:t], backward


@kernel("clstoken")
def clstoken(attrs, params, state, xs, ctx):
    x, cls = xs[0], params["cls"]
    n, t, d = x.shape
    y = np.empty((n, t + 1, d), dtype=x.dtype)
    y[:, 0] = cls
    y[:, 1:] = x
    return y, lambda dy: ([dy[:, 1:]], {"cls": dy[:, 0].sum(axis=0)})


@kernel("tokens")
def tokens(attrs, params, state, xs, ctx):
    # NCHW -> (N, H*W, C): pixel (i, j) becomes step i*W + j, its channels the step's features; NCL -> (N, L, C)
    x = xs[0]
    n, c = x.shape[:2]
    y = np.ascontiguousarray(x.reshape(n, c, -1).transpose(0, 2, 1))
    return y, lambda dy: ([np.ascontiguousarray(dy.transpose(0, 2, 1)).reshape(x.shape)], {})


@kernel("image")
def image(attrs, params, state, xs, ctx):
    # (N, H*W, C) -> NCHW, tokens' inverse: step i*W + j becomes pixel (i, j)
    x = xs[0]
    n, _, c = x.shape
    y = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(n, c, *attrs["grid"])
    return y, lambda dy: ([np.ascontiguousarray(dy.reshape(n, c, -1).transpose(0, 2, 1))], {})


@kernel("seqpool")
def seqpool(attrs, params, state, xs, ctx):
    x = xs[0]
    mode = attrs["mode"]
    if mode == "mean":
        steps = x.shape[1]
        return x.mean(axis=1), lambda dy: ([np.repeat(dy[:, None, :] / steps, steps, axis=1)], {})
    step = 0 if mode == "first" else x.shape[1] - 1

    def backward(dy):
        dx = np.zeros_like(x)
        dx[:, step] = dy
        return [dx], {}
    return x[:, step].copy(), backward


@kernel("patchmerge")
def patchmerge(attrs, params, state, xs, ctx):
    # (N, H·W, C) -> (N, H/2·W/2, 4C): the grid as (N, H/2, row a, W/2, column b, C), and each 2x2
    # neighbourhood's tokens joined in Swin's order x0 (a=0, b=0), x1 (1, 0), x2 (0, 1), x3 (1, 1)
    x = xs[0]
    (h, w), c, n = attrs["grid"], attrs["features"], len(x)
    neighbours = (n, h // 2, 2, w // 2, 2, c)
    y = np.ascontiguousarray(x.reshape(neighbours).transpose(0, 1, 3, 4, 2, 5)).reshape(n, -1, 4 * c)

    def backward(dy):
        merged = dy.reshape(n, h // 2, w // 2, 2, 2, c)
        return [np.ascontiguousarray(merged.transpose(0, 1, 4, 2, 3, 5)).reshape(x.shape)], {}
    return y, backward
