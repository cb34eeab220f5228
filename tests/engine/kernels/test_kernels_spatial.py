"""conv, dwconv, upconv, maxpool, avgpool, gap, gmp, upsample kernels.

Each mode is checked three ways: the backward pass against central differences in float64, the
forward pass against a plain loop written here from the definition, and against onnxruntime running
the matching ONNX operator (which pins the conventions: ceil_mode, count_include_pad=0,
ConvTranspose pads, Resize nearest).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dlc.engine import allocator
from dlc.engine.kernels import KERNELS, Ctx, conv, im2col
from dlc.layers import KINDS, Signal
from kernel_checks import assert_gradients, onnx_run, random_arrays, resolve


def node(kind: str, in_shape, **written):
    """(output shape, resolved attrs, parameter shapes) as the compiler would make them."""
    attrs, param_shapes, _ = resolve(kind, [in_shape], **written)
    return KINDS[kind].resolve(attrs, [in_shape])[0], attrs, param_shapes


# The registry lists `pad` with its type marker rather than a default, so every case writes it.
def conv_opts(channels, kernel=(3, 3), stride=None, pad=0, **options):
    return {"channels": channels, "kernel": kernel, "stride": stride, "pad": pad, **options}


def pool_opts(kernel, stride=None, pad=0, **options):
    return {"kernel": kernel, "stride": stride, "pad": pad, **options}


def run(kind, attrs, x, params, training=False):
    return KERNELS[kind](attrs, params, {}, [x], Ctx(training=training))


# ---------------------------------------------------------------- independent references

def conv_loop(x, W, b, stride, pads, dil, groups):
    """Cross-correlation from the definition, one output cell at a time."""
    n, c, h, w = x.shape
    c_out, cg, kh, kw = W.shape
    t, l, bo, r = pads
    xp = np.zeros((n, c, h + t + bo, w + l + r))
    xp[:, :, t:t + h, l:l + w] = x
    ho = (h + t + bo - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + l + r - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, c_out, ho, wo))
    per_group = c_out // groups
    for s in range(n):
        for o in range(c_out):
            ci = (o // per_group) * cg
            for i in range(ho):
                for j in range(wo):
                    patch = xp[s, ci:ci + cg, i * stride[0]:i * stride[0] + dil[0] * (kh - 1) + 1:dil[0],
                               j * stride[1]:j * stride[1] + dil[1] * (kw - 1) + 1:dil[1]]
                    y[s, o, i, j] = np.sum(patch * W[o]) + (b[o] if b is not None else 0.0)
    return y


def conv_transpose_loop(x, W, b, stride, pads, dil, groups, outpad=0):
    """Transposed convolution as a scatter: each input cell adds x * W[c_in] into its output window; the
    output padding adds rows and columns at the bottom and right that no window reaches (bias only)."""
    n, c, h, w = x.shape
    _, og, kh, kw = W.shape
    c_out = og * groups
    full = np.zeros((n, c_out, (h - 1) * stride[0] + dil[0] * (kh - 1) + 1 + outpad,
                     (w - 1) * stride[1] + dil[1] * (kw - 1) + 1 + outpad))
    cg = c // groups
    for s in range(n):
        for ci in range(c):
            o0 = (ci // cg) * og
            for i in range(h):
                for j in range(w):
                    for p in range(kh):
                        for q in range(kw):
                            full[s, o0:o0 + og, i * stride[0] + p * dil[0], j * stride[1] + q * dil[1]] += \
                                x[s, ci, i, j] * W[ci, :, p, q]
    t, l, bo, r = pads
    y = full[:, :, t:full.shape[2] - bo, l:full.shape[3] - r]
    return y + (b[None, :, None, None] if b is not None else 0.0)


def pool_loop(x, kernel, stride, pads, out_hw, mode, dil=(1, 1)):
    """Each window reduced over its cells inside the unpadded input (max, or mean over those cells); a
    dilated window's cells are dil apart."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            r0, c0 = i * stride[0] - pads[0], j * stride[1] - pads[1]
            rows = [r for r in range(r0, r0 + dil[0] * kernel[0], dil[0]) if 0 <= r < h]
            cols = [q for q in range(c0, c0 + dil[1] * kernel[1], dil[1]) if 0 <= q < w]
            cells = x[:, :, rows][:, :, :, cols]
            y[:, :, i, j] = cells.max(axis=(2, 3)) if mode == "max" else cells.mean(axis=(2, 3))
    return y


def distinct_values(shape, rng):
    """Values at least 0.01 apart, so no max-pool window has a tie for finite differences to cross."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5


def chwn_view(x):
    """The same values as x, laid out batch-innermost as the spatial kernels hand them on."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


