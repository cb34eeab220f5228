"""conv and dwconv (one kernel: dwconv resolves to a conv with groups = C), and upconv.

On a signal or a volume, conv runs by its image kernel (dlc/engine/kernels/ranks.py).

Both run on the (C, H, W, N) layout of dlc.engine.kernels.im2col with one matrix product per group:
conv forward is im2col then W @ cols, its input gradient W.T @ dy then col2im; upconv (ONNX
ConvTranspose) is the same pair of steps the other way round. Layers whose columns would exceed
COLS_BYTES go through in bands of rows, so memory stays bounded whatever the image size. Depthwise
convs (groups = C) make their columns a few channels at a time; a strided one sums weighted window
views for its input gradient.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, Kernel, kernel
from dlc.engine.kernels.im2col import (add_windows, col2im, crop_chwn, from_chwn, im2col, pad_chwn,
                                       row_bands, span, to_chwn, window_cells, windows)
from dlc.engine.kernels.ranks import any_rank, depth_into_batch, depth_out_of_batch, depth_slices, image_attrs
from dlc.layers import Shape
from dlc.layers.spatial import Pair, window_out

# (d, need_dx) -> (gradient of the padded input or None without need_dx, gradient of W), all
# (C, H, W, N) inside the engine
ConvBackward = Callable[[np.ndarray, bool], tuple[np.ndarray | None, np.ndarray]]

# Column bytes of a block of depthwise channels: small enough to stay in cache between the products
# that read them (EfficientNet's dwconvs at batch 64 measured fastest with 1-4 channels, 0.5-2 MB).
DEPTHWISE_BLOCK_BYTES = 1 << 20

# blas_piece: the most multiply-adds, and the fewest columns, of one piece of a thin matrix product.
BLAS_PIECE_MACS = 1_000_000
MIN_BLAS_PIECE = 1024


def grouped(m: np.ndarray, groups: int) -> np.ndarray:
    """(G, rows/G, cols) view of a (rows, cols) matrix: group g owns a contiguous block of rows."""
    return m.reshape(groups, m.shape[0] // groups, m.shape[1])


def matmul_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b per group on (G, r, k) and (G, k, c) stacks, as one (G*r, c) matrix; a long, thin product
    in pieces of c (blas_piece)."""
    (g, r, k), c = a.shape, b.shape[2]
    piece = blas_piece(r * k, c)
    if piece == c:
        return a[0] @ b[0] if g == 1 else np.matmul(a, b).reshape(g * r, c)
    out = np.empty((g, r, c), np.result_type(a, b))
    for s in range(0, c, piece):
        np.matmul(a, b[:, :, s:s + piece], out=out[:, :, s:s + piece])
    return out.reshape(g * r, c)


def outer_sum(a: np.ndarray, b: np.ndarray, into: np.ndarray) -> None:
    """into += a @ b.T per group, for (G, r, P) and (G, c, P) stacks with a long P (weight gradients).

    The operand with more rows goes on the left: OpenBLAS measured 1.2-1.6x faster that way on these
    thin results (LeNet-5's 16x150 gradient: 0.24 ms against 0.39 ms). A result of few entries goes
    in pieces of P (blas_piece).
    """
    piece = blas_piece(a.shape[1] * b.shape[1], a.shape[2])
    for s in range(0, a.shape[2], piece):
        pa, pb = a[:, :, s:s + piece], b[:, :, s:s + piece]
        if a.shape[1] >= b.shape[1]:
            into += np.matmul(pa, pb.transpose(0, 2, 1))
        else:
            into += np.matmul(pb, pa.transpose(0, 2, 1)).transpose(0, 2, 1)


