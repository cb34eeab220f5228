"""add, mul and concat: the kinds that join branches (identity, the pass-through branch, is in elementwise)."""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, Kernel, kernel


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """The gradient of an input NumPy repeated along its size-1 axes, or along the leading axes it lacks
    (a `shared` input has no batch axis): the sum over the copies."""
    if g.ndim > len(shape):
        g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    axes = tuple(i for i, (d, n) in enumerate(zip(shape, g.shape)) if d == 1 and n != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


@kernel("add")
def add(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    y = xs[0] + xs[1]
    for x in xs[2:]:
        y = y + x  # not in place: a later input may be the one broadcast to y's shape
    # every input receives dy itself (summed where it was broadcast): the executor must not update a
    # gradient in place
    return y, lambda dy: ([unbroadcast(dy, x.shape) for x in xs], {})


def _over_positions(x: np.ndarray, ndim: int) -> np.ndarray:
    """A batch of feature vectors (N, C) shaped to repeat over an (N, C, H, W) image's pixels or an
    (N, T, C) sequence's steps."""
    # Over an image, batch-innermost like the conv path's (C, H, W, N) memory: numpy then keeps that
    # layout in squeeze-and-excitation's x * s (2.2 -> 0.4 ms with the next conv's copy back, at
    # 96@14x14 and batch 64; as fast as before on C-ordered images)
    return np.asfortranarray(x)[:, :, None, None] if ndim == 4 else x[:, None, :]


def _sum_over_positions(g: np.ndarray) -> np.ndarray:
    """The gradient of a vector repeated over the positions: the sum over every position it fed."""
    return g.sum(axis=(2, 3)) if g.ndim == 4 else g.sum(axis=1)


@kernel("mul")
def mul(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    ndim = max(x.ndim for x in xs)
    views = [_over_positions(x, ndim) if b else x for x, b in zip(xs, attrs["broadcast"])]

    def others(i: int) -> np.ndarray:
        """The product of every input but the i-th, at the output's shape."""
        rest = [v for j, v in enumerate(views) if j != i]
        p = rest[0] * rest[1] if len(rest) > 1 else np.broadcast_to(rest[0], y.shape)
        for v in rest[2:]:
            p *= v
        return p

    y = views[0] * views[1]
    for v in views[2:]:
        y *= v

    def backward(dy):
        dxs = []
        for i, (x, b) in enumerate(zip(xs, attrs["broadcast"])):
            g = dy * others(i)
            dxs.append(_sum_over_positions(g) if b else unbroadcast(g, x.shape))
        return dxs, {}
    return y, backward


@kernel("concat")
def concat(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    axis = attrs["axis"] + 1  # the attribute counts axes without the batch
    y = np.concatenate(xs, axis=axis)
    ends = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return y, lambda dy: (np.split(dy, ends, axis=axis), {})


# --- the elementwise merges of several inputs (issue 22) -----------------------------------------------

def _extremum(pick) -> Kernel:
    """maximum or minimum of the inputs: the gradient goes to the input that gave each element, the
    first of those that tie (the one np.argmax or np.argmin finds)."""
    def run(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
        stacked = np.stack(np.broadcast_arrays(*xs))
        which = pick(stacked, axis=0)
        y = np.take_along_axis(stacked, which[None], axis=0)[0]
        return y, lambda dy: ([unbroadcast(np.where(which == i, dy, 0), x.shape) for i, x in enumerate(xs)], {})
    return run


kernel("maximum")(_extremum(np.argmax))
kernel("minimum")(_extremum(np.argmin))


@kernel("sub")
def sub(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    a, b = xs
    return a - b, lambda dy: ([unbroadcast(dy, a.shape), unbroadcast(-dy, b.shape)], {})


@kernel("div")
def div(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    a, b = xs
    y = a / b
    return y, lambda dy: ([unbroadcast(dy / b, a.shape), unbroadcast(-dy * y / b, b.shape)], {})


@kernel("matmul")
def matmul(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, w = xs  # w: K x M, without a batch axis
    leading = tuple(range(x.ndim - 1))
    return x @ w, lambda dy: ([dy @ w.T, np.tensordot(x, dy, axes=(leading, leading))], {})


@kernel("pow")
def power(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    a, b = xs
    y = np.power(a, b)

    def backward(dy):
        # d/db a^b = a^b ln a, defined for a > 0 (where a <= 0 the power itself is real only for whole b)
        with np.errstate(divide="ignore", invalid="ignore"):
            db = np.where(a > 0, dy * y * np.log(np.where(a > 0, a, 1)), 0)
        return [unbroadcast(dy * b * np.power(a, b - 1), a.shape), unbroadcast(db, b.shape)], {}
    return y, backward
