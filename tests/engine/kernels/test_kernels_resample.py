"""pad, pixelshuffle, tile, slice and reshape kernels, each checked three ways: the backward pass against central differences in
float64, the forward pass against a plain loop written here from the definition, and against onnxruntime
running the ONNX operator the exporter writes (Pad, DepthToSpace, Tile, Slice, Reshape)."""

from __future__ import annotations

import numpy as np
import pytest

from dlc.engine.kernels import KERNELS, Ctx
from dlc.layers import KINDS
from kernel_checks import assert_gradients, onnx_run, resolve


def node(kind: str, in_shape, **written):
    attrs, _, _ = resolve(kind, [in_shape], **written)
    return KINDS[kind].resolve(attrs, [in_shape])[0], attrs


def run(kind, attrs, x):
    return KERNELS[kind](attrs, {}, {}, [x], Ctx())


# ---------------------------------------------------------------- pad

def pad_loop(x, pads, mode, value):
    """Each output pixel from the definition: inside, the input; outside, the constant, the edge pixel
    (replicate) or its mirror image about the edge pixel (reflect: -1 reads 1, H reads H-2)."""
    n, c, h, w = x.shape
    t, l, b, r = pads
    y = np.empty((n, c, h + t + b, w + l + r))

    def source(i, size):
        if 0 <= i < size:
            return i
        if mode == "replicate":
            return 0 if i < 0 else size - 1
        return -i if i < 0 else 2 * (size - 1) - i

    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            inside = 0 <= i - t < h and 0 <= j - l < w
            if mode == "constant" and not inside:
                y[:, :, i, j] = value
            else:
                y[:, :, i, j] = x[:, :, source(i - t, h), source(j - l, w)]
    return y


ONNX_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}
PAD_CASES = {  # the corpus's ReflectionPad2d((1, 2, 3, 4)) is top 3, left 1, bottom 4, right 2
    "constant 2.5, uneven sides": ((3, 4, 5), {"amount": 3, "left": 1, "bottom": 4, "right": 2, "value": 2.5}),
    "zero, one side": ((2, 3, 3), {"amount": 0, "right": 2}),
    "reflect, uneven sides": ((2, 5, 4), {"amount": 1, "top": 4, "right": 3, "mode": "reflect"}),
    "replicate past the size": ((2, 2, 3), {"amount": 4, "mode": "replicate"}),
}


@pytest.mark.parametrize("case", PAD_CASES)
def test_pad_matches_loop_onnxruntime_and_central_differences(case):
    in_shape, written = PAD_CASES[case]
    out_shape, a = node("pad", in_shape, **written)
    x = np.random.default_rng(0).standard_normal((2, *in_shape))
    y, _ = run("pad", a, x)
    assert y.shape == (2, *out_shape)
    np.testing.assert_array_equal(y, pad_loop(x, a["pads"], a["mode"], a["value"]))
    t, l, b, r = a["pads"]
    (ref,) = onnx_run("Pad", [x.astype(np.float32), np.array([0, 0, t, l, 0, 0, b, r], np.int64),
                              np.array(a["value"], np.float32)], mode=ONNX_MODES[a["mode"]])
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("pad", a, {}, [x])


def test_replicate_sends_the_edge_pixels_every_copy_of_their_gradient():
    # 1x2 input padded by 2 on the right: the last pixel is copied three times
    _, a = node("pad", (1, 1, 2), amount=0, right=2, mode="replicate")
    _, backward = run("pad", a, np.array([[[[1.0, 2.0]]]]))
    (dx,), _ = backward(np.array([[[[1.0, 10.0, 100.0, 1000.0]]]]))
    np.testing.assert_array_equal(dx, [[[[1.0, 1110.0]]]])


# ---------------------------------------------------------------- pixelshuffle

@pytest.mark.parametrize("factor,in_shape", [(2, (8, 3, 2)), (3, (9, 2, 3))])
def test_pixelshuffle_matches_loop_onnxruntime_and_central_differences(factor, in_shape):
    out_shape, a = node("pixelshuffle", in_shape, factor=factor)
    x = np.random.default_rng(1).standard_normal((2, *in_shape))
    y, _ = run("pixelshuffle", a, x)
    assert y.shape == (2, *out_shape)
    want = np.empty(y.shape)
    for c in range(out_shape[0]):  # PyTorch's definition: channel c*r*r + i*r + j fills offset (i, j)
        for i in range(factor):
            for j in range(factor):
                want[:, c, i::factor, j::factor] = x[:, c * factor * factor + i * factor + j]
    np.testing.assert_array_equal(y, want)
    (ref,) = onnx_run("DepthToSpace", [x.astype(np.float32)], opset=13, blocksize=factor, mode="CRD")
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("pixelshuffle", a, {}, [x])


# ---------------------------------------------------------------- tile

@pytest.mark.parametrize("in_shape,repeats", [((2, 3, 4), (2, 3, 4)), ((5, 3), (2, 1)), ((3,), (3,))])
def test_tile_matches_loop_onnxruntime_and_central_differences(in_shape, repeats):
    out_shape, a = node("tile", in_shape, repeats=repeats)
    x = np.random.default_rng(2).standard_normal((2, *in_shape))
    y, _ = run("tile", a, x)
    assert y.shape == (2, *out_shape) == (2, *(d * r for d, r in zip(in_shape, repeats)))
    for index in np.ndindex(*out_shape):  # output index i reads input index i mod size, on every axis
        np.testing.assert_array_equal(y[(slice(None), *index)], x[(slice(None), *(i % d for i, d in zip(index, in_shape)))])
    (ref,) = onnx_run("Tile", [x.astype(np.float32), np.array([1, *repeats], np.int64)], opset=13)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("tile", a, {}, [x])


# ---------------------------------------------------------------- slice

@pytest.mark.parametrize("in_shape,written,kept", [
    ((4, 3, 5), {"length": 2, "start": 1}, np.s_[:, 1:3]),
    ((4, 3, 5), {"length": 2, "start": -2, "axis": "width"}, np.s_[:, :, :, 3:5]),
    ((5, 3), {"length": 1, "start": -1, "axis": "steps"}, np.s_[:, 4:5]),
    ((6,), {"length": 3}, np.s_[:, 0:3]),
])
def test_slice_matches_indexing_onnxruntime_and_central_differences(in_shape, written, kept):
    out_shape, a = node("slice", in_shape, **written)
    x = np.random.default_rng(3).standard_normal((2, *in_shape))
    y, _ = run("slice", a, x)
    assert y.shape == (2, *out_shape)
    np.testing.assert_array_equal(y, x[kept])
    (ref,) = onnx_run("Slice", [x.astype(np.float32), np.array([a["begin"]]), np.array([a["begin"] + a["length"]]),
                                np.array([a["dim"] + 1])], opset=13)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("slice", a, {}, [x])


# ---------------------------------------------------------------- reshape

@pytest.mark.parametrize("in_shape,shape", [((2,), (1, 1, 2)), ((2, 3, 4), (6, 4)), ((6, 4), (24,))])
def test_reshape_keeps_the_order_of_the_values(in_shape, shape):
    out_shape, a = node("reshape", in_shape, shape=shape)
    x = np.random.default_rng(4).standard_normal((2, *in_shape))
    y, _ = run("reshape", a, x)
    assert y.shape == (2, *out_shape) == (2, *shape)
    np.testing.assert_array_equal(y.reshape(2, -1), x.reshape(2, -1))  # each sample's values in row-major order
    (ref,) = onnx_run("Reshape", [x.astype(np.float32), np.array([0, *shape], np.int64)], opset=13)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert_gradients("reshape", a, {}, [x])
