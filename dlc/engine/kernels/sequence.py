"""posembed, clstoken, tokens and seqpool: the kinds that make, extend and pool sequences (N, T, D)."""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import kernel


@kernel("posembed")
def posembed(attrs, params, state, xs, ctx):
    x, P = xs[0], params["P"]
    return x + P, lambda dy: ([dy], {"P": dy.sum(axis=0)})


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
    # NCHW -> (N, H*W, C): pixel (i, j) becomes step i*W + j, its channels the step's features
    x = xs[0]
    n, c, h, w = x.shape
    y = np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1))
    return y, lambda dy: ([np.ascontiguousarray(dy.transpose(0, 2, 1)).reshape(x.shape)], {})


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