# ---------------------------------------------------------------- conv and dwconv

CONV_CASES = [
    # (kind, id, input C@HxW, options as written)
    ("conv", "3x3", (3, 6, 7), conv_opts(4)),
    ("conv", "stride2-pad1", (2, 7, 7), conv_opts(3, stride=(2, 2), pad=1)),
    ("conv", "same-asymmetric", (2, 6, 6), conv_opts(3, stride=(2, 2), pad="same")),
    ("conv", "same-even-kernel", (2, 5, 5), conv_opts(2, kernel=(2, 4), pad="same")),
    ("conv", "dilation2", (2, 7, 8), conv_opts(3, dil=2, pad=1)),
    ("conv", "groups2", (4, 5, 5), conv_opts(6, groups=2, pad=1)),
    ("conv", "no-bias", (3, 5, 5), conv_opts(2, bias=False)),
    ("conv", "rect-stride", (2, 7, 6), conv_opts(3, kernel=(3, 2), stride=(2, 1))),
    ("conv", "1x1", (3, 4, 4), conv_opts(5, kernel=(1, 1))),
    ("conv", "tiling-patchify", (2, 6, 4), conv_opts(3, kernel=(2, 2), stride=(2, 2))),
    ("dwconv", "depthwise", (3, 6, 6), {"kernel": (3, 3), "stride": None, "pad": 1}),
    ("dwconv", "depthwise-mult3", (2, 5, 6), {"kernel": (3, 3), "stride": None, "pad": 1, "mult": 3}),
    ("dwconv", "depthwise-mult2-stride2-same", (2, 7, 7), {"kernel": (3, 3), "stride": (2, 2), "pad": "same",
                                                           "mult": 2}),
    ("dwconv", "depthwise-dil2-nobias", (2, 7, 7), {"kernel": (3, 3), "stride": None, "pad": 0, "dil": 2,
                                                     "bias": False}),
]
UPCONV_CASES = [
    ("k3", (3, 4, 4), conv_opts(2)),
    ("k2-stride2", (2, 3, 4), conv_opts(3, kernel=(2, 2), stride=(2, 2))),
    ("k3-stride2-pad1", (2, 4, 3), conv_opts(3, stride=(2, 2), pad=1)),
    ("k4-stride2-pad1", (2, 3, 3), conv_opts(2, kernel=(4, 4), stride=(2, 2), pad=1)),
    ("dilation2", (2, 3, 4), conv_opts(2, dil=2)),
    ("groups2", (4, 3, 3), conv_opts(6, groups=2, stride=(2, 2))),
    ("no-bias-rect", (2, 3, 4), conv_opts(3, kernel=(3, 2), stride=(1, 2), bias=False)),
    # output padding (issue 28): pix2pix's 3x3/2 pad=1 outpad=1 doubles the map; more outpad than pad
    # reaches past the full output (ONNX's corpus test_operator_convtranspose: 3x3/3 pad=1 outpad=2)
    ("outpad1-stride2-pad1", (2, 3, 4), conv_opts(3, stride=(2, 2), pad=1, outpad=1)),
    ("outpad2-stride3-pad1-no-bias", (2, 3, 3), conv_opts(2, stride=(3, 3), pad=1, outpad=2, bias=False)),
    ("outpad1-dilation2-rect", (2, 3, 3), conv_opts(2, kernel=(3, 2), stride=(2, 3), dil=2, outpad=1)),
]
ids = pytest.mark.parametrize


@ids("kind,case,in_shape,opts", CONV_CASES, ids=[f"{c[0]}-{c[1]}" for c in CONV_CASES])
def test_conv_gradients(kind, case, in_shape, opts):
    rng = np.random.default_rng(1)
    _, attrs, shapes = node(kind, in_shape, **opts)
    assert_gradients(kind, attrs, random_arrays(shapes, rng), [rng.standard_normal((2, *in_shape))])


@ids("kind,case,in_shape,opts", CONV_CASES, ids=[f"{c[0]}-{c[1]}" for c in CONV_CASES])
def test_conv_forward_matches_loop_and_onnxruntime(kind, case, in_shape, opts):
    rng = np.random.default_rng(2)
    out_shape, a, shapes = node(kind, in_shape, **opts)
    x, p = rng.standard_normal((2, *in_shape)), random_arrays(shapes, rng)
    y, _ = run(kind, a, x, p)
    assert y.shape == (2, *out_shape)
    want = conv_loop(x, p["W"], p.get("b"), a["stride"], a["pads"], a["dilation"], a["groups"])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)

    x32, p32 = x.astype(np.float32), {k: v.astype(np.float32) for k, v in p.items()}
    y32, _ = run(kind, a, x32, p32)
    assert y32.dtype == np.float32
    (ref,) = onnx_run("Conv", [x32, p32["W"], p32.get("b")], kernel_shape=list(a["kernel"]),
                      strides=list(a["stride"]), dilations=list(a["dilation"]), pads=list(a["pads"]),
                      group=a["groups"])
    np.testing.assert_allclose(y32, ref, rtol=1e-5, atol=1e-5)


