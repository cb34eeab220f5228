"""pad, pixelshuffle, tile, slice and reshape: each output value is one input value (or pad's constant), so the backward pass
sends each output gradient back to the value it was copied from."""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, kernel


def pad_sources(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each output position along one axis, the input position it copies (reflect: mirrored about the
    edge pixel; replicate and constant: the nearest one, which constant then overwrites)."""
    i = np.arange(-before, size + after)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= size, 2 * (size - 1) - i, i)
    return np.clip(i, 0, size - 1)


def add_back(dy: np.ndarray, sources: np.ndarray, size: int, axis: int) -> np.ndarray:
    """The transpose of taking `sources` along `axis`: every output slice added to the input slice it came from."""
    shape = list(dy.shape)
    shape[axis] = size
    dx = np.zeros(shape, dy.dtype)
    np.add.at(dx, (slice(None),) * axis + (sources,), dy)
    return dx


@kernel("pad")
def pad(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    _, _, h, w = x.shape
    t, l, b, r = attrs["pads"]
    mode = attrs["mode"]
    if mode == "constant":
        y = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=attrs["value"])

        def backward(dy):
            return [dy[:, :, t:t + h, l:l + w]], {}
        return y, backward

    rows, cols = pad_sources(h, t, b, mode), pad_sources(w, l, r, mode)
    y = x[:, :, rows][:, :, :, cols]

    def backward(dy):
        return [add_back(add_back(dy, cols, w, 3), rows, h, 2)], {}
    return y, backward


@kernel("pixelshuffle")
def pixelshuffle(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """Input channel c·r² + i·r + j, pixel (h, w) goes to output channel c, pixel (h·r + i, w·r + j)."""
    x = xs[0]
    n, c, h, w = x.shape
    r = attrs["factor"]
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)

    def backward(dy):
        return [dy.reshape(n, c // (r * r), h, r, w, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c, h, w)], {}
    return y, backward


@kernel("tile")
def tile(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    repeats = attrs["repeats"]
    y = np.tile(x, (1, *repeats))

    def backward(dy):
        # each axis of size d repeated r times is r blocks of d: sum the blocks
        split = [x.shape[0]] + [v for r, d in zip(repeats, x.shape[1:]) for v in (r, d)]
        return [dy.reshape(split).sum(axis=tuple(range(1, 2 * len(repeats), 2)))], {}
    return y, backward


@kernel("slice")
def slice_(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    kept = (slice(None),) * (attrs["dim"] + 1) + (slice(attrs["begin"], attrs["begin"] + attrs["length"]),)

    def backward(dy):
        dx = np.zeros_like(x)
        dx[kept] = dy
        return [dx], {}
    return x[kept], backward


@kernel("reshape")
def reshape(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    return x.reshape(len(x), *attrs["shape"]), lambda dy: ([dy.reshape(x.shape)], {})
