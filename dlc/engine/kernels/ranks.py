"""The spatial kernels on a signal (N, C, L) and a volume (N, C, D, H, W), by their image kernels.

A signal is an image of height 1: its kernel, stride, dilation and pads gain a height axis of 1 and
no padding, and the image kernel runs unchanged (conv, dwconv, the pools and the global pools alike).
A volume needs each kind's own rule (`volume` below): conv sums one image conv per depth offset of
its kernel, the pools take the max or the mean over them (dlc/engine/kernels/conv.py and pool.py).
Either way the optimised image path (banded im2col, bounded memory) does the work.
"""

from __future__ import annotations

from functools import wraps
from typing import Callable

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, Kernel

# (image kernel, attrs, params, state, xs, ctx) -> the volume's output and backward
VolumeRule = Callable[[Kernel, dict, Arrays, Arrays, list[np.ndarray], Ctx], Forward]


def image_attrs(attrs: dict, axes: slice) -> dict:
    """The attributes of a window over the chosen axes of a signal's or a volume's window (their
    pads: that many before, that many after); a signal's single axis becomes an image's width."""
    a = dict(attrs)
    for key in ("kernel", "stride", "dilation"):
        if key in attrs:
            a[key] = (1, *attrs[key]) if len(attrs[key]) == 1 else tuple(attrs[key][axes])
    if "pads" in attrs:
        n = len(attrs["pads"]) // 2
        before, after = attrs["pads"][:n], attrs["pads"][n:]
        a["pads"] = (0, before[0], 0, after[0]) if n == 1 else (*before[axes], *after[axes])
    return a


def signal_as_image(image_kernel: Kernel, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray],
                    ctx: Ctx) -> Forward:
    """The image kernel on (N, C, 1, L), a view of the signal; outputs and gradients in the signal's shapes."""
    x = xs[0]
    as_image = {k: v[:, :, None] if v.ndim == 3 else v for k, v in params.items()}  # conv W: (C_out, C_in, 1, k)
    y, image_backward = image_kernel(image_attrs(attrs, slice(None)), as_image, state, [x[:, :, None]], ctx)
    spatial = y.ndim == 4  # gap and gmp give (N, C) on every rank

    def backward(dy):
        (dx,), grads = image_backward(dy[:, :, None] if spatial else dy)
        return [None if dx is None else dx[:, :, 0]], {k: g.reshape(params[k].shape) for k, g in grads.items()}

    return (y[:, :, 0] if spatial else y), backward


def any_rank(volume: VolumeRule) -> Callable[[Kernel], Kernel]:
    """The decorated image kernel, also run on signals (as images of height 1) and volumes (by `volume`)."""
    def wrap(image_kernel: Kernel) -> Kernel:
        @wraps(image_kernel)
        def run(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
            if xs[0].ndim == 4:
                return image_kernel(attrs, params, state, xs, ctx)
            rule = signal_as_image if xs[0].ndim == 3 else volume
            return rule(image_kernel, attrs, params, state, xs, ctx)
        return run
    return wrap


def depth_slices(start: int, stride: int, count: int) -> slice:
    """The depth slices one depth offset of a window reads, for every output depth."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def depth_into_batch(x: np.ndarray) -> np.ndarray:
    """(N, C, D, H, W) -> (N*D, C, H, W): each depth slice an image of the batch."""
    n, c, d, h, w = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(n * d, c, h, w)


def depth_out_of_batch(y: np.ndarray, n: int) -> np.ndarray:
    """The inverse of depth_into_batch."""
    nd, c, h, w = y.shape
    return y.reshape(n, nd // n, c, h, w).transpose(0, 2, 1, 3, 4)