@ids("case,in_shape,opts", UPCONV_CASES, ids=[c[0] for c in UPCONV_CASES])
def test_upconv_gradients(case, in_shape, opts):
    rng = np.random.default_rng(4)
    _, attrs, shapes = node("upconv", in_shape, **opts)
    assert_gradients("upconv", attrs, random_arrays(shapes, rng), [rng.standard_normal((2, *in_shape))])


@ids("case,in_shape,opts", UPCONV_CASES, ids=[c[0] for c in UPCONV_CASES])
def test_upconv_forward_matches_loop_and_onnxruntime(case, in_shape, opts):
    rng = np.random.default_rng(5)
    out_shape, a, shapes = node("upconv", in_shape, **opts)
    x, p = rng.standard_normal((2, *in_shape)), random_arrays(shapes, rng)
    y, _ = run("upconv", a, x, p)
    assert y.shape == (2, *out_shape)
    want = conv_transpose_loop(x, p["W"], p.get("b"), a["stride"], a["pads"], a["dilation"], a["groups"],
                               a["outpad"])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)

    f32 = [v.astype(np.float32) for v in (x, p["W"], p.get("b")) if v is not None]
    (ref,) = onnx_run("ConvTranspose", f32 + [None] * (3 - len(f32)), kernel_shape=list(a["kernel"]),
                      strides=list(a["stride"]), dilations=list(a["dilation"]), pads=list(a["pads"]),
                      group=a["groups"], output_padding=[a["outpad"]] * 2)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_upconv_is_the_transpose_of_conv():
    # <conv(x), z> == <x, upconv(z)> for the same W and geometry: the definition of the transpose.
    rng = np.random.default_rng(6)
    geom = dict(kernel=(3, 3), stride=(2, 2), pad=1, bias=False)
    _, ca, _ = node("conv", (3, 7, 7), **conv_opts(4, **geom))
    _, ua, _ = node("upconv", (4, 4, 4), **conv_opts(3, **geom))
    W = rng.standard_normal((4, 3, 3, 3))
    x, z = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((2, 4, 4, 4))
    cx, _ = run("conv", ca, x, {"W": W})
    uz, _ = run("upconv", ua, z, {"W": W})
    assert uz.shape == x.shape
    assert np.isclose(np.sum(cx * z), np.sum(x * uz), rtol=1e-12)


def test_lenet_conv1_in_float32():
    # LeNet-5's first layer on MNIST: 6@5x5 pad 2 keeps 28x28 and has 6*1*5*5 + 6 = 156 parameters.
    out, a, shapes = node("conv", (1, 28, 28), **conv_opts(6, kernel=(5, 5), pad=2))
    p = random_arrays(shapes, np.random.default_rng(0), np.float32)
    y, backward = run("conv", a, np.zeros((64, 1, 28, 28), np.float32), p, training=True)
    assert out == (6, 28, 28) and y.shape == (64, 6, 28, 28)
    assert sum(v.size for v in p.values()) == 156
    (dx,), grads = backward(np.ones_like(y))
    assert dx.dtype == grads["W"].dtype == grads["b"].dtype == np.float32
    # A zero input: each bias gradient counts the output cells it feeds, 64*28*28; W gets nothing.
    np.testing.assert_array_equal(grads["b"], np.full(6, 64 * 28 * 28, np.float32))
    np.testing.assert_array_equal(grads["W"], 0)


@ids("c_in,c_out", [(2, 3), (1, 20)])
def test_weight_gradient_by_einsum(c_in, c_out):
    # Both orientations of the weight-gradient product: more im2col rows than output channels
    # (2*3*3 = 18 > 3), and fewer (1*3*3 = 9 < 20).
    rng = np.random.default_rng(3)
    _, a, shapes = node("conv", (c_in, 40, 40), **conv_opts(c_out, pad=1))
    x, p = rng.standard_normal((4, c_in, 40, 40)), random_arrays(shapes, rng)
    y, backward = run("conv", a, x, p, training=True)
    dy = rng.standard_normal(y.shape)
    _, grads = backward(dy)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros_like(p["W"])
    for i in range(3):
        for j in range(3):
            want[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + 40, j:j + 40])
    np.testing.assert_allclose(grads["W"], want, rtol=1e-10)


