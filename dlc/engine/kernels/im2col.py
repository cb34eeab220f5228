"""Window views and im2col/col2im for the spatial kernels, in a batch-innermost (C, H, W, N) layout.

Kernels take and return NCHW arrays, but inside they work on (C, H, W, N): a window row is then a
contiguous run of W*N values (in a hand-written NumPy LeNet-5 this took im2col from 1.34 to 0.22 ms
a step and col2im from 1.5 to 0.39 ms). Outputs leave as NCHW-shaped views of (C, H, W, N) memory, so the
next spatial kernel gets its layout back for free (`to_chwn` copies only when it must), and
elementwise kernels in between keep it because ufuncs allocate in the layout of their input.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from dlc.engine.budget import COLS_BYTES  # read at call time by row_bands, so a test can patch it here
from dlc.layers.spatial import Pads, Pair


def to_chwn(x: np.ndarray) -> np.ndarray:
    """A contiguous (C, H, W, N) array from an NCHW one; no copy when x is a view made by from_chwn."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0))


def from_chwn(a: np.ndarray) -> np.ndarray:
    """The NCHW view of a (C, H, W, N) array."""
    return a.transpose(3, 0, 1, 2)


def pad_chwn(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """x padded by (top, left, bottom, right) with `value`; x itself when there is nothing to pad."""
    t, l, b, r = pads
    if not (t or l or b or r):
        return x
    c, h, w, n = x.shape
    xp = np.empty((c, t + h + b, l + w + r, n), x.dtype)
    # Only the border is filled: writing the whole buffer twice costs as much as the copy itself.
    xp[:, :t] = value
    xp[:, t + h:] = value
    xp[:, t:t + h, :l] = value
    xp[:, t:t + h, l + w:] = value
    xp[:, t:t + h, l:l + w] = x
    return xp


def crop_chwn(xp: np.ndarray, pads: Pads) -> np.ndarray:
    t, l, b, r = pads
    return xp[:, t:xp.shape[1] - b, l:xp.shape[2] - r]


def span(out: int, k: int, stride: int, dil: int) -> int:
    """Input rows (or columns) that `out` windows of size k read."""
    return (out - 1) * stride + dil * (k - 1) + 1


def row_bands(rows: int, bytes_per_row: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of output rows whose im2col columns fit COLS_BYTES (one row at least)."""
    step = max(1, COLS_BYTES // max(bytes_per_row, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def windows(xp: np.ndarray, kernel: Pair, stride: Pair, dil: Pair, out_hw: Pair) -> np.ndarray:
    """The read-only (C, kh, kw, Ho, Wo, N) view of every window of a padded (C, Hp, Wp, N) array."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dil, out_hw
    c, _, _, n = xp.shape
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (c, kh, kw, ho, wo, n), (s0, s1 * dh, s2 * dw, s1 * sh, s2 * sw, s3),
                      writeable=False)


def window_cells(xp: np.ndarray, i: int, j: int, stride: Pair, dil: Pair, out_hw: Pair) -> np.ndarray:
    """The writeable (C, Ho, Wo, N) view of the cells that offset (i, j) of every window reads.

    The same cells as windows(...)[:, i, j], by plain slicing: numpy adds into it about 8% faster
    than into an as_strided view, whose overlap it has to check.
    """
    (sh, sw), (dh, dw), (ho, wo) = stride, dil, out_hw
    return xp[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]


def im2col(xp: np.ndarray, kernel: Pair, stride: Pair, dil: Pair, out_hw: Pair) -> np.ndarray:
    """(C*kh*kw, Ho*Wo*N) columns, rows ordered as ONNX weights (c, i, j), so W.reshape(C_out, -1) @ cols.

    Read-only: a 1x1 kernel of stride 1 gets the image itself as its columns, a view of xp where xp's
    rows are contiguous (the 1x1 convs of MobileNet and EfficientNet blocks: no copy to make).
    """
    if tuple(kernel) == (1, 1) and tuple(stride) == (1, 1):
        return xp.reshape(xp.shape[0], -1)
    win = windows(xp, kernel, stride, dil, out_hw)
    c, kh, kw, ho, wo, n = win.shape
    cols = np.empty(win.shape, xp.dtype)
    np.copyto(cols, win)
    return cols.reshape(c * kh * kw, ho * wo * n)


def add_windows(into: np.ndarray, cols: np.ndarray, stride: Pair, dil: Pair) -> None:
    """into[window cells] += cols: the transpose of `windows`, for (C, kh, kw, Ho, Wo, N) values."""
    _, kh, kw, ho, wo, _ = cols.shape
    for i in range(kh):
        for j in range(kw):
            cells = window_cells(into, i, j, stride, dil, (ho, wo))
            cells += cols[:, i, j]


def col2im(cols: np.ndarray, padded_hw: Pair, stride: Pair, dil: Pair) -> np.ndarray:
    """A new padded (C, Hp, Wp, N) image where each cell sums the window values that cover it.

    cols may be any (C, kh, kw, Ho, Wo, N) array, a broadcast view included.
    """
    c, kh, kw, ho, wo, n = cols.shape
    hp, wp = padded_hw
    if tuple(stride) == (kh, kw) and tuple(dil) == (1, 1) and (hp, wp) == (ho * kh, wo * kw):
        # Windows tile the image exactly (2/2 pooling, patchify convs): one transposing copy, and none
        # for a 1x1 kernel, whose contiguous columns already are the image (the result may be cols)
        return np.ascontiguousarray(cols.transpose(0, 3, 1, 4, 2, 5)).reshape(c, hp, wp, n)
    xp = np.zeros((c, hp, wp, n), cols.dtype)
    add_windows(xp, cols, stride, dil)
    return xp
