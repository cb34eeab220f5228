"""maxpool, avgpool, gap, gmp, upsample.

Windowed pools loop over the kh*kw window offsets (never over samples or pixels), each step one
vectorised operation on a strided (C, Ho, Wo, N) view of the batch-innermost layout. On a signal or
a volume the image kernels do the work (dlc/engine/kernels/ranks.py and the volume rules below).
"""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, Kernel, kernel
from dlc.engine.kernels.im2col import col2im, crop_chwn, from_chwn, pad_chwn, span, to_chwn, windows
from dlc.engine.kernels.ranks import any_rank, depth_into_batch, depth_out_of_batch, depth_slices, image_attrs
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


def depth_windows(image_pool: Kernel, attrs: dict, state: Arrays, x: np.ndarray, ctx: Ctx,
                  pad_value: float) -> tuple[list[slice], list[np.ndarray], list, tuple[int, ...], np.ndarray]:
    """A volume pool's image pools, one per depth offset of its window over the depth slices that offset
    reads: (the slices, their (N, C, D', H', W') outputs, their backwards, the padded shape, the counts
    of each output depth's window cells inside the input)."""
    n, _, d, _, _ = x.shape
    (kd, *_), (sd, *_), pads = attrs["kernel"], attrs["stride"], attrs["pads"]
    front = pads[0]
    do = window_out(d, kd, sd, 1, front, pads[3], attrs["ceil"])
    back = max(pads[3], (do - 1) * sd + kd - front - d)  # `ceil` windows that hang over the end read padding
    xp = np.pad(x, ((0, 0), (0, 0), (front, back), (0, 0), (0, 0)), constant_values=pad_value)
    image = image_attrs(attrs, slice(1, None))
    taps = [depth_slices(i, sd, do) for i in range(kd)]
    outs, backwards = [], []
    for cells in taps:
        y, back_i = image_pool(image, {}, state, [depth_into_batch(xp[:, :, cells])], ctx)
        outs.append(depth_out_of_batch(y, n))
        backwards.append(back_i)
    return taps, outs, backwards, xp.shape, inside_counts(d, do, kd, sd, front)


def volume_avgpool(image_pool: Kernel, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray],
                   ctx: Ctx) -> Forward:
    """The mean over the depth offsets of the image averages: each image average already divides by
    its window's cells inside the image, so dividing the sum by the offsets inside the input gives
    count_include_pad=0 over the whole (D, H, W) window."""
    x = xs[0]
    n, front, d = x.shape[0], attrs["pads"][0], x.shape[2]
    taps, outs, backwards, padded, counts = depth_windows(image_pool, attrs, state, x, ctx, 0.0)
    scale = (1.0 / counts).astype(x.dtype)[:, None, None]
    y = sum(outs[1:], outs[0].copy()) * scale

    def backward(dy):
        share = depth_into_batch(dy * scale)
        dxp = np.zeros(padded, x.dtype)
        for cells, back_i in zip(taps, backwards):
            dxp[:, :, cells] += depth_out_of_batch(back_i(share)[0][0], n)
        return [dxp[:, :, front:front + d]], {}

    return y, backward


def volume_maxpool(image_pool: Kernel, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray],
                   ctx: Ctx) -> Forward:
    """The max over the depth offsets of the image maxima; backward routes to the first maximum in
    (depth, height, width) order, as the image kernel does within each offset."""
    x = xs[0]
    n, front, d = x.shape[0], attrs["pads"][0], x.shape[2]
    taps, outs, backwards, padded, _ = depth_windows(image_pool, attrs, state, x, ctx, -np.inf)
    y = outs[0].copy()
    for o in outs[1:]:
        np.maximum(y, o, out=y)

    def backward(dy):
        dxp = np.zeros(padded, x.dtype)
        unclaimed = np.ones(y.shape, bool)
        for cells, o, back_i in zip(taps, outs, backwards):
            hit = (o == y) & unclaimed
            unclaimed ^= hit
            dxp[:, :, cells] += depth_out_of_batch(back_i(depth_into_batch(dy * hit))[0][0], n)
        return [dxp[:, :, front:front + d]], {}

    return y, backward


def volume_as_image(image_kernel: Kernel, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray],
                    ctx: Ctx) -> Forward:
    """gap and gmp see every cell alike: a volume (N, C, D, H, W) is the image (N, C, D*H, W)."""
    x = xs[0]
    n, c, d, h, w = x.shape
    y, image_backward = image_kernel(attrs, params, state, [x.reshape(n, c, d * h, w)], ctx)
    return y, lambda dy: ([image_backward(dy)[0][0].reshape(x.shape)], {})


@kernel("avgpool")
@any_rank(volume_avgpool)
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
@any_rank(volume_maxpool)
def maxpool(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = to_chwn(xs[0])
    xp, win, pads = pool_windows(attrs, x, -np.inf)
    y = reduce_windows(win, np.maximum)

    def backward(dy):
        # Only the first maximum in row-major window order gets the gradient, as PyTorch does:
        # flat regions (MNIST's background) tie exactly, and sharing would count the gradient twice.
        d = to_chwn(dy)
        c, kh, kw, ho, wo, n = win.shape
        # Windows that tile the input exactly (2/2 pooling) route straight into the input gradient's
        # cells; otherwise into per-window values that col2im sums.
        tiles = (xp is x and tuple(attrs["stride"]) == (kh, kw) and tuple(attrs["dilation"]) == (1, 1)
                 and x.shape[1:3] == (ho * kh, wo * kw))
        if tiles:
            dx = np.empty((c, ho, kh, wo, kw, n), x.dtype)
            routed = dx.transpose(0, 2, 4, 1, 3, 5)
        else:
            routed = np.zeros(win.shape, x.dtype)
        unclaimed = np.ones(y.shape, bool)
        for i in range(kh):
            for j in range(kw):
                hit = win[:, i, j] == y
                hit &= unclaimed
                unclaimed ^= hit  # hit lies inside unclaimed, so this clears it
                np.multiply(d, hit, out=routed[:, i, j])
        if tiles:
            return [from_chwn(dx.reshape(x.shape))], {}
        return [input_gradient(routed, xp, pads, attrs["stride"], attrs["dilation"])], {}

    return from_chwn(y), backward


def keeping_axes(vector_kernel: Kernel) -> Kernel:
    """gap and gmp with `keep`: the vector of channels given its 1x1 spatial axes back (C@1x1 of an image)."""
    def run(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
        y, backward = vector_kernel(attrs, params, state, xs, ctx)
        if not attrs["keep"]:
            return y, backward
        return y.reshape(y.shape + (1,) * (xs[0].ndim - 2)), lambda dy: backward(dy.reshape(y.shape))
    return run


@kernel("gap")
@keeping_axes
@any_rank(volume_as_image)
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
@keeping_axes
@any_rank(volume_as_image)
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