def test_1x1_conv_reads_its_input_as_columns_without_a_copy():
    # A pointwise conv (MobileNet, EfficientNet) is one matrix product over the image itself: its
    # columns are a view of the batch-innermost input, and its input gradient W.T @ dy is not copied
    # again by col2im; the values are the per-pixel product written out by einsum.
    rng = np.random.default_rng(4)
    _, a, shapes = node("conv", (3, 5, 4), **conv_opts(6, kernel=(1, 1), bias=False))
    x, p = chwn_view(rng.standard_normal((2, 3, 5, 4))), random_arrays(shapes, rng)
    xp = np.ascontiguousarray(x.transpose(1, 2, 3, 0))
    assert np.shares_memory(im2col.im2col(xp, (1, 1), (1, 1), (1, 1), (5, 4)), xp)
    dcols = rng.standard_normal((3, 1, 1, 5, 4, 2))
    assert np.shares_memory(im2col.col2im(dcols, (5, 4), (1, 1), (1, 1)), dcols)
    y, backward = run("conv", a, x, p, training=True)
    w = p["W"][:, :, 0, 0]
    np.testing.assert_allclose(y, np.einsum("oc,nchw->nohw", w, x), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    (dx,), grads = backward(dy)
    np.testing.assert_allclose(dx, np.einsum("oc,nohw->nchw", w, dy), rtol=1e-12)
    np.testing.assert_allclose(grads["W"][:, :, 0, 0], np.einsum("nohw,nchw->oc", dy, x), rtol=1e-12)


@ids("kind,case,in_shape,opts", [CONV_CASES[1], CONV_CASES[4], CONV_CASES[5], CONV_CASES[11], CONV_CASES[12]]
     + [("dwconv", "depthwise-5-channels", (5, 6, 6), {"kernel": (3, 3), "stride": None, "pad": 1})]
     + [("upconv", *c) for c in UPCONV_CASES[2:6]], ids=lambda v: v if isinstance(v, str) else "")
def test_bands_and_blocks_give_the_same_results(monkeypatch, kind, case, in_shape, opts):
    # Layers too large for COLS_BYTES go through in bands of rows, depthwise convs in blocks of
    # channels; budgets of a row and of two channels' 3x3 columns (the last block short) must change
    # nothing.
    rng = np.random.default_rng(12)
    _, a, shapes = node(kind, in_shape, **opts)
    x, p = rng.standard_normal((3, *in_shape)), random_arrays(shapes, rng)
    y, backward = run(kind, a, x, p, training=True)
    dy = rng.standard_normal(y.shape)
    (dx,), grads = backward(dy)
    monkeypatch.setattr(im2col, "COLS_BYTES", 1)
    monkeypatch.setattr(conv, "DEPTHWISE_BLOCK_BYTES", 2 * 9 * y.nbytes // in_shape[0])
    yb, backward_b = run(kind, a, x, p, training=True)
    (dxb,), grads_b = backward_b(dy)
    np.testing.assert_allclose(yb, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dxb, dx, rtol=1e-12, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads_b[k], grads[k], rtol=1e-12, atol=1e-12)
    assert_gradients(kind, a, p, [x])


# ---------------------------------------------------------------- maxpool and avgpool

POOL_CASES = [
    ("2/2", (2, 6, 6), pool_opts((2, 2))),
    ("3/2", (2, 7, 7), pool_opts((3, 3), (2, 2))),
    ("3/2-pad1", (2, 6, 6), pool_opts((3, 3), (2, 2), pad=1)),
    ("3/2-ceil", (2, 6, 6), pool_opts((3, 3), (2, 2), ceil=True)),
    ("2/2-ceil-odd", (2, 5, 7), pool_opts((2, 2), ceil=True)),
    ("3/2-pad1-ceil", (1, 8, 8), pool_opts((3, 3), (2, 2), pad=1, ceil=True)),
    # ceil would add a 4th window starting in the right padding; the Caffe/PyTorch rule drops it.
    ("2/2-pad1-ceil-last-dropped", (1, 5, 5), pool_opts((2, 2), (2, 2), pad=1, ceil=True)),
    ("3/1-same", (2, 5, 5), pool_opts((3, 3), (1, 1), pad="same")),
    ("2/1-same-asymmetric", (2, 5, 4), pool_opts((2, 2), (1, 1), pad="same")),
    ("rect-3x2/2x1", (2, 7, 5), pool_opts((3, 2), (2, 1))),
    ("3/2-pad1x0", (2, 6, 7), pool_opts((3, 3), (2, 2), pad=(1, 0))),
]
# maxpool's dil= (issue 28), PyTorch's MaxPool2d dilation; avgpool has none
DILATED_POOL_CASES = [
    ("3/2-dil2-pad1", (2, 9, 9), pool_opts((3, 3), (2, 2), pad=1, dil=2)),
    ("2/1-dil3-ceil", (1, 8, 9), pool_opts((2, 2), (2, 2), dil=3, ceil=True)),
    ("rect-3x2/1-dil2-pad=1x0", (2, 7, 6), pool_opts((3, 2), (1, 1), pad=(1, 0), dil=2)),
]


@ids("kind", ["maxpool", "avgpool"])
@ids("case,in_shape,opts", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool_gradients(kind, case, in_shape, opts):
    _, a, _ = node(kind, in_shape, **opts)
    assert_gradients(kind, a, {}, [distinct_values((2, *in_shape), np.random.default_rng(7))])


@ids("kind", ["maxpool", "avgpool"])
@ids("case,in_shape,opts", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool_forward_matches_loop_and_onnxruntime(kind, case, in_shape, opts):
    out_shape, a, _ = node(kind, in_shape, **opts)
    x = np.random.default_rng(8).standard_normal((2, *in_shape))
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape)
    mode = "max" if kind == "maxpool" else "mean"
    np.testing.assert_allclose(y, pool_loop(x, a["kernel"], a["stride"], a["pads"], out_shape[1:], mode),
                               rtol=1e-12)
    op, extra = ("MaxPool", {}) if kind == "maxpool" else ("AveragePool", {"count_include_pad": 0})
    (ref,) = onnx_run(op, [x.astype(np.float32)], kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), ceil_mode=int(a["ceil"]), **extra)
    assert ref.shape == y.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@ids("case,in_shape,opts", DILATED_POOL_CASES, ids=[c[0] for c in DILATED_POOL_CASES])
def test_dilated_maxpool_matches_loop_onnxruntime_and_central_differences(case, in_shape, opts):
    out_shape, a, _ = node("maxpool", in_shape, **opts)
    x = distinct_values((2, *in_shape), np.random.default_rng(8))
    y, _ = run("maxpool", a, x, {})
    assert y.shape == (2, *out_shape)
    np.testing.assert_array_equal(y, pool_loop(x, a["kernel"], a["stride"], a["pads"], out_shape[1:], "max",
                                               a["dilation"]))
    (ref,) = onnx_run("MaxPool", [x.astype(np.float32)], kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), ceil_mode=int(a["ceil"]), dilations=list(a["dilation"]))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("maxpool", a, {}, [x])


def test_avgpool_divides_by_cells_inside_the_input():
    # 3/2 pad 1 on a 4x4, ONNX count_include_pad=0: ones stay ones (padding is not averaged in), and on
    # arange the corner window sees x[0:2, 0:2] = {0, 1, 4, 5}, mean 2.5.
    _, a, _ = node("avgpool", (1, 4, 4), **pool_opts((3, 3), (2, 2), pad=1))
    y, _ = run("avgpool", a, np.ones((1, 1, 4, 4)), {})
    np.testing.assert_array_equal(y, np.ones((1, 1, 2, 2)))
    y, _ = run("avgpool", a, np.arange(16.0).reshape(1, 1, 4, 4), {})
    assert y[0, 0, 0, 0] == 2.5


def test_maxpool_routes_tied_gradient_to_the_first_maximum():
    # A flat 4x4 block (MNIST's background): in each 2x2 window all four cells tie, and only the
    # top-left one, first in row-major order, receives the window's gradient.
    _, a, _ = node("maxpool", (1, 4, 4), **pool_opts((2, 2)))
    _, backward = run("maxpool", a, np.zeros((1, 1, 4, 4)), {}, training=True)
    (dx,), _ = backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx, want)


