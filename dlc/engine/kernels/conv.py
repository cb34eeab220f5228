"""conv and dwconv (one kernel: dwconv resolves to a conv with groups = C), and upconv.

Both run on the (C, H, W, N) layout of dlc.engine.kernels.im2col with one matrix product per group:
conv forward is im2col then W @ cols, its input gradient W.T @ dy then col2im; upconv (ONNX
ConvTranspose) is the same pair of steps the other way round.
"""

from __future__ import annotations

import numpy as np

from dlc.engine.kernels import kernel
from dlc.engine.kernels.im2col import col2im, crop_chwn, from_chwn, im2col, pad_chwn, to_chwn
from dlc.layers.spatial import window_out

# Columns per piece of a weight-gradient product. One OpenBLAS call over a long inner dimension
# with a thin result ran about 4x slower than the same product cut into pieces (numpy-speed.md).
CHUNK = 4096


def grouped(m: np.ndarray, groups: int) -> np.ndarray:
    """(G, rows/G, cols) view of a (rows, cols) matrix: group g owns a contiguous block of rows."""
    return m.reshape(groups, m.shape[0] // groups, m.shape[1])


def matmul_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b per group on (G, r, k) and (G, k, c) stacks, as one (G*r, c) matrix."""
    if a.shape[0] == 1:
        return a[0] @ b[0]
    return np.matmul(a, b).reshape(a.shape[0] * a.shape[1], b.shape[2])


def outer_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T per group for (G, r, P) and (G, c, P) stacks with a long P, summed in column pieces."""
    p = a.shape[2]
    out = np.matmul(a[:, :, :CHUNK], b[:, :, :CHUNK].transpose(0, 2, 1))
    for s in range(CHUNK, p, CHUNK):
        out += np.matmul(a[:, :, s:s + CHUNK], b[:, :, s:s + CHUNK].transpose(0, 2, 1))
    return out


@kernel("conv", "dwconv")
def conv(attrs, params, state, xs, ctx):
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    kernel_hw, stride, dil, pads = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    g, c_out = attrs["groups"], attrs["channels"]
    ho = window_out(h, kernel_hw[0], stride[0], dil[0], pads[0], pads[2])
    wo = window_out(w, kernel_hw[1], stride[1], dil[1], pads[1], pads[3])
    xp = pad_chwn(x, pads)
    cols = grouped(im2col(xp, kernel_hw, stride, dil, (ho, wo)), g)
    weight = params["W"]
    wm = grouped(weight.reshape(c_out, -1).astype(x.dtype, copy=False), g)
    y = matmul_groups(wm, cols)
    if attrs["bias"]:
        y += params["b"].astype(x.dtype, copy=False)[:, None]

    def backward(dy):
        d = grouped(to_chwn(dy).reshape(c_out, -1), g)
        grads = {"W": outer_sum(d, cols).reshape(weight.shape)}
        if attrs["bias"]:
            grads["b"] = d.reshape(c_out, -1).sum(axis=1)
        dcols = matmul_groups(wm.transpose(0, 2, 1), d)
        dxp = col2im(dcols.reshape(c, *kernel_hw, ho, wo, n), xp.shape[1:3], kernel_hw, stride, dil)
        return [from_chwn(crop_chwn(dxp, pads))], grads

    return from_chwn(y.reshape(c_out, ho, wo, n)), backward


@kernel("upconv")
def upconv(attrs, params, state, xs, ctx):
    """ONNX ConvTranspose: every input pixel adds W[c_in] * x into its window of the output; the
    full output is cropped by the pads (output_padding is not offered)."""
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    (kh, kw), stride, dil, pads = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    g, c_out = attrs["groups"], attrs["channels"]
    full_hw = ((h - 1) * stride[0] + dil[0] * (kh - 1) + 1, (w - 1) * stride[1] + dil[1] * (kw - 1) + 1)
    weight = params["W"]
    # (C_in, C_out/G * kh * kw) -> per group (C_out/G * kh * kw, C_in/G): rows ordered (c_out, i, j).
    wm = grouped(weight.reshape(c, -1).astype(x.dtype, copy=False), g)
    xg = grouped(x.reshape(c, -1), g)
    cols = matmul_groups(wm.transpose(0, 2, 1), xg)
    y = crop_chwn(col2im(cols.reshape(c_out, kh, kw, h, w, n), full_hw, (kh, kw), stride, dil), pads)
    if attrs["bias"]:
        y += params["b"].astype(x.dtype, copy=False)[:, None, None, None]

    def backward(dy):
        d = to_chwn(dy)
        dcols = grouped(im2col(pad_chwn(d, pads), (kh, kw), stride, dil, (h, w)), g)
        grads = {"W": outer_sum(xg, dcols).reshape(weight.shape)}
        if attrs["bias"]:
            grads["b"] = d.reshape(c_out, -1).sum(axis=1)
        dx = matmul_groups(wm, dcols)
        return [from_chwn(dx.reshape(c, h, w, n))], grads

    return from_chwn(y), backward
