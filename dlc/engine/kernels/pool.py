"""maxpool, avgpool, gap, gmp, upsample.

Windowed pools loop over the kh*kw window offsets (never over samples or pixels), each step one
vectorised operation on a strided (C, Ho, Wo, N) view of the batch-innermost layout.
"""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, kernel
from dlc.engine.kernels.im2col import col2im, crop_chwn, from_chwn, pad_chwn, span, to_chwn, windows
from dlc.layers.spatial import Pads, Pair, window_out


def pool_geometry(attrs: dict, h: int, w: int) -> tuple[Pair, Pads]:
    """(out_hw, pads) where pads grow at the bottom/right so the `ceil` windows that hang over the
    edge read padding, not memory past the array."""
    (kh, kw), (sh, sw), (dh, dw), (t, l, b, r) = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    ho = window_out(h, kh, sh, dh, t, b, attrs["ceil"])
    wo = window_out(w, kw, sw, dw, l, r, attrs["ceil"])
    b = max(b, span(ho, kh, sh, dh) - t - h)
    r = max(r, span(wo, kw, sw, dw) - l - w)
    return (ho, wo), (t, l, b, r)


def inside_counts(size: int, out: int, k: int, stride: int, before: int) -> np.ndarray:
    """How many cells of each window along one axis lie in the unpadded input."""
    start = np.arange(out) * stride - before
    return np.minimum(start + k, size) - np.maximum(start, 0)


def pool_windows(attrs: dict, x: np.ndarray, pad_value: float) -> tuple[np.ndarray, np.ndarray, Pads]:
    """(padded x, its (C, kh, kw, Ho, Wo, N) window view, pads grown for `ceil`) of a (C, H, W, N) x."""
    out_hw, pads = pool_geometry(attrs, x.shape[1], x.shape[2])
    xp = pad_chwn(x, pads, pad_value)
    return xp, windows(xp, attrs["kernel"], attrs["stride"], attrs["dilation"], out_hw), pads


def reduce_windows(win: np.ndarray, op: np.ufunc) -> np.ndarray:
    """op (np.add, np.maximum) over the kh*kw window offsets: (C, Ho, Wo, N)."""
    y = win[:, 0, 0].copy()
    for i in range(win.shape[1]):
        for j in range(win.shape[2]):
            if i or j:
                op(y, win[:, i, j], out=y)
    return y


def input_gradient(per_window: np.ndarray, xp: np.ndarray, pads: Pads, stride: Pair, dil: Pair = (1, 1)) -> np.ndarray:
    """The NCHW input gradient from each window cell's share, (C, kh, kw, Ho, Wo, N)."""
    return from_chwn(crop_chwn(col2im(per_window, xp.shape[1:3], stride, dil), pads))


@kernel("avgpool")
def avgpool(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """ONNX AveragePool with count_include_pad=0: each window divides by its cells inside the input."""
    x = to_chwn(xs[0])
    xp, win, pads = pool_windows(attrs, x, 0.0)
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    y = reduce_windows(win, np.add)
    if any(pads):
        (_, h, w, _), (_, ho, wo, _) = x.shape, y.shape
        counts = np.outer(inside_counts(h, ho, kh, sh, pads[0]), inside_counts(w, wo, kw, sw, pads[1]))
        scale = (1.0 / counts).astype(x.dtype)[:, :, None]
    else:
        scale = x.dtype.type(1.0 / (kh * kw))
    y *= scale

    def backward(dy):
        share = to_chwn(dy) * scale
        return [input_gradient(np.broadcast_to(share[:, None, None], win.shape), xp, pads, (sh, sw))], {}

    return from_chwn(y), backward


@kernel("maxpool")
def maxpool(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = to_chwn(xs[0])
    xp, win, pads = pool_windows(attrs, x, -np.inf)
    y = reduce_windows(win, np.maximum)

    def backward(dy):
        # Only the first maximum in row-major window order gets the gradient, as PyTorch does:
        # flat regions (MNIST's background) tie exactly, and sharing would count the gradient twice.
        d = to_chwn(dy)
        routed = np.zeros(win.shape, x.dtype)
        unclaimed = np.ones(y.shape, bool)
        for i in range(win.shape[1]):
            for j in range(win.shape[2]):
                hit = win[:, i, j] == y
                hit &= unclaimed
                unclaimed ^= hit  # hit lies inside unclaimed, so this clears it
                np.multiply(d, hit, out=routed[:, i, j])
        return [input_gradient(routed, xp, pads, attrs["stride"], attrs["dilation"])], {}

    return from_chwn(y), backward


@kernel("gap")
def gap(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    y = x.reshape(c, h * w, n).mean(axis=1)

    def backward(dy):
        dx = np.empty_like(x)
        np.copyto(dx, (dy.T / (h * w))[:, None, None, :])
        return [from_chwn(dx)], {}

    return np.ascontiguousarray(y.T), backward


@kernel("gmp")
def gmp(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    flat = x.reshape(c, h * w, n)
    # argmax returns the first maximum in (h, w) order: the one cell that gets the gradient.
    first = flat.argmax(axis=1)[:, None, :]
    y = np.take_along_axis(flat, first, axis=1)[:, 0, :]

    def backward(dy):
        dx = np.zeros_like(flat)
        np.put_along_axis(dx, first, dy.T[:, None, :], axis=1)
        return [from_chwn(dx.reshape(c, h, w, n))], {}

    return np.ascontiguousarray(y.T), backward


@kernel("upsample")
def upsample(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """Nearest neighbour: output cell (h, w) copies input cell (h // F, w // F)."""
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    f = attrs["factor"]
    y = np.empty((c, h, f, w, f, n), x.dtype)
    np.copyto(y, x[:, :, None, :, None, :])

    def backward(dy):
        d = to_chwn(dy).reshape(c, h, f, w, f, n)
        return [from_chwn(d.sum(axis=(2, 4)))], {}

    return from_chwn(y.reshape(c, h * f, w * f, n)), backward