def test_tiling_maxpool_backward_routes_into_the_input_gradient_itself():
    # LeNet-5's 2/2 max pool on a float32 batch of 64 x 6@28x28 (1.2 MB): its windows tile the input,
    # so each window's gradient goes straight to its first maximum's cell of dx. Besides dx, backward
    # holds the batch-innermost dy (a quarter of dx) and two bool masks (an eighth): under 1.5 dx.
    # Per-window values first, then a col2im copy of them, took 2.4.
    rng = np.random.default_rng(41)
    x = np.round(2 * rng.standard_normal((64, 6, 28, 28))).astype(np.float32)  # ties, as MNIST has
    _, a, _ = node("maxpool", (6, 28, 28), **pool_opts((2, 2)))
    y, backward = run("maxpool", a, x, {}, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    tracemalloc.start()
    try:
        (dx,), _ = backward(dy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * x.nbytes
    # by a loop: each 2x2 window's gradient at its first maximum in row-major order
    want = np.zeros_like(x)
    for r in range(14):
        for c in range(14):
            cells = x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(64, 6, 4)
            first = cells.argmax(axis=2)
            for k in range(4):
                want[:, :, 2 * r + k // 2, 2 * c + k % 2] += np.where(first == k, dy[:, :, r, c], 0)
    np.testing.assert_array_equal(dx, want)


def test_overlapping_maxpool_tie_goes_to_each_windows_own_first_max():
    # 1x3/1 over the row [0, 5, 5, 0, 0]: windows [0,5,5] and [5,5,0] both pick column 1, window
    # [5,0,0] picks column 2. Gradients 1, 10, 100 land as 0, 11, 100, 0, 0.
    _, a, _ = node("maxpool", (1, 1, 5), **pool_opts((1, 3), (1, 1)))
    _, backward = run("maxpool", a, np.array([[[[0.0, 5.0, 5.0, 0.0, 0.0]]]]), {}, training=True)
    (dx,), _ = backward(np.array([[[[1.0, 10.0, 100.0]]]]))
    np.testing.assert_array_equal(dx, [[[[0.0, 11.0, 100.0, 0.0, 0.0]]]])


# ---------------------------------------------------------------- gap, gmp, upsample

@ids("kind,op", [("gap", "GlobalAveragePool"), ("gmp", "GlobalMaxPool")])
def test_global_pools(kind, op):
    out_shape, a, _ = node(kind, (3, 4, 5))
    x = distinct_values((2, 3, 4, 5), np.random.default_rng(9))
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape) == (2, 3)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)) if kind == "gap" else x.max(axis=(2, 3)), rtol=1e-12)
    (ref,) = onnx_run(op, [x.astype(np.float32)])
    np.testing.assert_allclose(y, ref.reshape(2, 3), rtol=1e-5, atol=1e-6)
    assert_gradients(kind, a, {}, [x])


