"""add and concat: the kinds that join branches (identity, the pass-through branch, is in elementwise)."""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, kernel


@kernel("add")
def add(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    y = xs[0] + xs[1]
    for x in xs[2:]:
        y += x
    # every input receives dy itself: the executor must not update a gradient in place
    return y, lambda dy: ([dy] * len(xs), {})


@kernel("concat")
def concat(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    axis = attrs["axis"] + 1  # the attribute counts axes without the batch
    y = np.concatenate(xs, axis=axis)
    ends = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return y, lambda dy: (np.split(dy, ends, axis=axis), {})