def blas_piece(macs_per_column: int, length: int) -> int:
    """How many of `length` columns one matrix product takes when a thin product runs in pieces.

    OpenBLAS (one thread, this machine's EPYC) is several times faster on thin float32 products of
    up to about a million multiply-adds. LeNet-5's first conv, 6x25 weights against 50,176 columns:
    the weight gradient took 3.3 ms as one product and 0.8 ms in pieces of 4,096 columns, the forward
    product 0.60 against 0.30 ms; pieces of 8,192 were slow again. Wider products (16x150) gained
    nothing at any piece size, so pieces under MIN_BLAS_PIECE columns are not taken.
    """
    piece = 1 << max(0, (BLAS_PIECE_MACS // max(macs_per_column, 1)).bit_length() - 1)
    return piece if MIN_BLAS_PIECE <= piece < length else length


def scatter(bands: list[tuple[int, int]], band_windows: Callable[[int, int], np.ndarray], shape: Shape,
            dtype: np.dtype, stride: Pair, dil: Pair) -> np.ndarray:
    """A new (C, Hp, Wp, N) image summing the window values each band yields as (C, kh, kw, rows, Wo, N),
    where band (r0, r1) covers window rows r0..r1-1."""
    if len(bands) == 1:
        return col2im(band_windows(*bands[0]), (shape[1], shape[2]), stride, dil)
    out = np.zeros(shape, dtype)
    for r0, r1 in bands:
        cols = band_windows(r0, r1)
        top = r0 * stride[0]
        add_windows(out[:, top:top + span(r1 - r0, cols.shape[1], stride[0], dil[0])], cols, stride, dil)
    return out


def volume_conv(image_conv: Kernel, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray],
                ctx: Ctx) -> Forward:
    """A conv over (D, H, W) as the sum over the kernel's depth offsets i of image convs with W[:, :, i],
    each over the depth slices offset i reads (every output depth at once, stacked into the batch)."""
    x = xs[0]
    n, _, d, _, _ = x.shape
    (kd, *_), (sd, *_), (dd, *_), pads = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    front, back = pads[0], pads[3]
    xp = np.pad(x, ((0, 0), (0, 0), (front, back), (0, 0), (0, 0))) if front or back else x
    do = window_out(d, kd, sd, dd, front, back)
    image = dict(image_attrs(attrs, slice(1, None)), bias=False)
    weight = params["W"]
    taps = [depth_slices(i * dd, sd, do) for i in range(kd)]
    y, backwards = None, []
    for i, cells in enumerate(taps):
        yi, back_i = image_conv(image, {"W": weight[:, :, i]}, state, [depth_into_batch(xp[:, :, cells])], ctx)
        if y is None:
            y = yi  # the image kernel's own buffer, which its backward does not read
        else:
            y += yi
        backwards.append(back_i)
    y = depth_out_of_batch(y, n)
    if attrs["bias"]:
        y = y + params["b"].astype(x.dtype, copy=False)[:, None, None, None]

    def backward(dy):
        d_images = depth_into_batch(dy)
        dw = np.empty(weight.shape, x.dtype)
        dxp = np.zeros(xp.shape, x.dtype) if ctx.need_dx else None
        for i, (cells, back_i) in enumerate(zip(taps, backwards)):
            (dxi,), grads = back_i(d_images)
            dw[:, :, i] = grads["W"]
            if dxp is not None:
                dxp[:, :, cells] += depth_out_of_batch(dxi, n)
        grads = {"W": dw}
        if attrs["bias"]:
            grads["b"] = dy.sum(axis=(0, 2, 3, 4))
        return [None if dxp is None else dxp[:, :, front:front + d]], grads

    return y, backward


@kernel("conv", "dwconv")
@any_rank(volume_conv)
def conv(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    (kh, kw), stride, dil, pads = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    ho = window_out(h, kh, stride[0], dil[0], pads[0], pads[2])
    wo = window_out(w, kw, stride[1], dil[1], pads[1], pads[3])
    xp = pad_chwn(x, pads)
    weight = params["W"].astype(x.dtype, copy=False)
    g, c_out = attrs["groups"], attrs["channels"]
    lowered = depthwise if g == c > 1 else columns
    y, lowered_backward = lowered(xp, weight, g, (ho, wo), stride, dil)
    if attrs["bias"]:
        y += params["b"].astype(x.dtype, copy=False)[:, None, None, None]

    def backward(dy):
        d = to_chwn(dy)
        dxp, dw = lowered_backward(d, ctx.need_dx)
        grads = {"W": dw}
        if attrs["bias"]:
            grads["b"] = d.reshape(c_out, -1).sum(axis=1)
        return [None if dxp is None else from_chwn(crop_chwn(dxp, pads))], grads

    return from_chwn(y), backward


def columns(xp: np.ndarray, weight: np.ndarray, g: int, out_hw: Pair, stride: Pair,
            dil: Pair) -> tuple[np.ndarray, ConvBackward]:
    """A convolution as one matrix product per group over im2col columns: (C_out, Ho, Wo, N) and its
    backward d -> (gradient of xp, gradient of W)."""
    c, _, _, n = xp.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = out_hw
    wm = grouped(weight.reshape(c_out, -1), g)
    bands = row_bands(ho, c * kh * kw * wo * n * xp.itemsize)

    def band_cols(r0, r1):
        top = r0 * stride[0]
        rows = xp[:, top:top + span(r1 - r0, kh, stride[0], dil[0])]
        return grouped(im2col(rows, (kh, kw), stride, dil, (r1 - r0, wo)), g)

    kept = band_cols(0, ho) if len(bands) == 1 else None
    if kept is not None:
        y = matmul_groups(wm, kept)
    else:
        y = np.empty((c_out, ho * wo * n), xp.dtype)
        for r0, r1 in bands:
            y[:, r0 * wo * n:r1 * wo * n] = matmul_groups(wm, band_cols(r0, r1))

    def backward(d, need_dx):
        d = grouped(d.reshape(c_out, -1), g)
        dw = np.zeros(wm.shape, xp.dtype)
        wt = wm.transpose(0, 2, 1)
        if not need_dx:
            for r0, r1 in bands:
                outer_sum(d[:, :, r0 * wo * n:r1 * wo * n], kept if kept is not None else band_cols(r0, r1), dw)
            return None, dw.reshape(weight.shape)

        def band_dcols(r0, r1):
            part = d[:, :, r0 * wo * n:r1 * wo * n]
            outer_sum(part, kept if kept is not None else band_cols(r0, r1), dw)
            return matmul_groups(wt, part).reshape(c, kh, kw, r1 - r0, wo, n)

        dxp = scatter(bands, band_dcols, xp.shape, xp.dtype, stride, dil)
        return dxp, dw.reshape(weight.shape)

    return y.reshape(c_out, ho, wo, n), backward


def channel_blocks(c: int, bytes_per_channel: int) -> list[slice]:
    """Blocks of the c channels whose columns take about DEPTHWISE_BLOCK_BYTES (one channel at least)."""
    block = max(1, DEPTHWISE_BLOCK_BYTES // bytes_per_channel)
    return [slice(s, min(s + block, c)) for s in range(0, c, block)]


def block_columns(win: np.ndarray, cb: slice, group: int = 1) -> np.ndarray:
    """(channels of cb, group*kh*kw, Ho*Wo*N) columns of a (C*group, kh, kw, Ho, Wo, N) window view:
    channel k of cb owns the windows of channels k*group .. k*group+group-1, rows ordered (g, i, j)."""
    _, _, _, ho, wo, n = win.shape
    cols = np.ascontiguousarray(win[cb.start * group:cb.stop * group])
    return cols.reshape(cb.stop - cb.start, -1, ho * wo * n)


def depthwise(xp: np.ndarray, weight: np.ndarray, g: int, out_hw: Pair, stride: Pair,
              dil: Pair) -> tuple[np.ndarray, ConvBackward]:
    """groups = C (dwconv, MobileNet): each output channel reads one input channel. Channels go in
    blocks whose (kh*kw, Ho*Wo*N) columns stay in cache: the output is one stacked product of each
    channel's weights with its columns, W's gradient one of the columns with dy (as G products over
    all the columns at once it ran 10x slower than a dense conv of the same size; a weighted sum of the
    kh*kw window views took 1.5-1.8x as long forward, and its einsum for W's gradient about 1.5x)."""
    c, hp, wp, n = xp.shape
    c_out, _, kh, kw = weight.shape
    mult, taps, positions = c_out // c, kh * kw, out_hw[0] * out_hw[1] * n
    wm = weight.reshape(c, mult, taps)
    win = windows(xp, (kh, kw), stride, dil, out_hw)
    blocks = channel_blocks(c, taps * positions * xp.itemsize)
    y = np.empty((c, mult, positions), xp.dtype)
    for cb in blocks:
        np.matmul(wm[cb], block_columns(win, cb), out=y[cb])

    def backward(d, need_dx):
        # need_dx is not read: a depthwise conv is no network's first layer in the zoo
        dw = np.empty((c, taps, mult), xp.dtype)
        for cb in blocks:
            np.matmul(block_columns(win, cb), d.reshape(c, mult, positions)[cb].transpose(0, 2, 1), out=dw[cb])
        dw = dw.transpose(0, 2, 1).reshape(weight.shape)
        if tuple(stride) == (1, 1):
            # At stride 1 the input gradient is dy's full correlation with the flipped kernel, the
            # forward's products again: 96@14x14 at batch 64 took 6.6 ms as a sum of window views, 3.9
            # here. At stride 2 the same by phases of the input's rows and columns measured slower.
            ph, pw = dil[0] * (kh - 1), dil[1] * (kw - 1)
            dpad = pad_chwn(d.reshape(c * mult, *out_hw, n), (ph, pw, ph, pw))
            dwin = windows(dpad, (kh, kw), (1, 1), dil, (hp, wp))
            # contiguous: numpy's matmul leaves BLAS for its own 5x slower loop on a reversed view
            flipped = np.ascontiguousarray(weight.reshape(c, mult, kh, kw)[:, :, ::-1, ::-1]).reshape(c, 1, -1)
            dxp = np.empty((c, 1, hp * wp * n), xp.dtype)
            for cb in channel_blocks(c, mult * taps * hp * wp * n * xp.itemsize):
                np.matmul(flipped[cb], block_columns(dwin, cb, mult), out=dxp[cb])
            return dxp.reshape(xp.shape), dw
        d = d.reshape(c, mult, *out_hw, n)
        dxp = np.zeros(xp.shape, xp.dtype)
        term = np.empty((min(blocks[0].stop, c), *out_hw, n), xp.dtype)
        for cb in blocks:
            t = term[:cb.stop - cb.start]
            for k, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
                cells = window_cells(dxp[cb], i, j, stride, dil, out_hw)
                for m in range(mult):
                    np.multiply(d[cb, m], wm[cb, m, k, None, None, None], out=t)
                    cells += t
        return dxp, dw

    return y.reshape(c_out, *out_hw, n), backward


@kernel("upconv")
def upconv(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """ONNX ConvTranspose: every input pixel adds x * W[c_in] into its window of the output; the full
    output, with `outpad` more rows and columns that no window reaches, is then cropped by the pads."""
    x = to_chwn(xs[0])
    c, h, w, n = x.shape
    (kh, kw), stride, dil, pads = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pads"]
    g, c_out, op = attrs["groups"], attrs["channels"], attrs["outpad"]
    full = (c_out, span(h, kh, stride[0], dil[0]) + op, span(w, kw, stride[1], dil[1]) + op, n)
    weight = params["W"]
    # Per group (C_in/G, C_out/G * kh * kw): its columns are ordered (c_out, i, j) like im2col's rows.
    wm = grouped(weight.reshape(c, -1).astype(x.dtype, copy=False), g)
    xg = grouped(x.reshape(c, -1), g)
    # Bands of input rows: each input row fills one row of windows of the output.
    bands = row_bands(h, c_out * kh * kw * w * n * x.itemsize)

    def band_outputs(r0, r1):
        return matmul_groups(wm.transpose(0, 2, 1), xg[:, :, r0 * w * n:r1 * w * n]).reshape(
            c_out, kh, kw, r1 - r0, w, n)

    y = crop_chwn(scatter(bands, band_outputs, full, x.dtype, stride, dil), pads)
    if attrs["bias"]:
        y += params["b"].astype(x.dtype, copy=False)[:, None, None, None]

    def backward(dy):
        d = to_chwn(dy)
        dfull = pad_chwn(d, pads)
        dw = np.zeros(wm.shape, x.dtype)
        dx = np.empty((c, h * w * n), x.dtype)
        for r0, r1 in bands:
            top = r0 * stride[0]
            rows = dfull[:, top:top + span(r1 - r0, kh, stride[0], dil[0])]
            dcols = grouped(im2col(rows, (kh, kw), stride, dil, (r1 - r0, w)), g)
            part = xg[:, :, r0 * w * n:r1 * w * n]
            outer_sum(part, dcols, dw)
            dx[:, r0 * w * n:r1 * w * n] = matmul_groups(wm, dcols)
        grads = {"W": dw.reshape(weight.shape)}
        if attrs["bias"]:
            grads["b"] = d.reshape(c_out, -1).sum(axis=1)
        return [from_chwn(dx.reshape(c, h, w, n))], grads

    return from_chwn(y), backward