@ids("kind,op", [("gap", "GlobalAveragePool"), ("gmp", "GlobalMaxPool")])
def test_global_pools_with_keep_give_c_at_1x1_as_onnx(kind, op):
    out_shape, a, _ = node(kind, (3, 4, 5), keep=True)
    x = distinct_values((2, 3, 4, 5), np.random.default_rng(10))
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape) == (2, 3, 1, 1)
    np.testing.assert_allclose(y, onnx_run(op, [x.astype(np.float32)])[0], rtol=1e-5, atol=1e-6)
    assert_gradients(kind, a, {}, [x])


def test_gmp_routes_tied_gradient_to_the_first_maximum():
    _, a, _ = node("gmp", (1, 2, 2))
    _, backward = run("gmp", a, np.array([[[[1.0, 3.0], [3.0, 2.0]]]]), {}, training=True)
    (dx,), _ = backward(np.array([[7.0]]))
    np.testing.assert_array_equal(dx, [[[[0.0, 7.0], [0.0, 0.0]]]])


@ids("factor", [2, 3])
def test_upsample(factor):
    rng = np.random.default_rng(10)
    out_shape, a, _ = node("upsample", (2, 3, 4), factor=factor)
    x = rng.standard_normal((2, 2, 3, 4))
    y, _ = run("upsample", a, x, {})
    assert y.shape == (2, *out_shape) == (2, 2, 3 * factor, 4 * factor)
    np.testing.assert_array_equal(y, x.repeat(factor, axis=2).repeat(factor, axis=3))
    # Resize nearest with asymmetric coordinates and floor rounding reads exactly cell (h // F, w // F).
    (ref,) = onnx_run("Resize", [x.astype(np.float32), None, np.array([1, 1, factor, factor], np.float32)],
                      mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("upsample", a, {}, [x])


# ---------------------------------------------------------------- layout at the boundary

@ids("kind,in_shape,opts", [("conv", (2, 5, 5), conv_opts(3, pad=1)), ("maxpool", (2, 6, 6), pool_opts((3, 3), (2, 2))),
                            ("upconv", (2, 3, 3), conv_opts(2, stride=(2, 2))), ("gmp", (2, 3, 3), {})])
def test_results_do_not_depend_on_the_memory_layout(kind, in_shape, opts):
    # The kernels hand each other NCHW-shaped views of batch-innermost memory; a C-ordered NCHW
    # array and such a view of the same values give the same outputs and gradients.
    rng = np.random.default_rng(11)
    _, a, shapes = node(kind, in_shape, **opts)
    p = random_arrays(shapes, rng)
    x = distinct_values((4, *in_shape), rng)
    (y1, back1), (y2, back2) = run(kind, a, x, p, True), run(kind, a, chwn_view(x), p, True)
    np.testing.assert_array_equal(y1, y2)
    dy = rng.standard_normal(y1.shape)
    (dx1,), g1 = back1(dy)
    (dx2,), g2 = back2(chwn_view(dy) if dy.ndim == 4 else np.asfortranarray(dy))
    np.testing.assert_allclose(dx1, dx2, rtol=1e-13)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-13)


# ---------------------------------------------------------------- allocation

FAULTS_PER_STEP = """
import resource, sys
import numpy as np
from dlc.engine.allocator import keep_freed_memory
keep_freed_memory()  # as dlc train does
from dlc.engine.kernels import KERNELS, Ctx
from dlc.layers import KINDS
_, a = KINDS["conv"].resolve({"channels": 6, "kernel": (5, 5), "stride": None, "pad": 2, "dil": 1,
                              "groups": 1, "bias": True}, [(1, 28, 28)])
rng = np.random.default_rng(0)
p = {"W": rng.random((6, 1, 5, 5), dtype=np.float32), "b": rng.random(6, dtype=np.float32)}
x = rng.random((64, 1, 28, 28), dtype=np.float32)
def step():
    y, backward = KERNELS["conv"](a, p, {}, [x], Ctx(training=True))
    backward(np.ones_like(y))
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not allocator.keep_freed_memory(), reason="glibc's malloc only")
def test_repeated_steps_reuse_memory_instead_of_faulting_it_in():
    # LeNet-5's first conv at batch 64 allocates and frees about 13 MB a step (two 5 MB column
    # matrices among them). With glibc's defaults a fresh process page-faulted them back in every
    # step, about 2,000 faults; this process's history could hide that, so a new one runs it.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 100


def test_a_thin_conv_in_blas_pieces_matches_the_definition():
    # LeNet-5's first conv at batch 8: 6x25 weights over 28*28*8 = 6,272 columns, which the forward
    # product and the weight gradient take in pieces (conv.blas_piece), so the joins are checked here
    assert conv.blas_piece(6 * 25, 28 * 28 * 8) < 28 * 28 * 8
    _, attrs, _ = node("conv", (1, 28, 28), **conv_opts(6, (5, 5), pad=2))
    rng = np.random.default_rng(5)
    x, W, b = rng.standard_normal((8, 1, 28, 28)), rng.standard_normal((6, 1, 5, 5)), rng.standard_normal(6)
    y, backward = run("conv", attrs, x, {"W": W, "b": b}, training=True)
    np.testing.assert_allclose(y, conv_loop(x, W, b, (1, 1), (2, 2, 2, 2), (1, 1), 1), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    _, grads = backward(dy)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), (5, 5),
                                                       axis=(2, 3))  # (n, c, h, w, i, j)
    np.testing.assert_allclose(grads["W"], np.einsum("nohw,nchwij->ocij", dy, windows), rtol=1e-10)


# ---------------------------------------------------------------- signals C@L and volumes C@DxHxW (issue 28)

# The image kernels run them (a signal as an image of height 1, a volume one depth offset at a time);
# onnxruntime's Conv, MaxPool and AveragePool on rank-3 and rank-5 tensors are the reference.
SIGNAL_VOLUME_CONV_CASES = [
    ("conv", "signal-k3-stride2-same", Signal((2, 9)), conv_opts(3, kernel=3, stride=2, pad="same")),
    ("conv", "signal-dil2-groups2", Signal((4, 10)), conv_opts(4, kernel=3, dil=2, groups=2, pad=1)),
    ("dwconv", "signal-depthwise-mult2", Signal((3, 8)), {"kernel": 3, "stride": None, "pad": 1, "mult": 2}),
    ("conv", "volume-3x3x3-pad1", (2, 4, 5, 5), conv_opts(3, kernel=3, pad=1)),
    ("conv", "volume-r3d-stem-like", (2, 5, 7, 7), conv_opts(3, kernel=(3, 5, 5), stride=(1, 2, 2), pad=(1, 2, 2))),
    ("conv", "volume-stride2-dil2", (2, 7, 6, 6), conv_opts(2, kernel=(3, 2, 2), stride=(2, 1, 2), dil=2)),
    ("conv", "volume-groups-nobias-same", (4, 3, 4, 4), conv_opts(2, kernel=(2, 3, 3), groups=2, bias=False,
                                                                  pad="same")),
    ("dwconv", "volume-depthwise-stride2", (2, 4, 4, 4), {"kernel": 3, "stride": 2, "pad": 1}),
]


@ids("kind,case,in_shape,opts", SIGNAL_VOLUME_CONV_CASES, ids=[c[1] for c in SIGNAL_VOLUME_CONV_CASES])
def test_signal_and_volume_conv_gradients(kind, case, in_shape, opts):
    rng = np.random.default_rng(11)
    _, attrs, shapes = node(kind, in_shape, **opts)
    assert_gradients(kind, attrs, random_arrays(shapes, rng), [rng.standard_normal((2, *in_shape))])


@ids("kind,case,in_shape,opts", SIGNAL_VOLUME_CONV_CASES, ids=[c[1] for c in SIGNAL_VOLUME_CONV_CASES])
def test_signal_and_volume_conv_forward_matches_onnxruntime(kind, case, in_shape, opts):
    rng = np.random.default_rng(12)
    out_shape, a, shapes = node(kind, in_shape, **opts)
    x, p = rng.standard_normal((2, *in_shape)).astype(np.float32), random_arrays(shapes, rng, np.float32)
    y, _ = run(kind, a, x, p)
    assert y.shape == (2, *out_shape) and y.dtype == np.float32
    (ref,) = onnx_run("Conv", [x, p["W"], p.get("b")], kernel_shape=list(a["kernel"]),
                      strides=list(a["stride"]), dilations=list(a["dilation"]), pads=list(a["pads"]),
                      group=a["groups"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


SIGNAL_VOLUME_POOL_CASES = [
    ("signal-3/2-pad1", Signal((2, 9)), pool_opts(3, 2, pad=1)),
    ("signal-2-ceil", Signal((2, 7)), pool_opts(2, ceil=True)),
    ("volume-2", (2, 4, 4, 4), pool_opts(2)),
    ("volume-1x2x2", (2, 3, 4, 4), pool_opts((1, 2, 2))),
    ("volume-3/2-pad1-ceil", (1, 6, 5, 5), pool_opts(3, 2, pad=1, ceil=True)),
    ("volume-2-ceil-odd", (1, 5, 5, 4), pool_opts(2, ceil=True)),
]


@ids("kind", ["maxpool", "avgpool"])
@ids("case,in_shape,opts", SIGNAL_VOLUME_POOL_CASES, ids=[c[0] for c in SIGNAL_VOLUME_POOL_CASES])
def test_signal_and_volume_pool_gradients_and_onnxruntime(kind, case, in_shape, opts):
    out_shape, a, _ = node(kind, in_shape, **opts)
    x = distinct_values((2, *in_shape), np.random.default_rng(13))
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape)
    op, extra = ("MaxPool", {}) if kind == "maxpool" else ("AveragePool", {"count_include_pad": 0})
    (ref,) = onnx_run(op, [x.astype(np.float32)], kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), ceil_mode=int(a["ceil"]), **extra)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert_gradients(kind, a, {}, [x])


def test_volume_maxpool_routes_a_tie_across_depth_to_the_first_frame():
    # two frames, equal everywhere: the gradient goes to frame 0 alone, as PyTorch's MaxPool3d sends it
    _, a, _ = node("maxpool", (1, 2, 2, 2), **pool_opts(2))
    x = np.ones((1, 1, 2, 2, 2))
    _, backward = run("maxpool", a, x, {}, training=True)
    (dx,), _ = backward(np.full((1, 1, 1, 1, 1), 5.0))
    assert dx[0, 0, 0, 0, 0] == 5.0 and dx.sum() == 5.0


@ids("kind,op", [("gap", "GlobalAveragePool"), ("gmp", "GlobalMaxPool")])
@ids("in_shape", [Signal((3, 7)), (3, 2, 3, 4)])
def test_global_pools_on_a_signal_and_a_volume(kind, op, in_shape):
    out_shape, a, _ = node(kind, in_shape)
    x = distinct_values((2, *in_shape), np.random.default_rng(14))
    y, _ = run(kind, a, x, {})
    axes = tuple(range(2, x.ndim))
    np.testing.assert_allclose(y, x.mean(axis=axes) if kind == "gap" else x.max(axis=axes), rtol=1e-12)
    (ref,) = onnx_run(op, [x.astype(np.float32)])
    np.testing.assert_allclose(y, ref.reshape(2, 3), rtol=1e-5, atol=1e-6)
    assert_gradients(kind, a, {}, [x])
