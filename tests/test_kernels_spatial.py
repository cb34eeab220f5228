"""conv, dwconv, upconv, maxpool, avgpool, gap, gmp, upsample kernels.

Each mode is checked three ways: the backward pass against central differences in float64, the
forward pass against a plain loop written here from the definition, and against onnxruntime running
the matching ONNX operator (which pins the conventions: ceil_mode, count_include_pad=0,
ConvTranspose pads, Resize nearest).
"""

from __future__ import annotations

import numpy as np
import pytest

from dlc.engine.kernels import KERNELS, Ctx
from dlc.layers import KINDS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


def resolve(kind: str, attrs: dict, in_shape):
    return KINDS[kind].resolve(attrs, [in_shape])


def conv_attrs(channels, kernel=(3, 3), stride=None, pad=0, dil=1, groups=1, bias=True):
    return {"channels": channels, "kernel": kernel, "stride": stride, "pad": pad, "dil": dil,
            "groups": groups, "bias": bias}


def dwconv_attrs(kernel=(3, 3), stride=None, pad=0, dil=1, mult=1, bias=True):
    return {"kernel": kernel, "stride": stride, "pad": pad, "dil": dil, "groups": 1, "bias": bias,
            "mult": mult}


def pool_attrs(kernel, stride=None, pad=0, ceil=False):
    return {"kernel": kernel, "stride": stride, "pad": pad, "ceil": ceil}


def make_params(kind, attrs, in_shape, rng, dtype=np.float64):
    shapes = KINDS[kind].params(attrs, [in_shape])
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


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


def conv_transpose_loop(x, W, b, stride, pads, dil, groups):
    """Transposed convolution as a scatter: each input cell adds x * W[c_in] into its output window."""
    n, c, h, w = x.shape
    _, og, kh, kw = W.shape
    c_out = og * groups
    full = np.zeros((n, c_out, (h - 1) * stride[0] + dil[0] * (kh - 1) + 1,
                     (w - 1) * stride[1] + dil[1] * (kw - 1) + 1))
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


def pool_loop(x, kernel, stride, pads, out_hw, mode):
    """Each window reduced over its cells inside the unpadded input (max, or mean over those cells)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            r0, c0 = i * stride[0] - pads[0], j * stride[1] - pads[1]
            cells = x[:, :, max(r0, 0):min(r0 + kernel[0], h), max(c0, 0):min(c0 + kernel[1], w)]
            y[:, :, i, j] = cells.max(axis=(2, 3)) if mode == "max" else cells.mean(axis=(2, 3))
    return y


def ort_run(op, x, inits=(), **onnx_attrs):
    """Output of a one-node ONNX model; weights go in as initializers."""
    names = ["X"] + [f"P{i}" for i in range(len(inits))]
    node = helper.make_node(op, names, ["Y"], **onnx_attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * x.ndim)],
        [onnx.numpy_helper.from_array(np.asarray(a, np.float32), nm) for nm, a in zip(names[1:], inits)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x.astype(np.float32)})[0]


# ---------------------------------------------------------------- gradient check

def numerical_grad(f, arr, eps=1e-6):
    flat = arr.reshape(-1)
    g = np.zeros_like(flat)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return g.reshape(arr.shape)


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


def check_gradients(kind, attrs, x, params, rng):
    """backward(r) must match d/d(input, params) of sum(y * r) for a random r."""
    y, backward = run(kind, attrs, x, params, training=True)
    r = rng.standard_normal(y.shape)
    dxs, dparams = backward(r)
    assert set(dparams) == set(params)

    def loss():
        return float(np.sum(run(kind, attrs, x, params)[0] * r))

    for name, arr, analytic in [("x", x, dxs[0])] + [(k, params[k], dparams[k]) for k in params]:
        assert analytic.shape == arr.shape, name
        assert analytic.dtype == np.float64, name
        err = rel_err(analytic, numerical_grad(loss, arr))
        assert err < 1e-6, f"{kind} d{name}: relative error {err:.2e}"


def distinct_values(shape, rng):
    """Values at least 0.01 apart, so no max-pool window has a tie for finite differences to cross."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5


# ---------------------------------------------------------------- conv and dwconv

CONV_CASES = [
    # (id, input C@HxW, attrs)
    ("3x3", (3, 6, 7), conv_attrs(4)),
    ("stride2-pad1", (2, 7, 7), conv_attrs(3, stride=(2, 2), pad=1)),
    ("same-asymmetric", (2, 6, 6), conv_attrs(3, stride=(2, 2), pad="same")),
    ("same-even-kernel", (2, 5, 5), conv_attrs(2, kernel=(2, 4), pad="same")),
    ("dilation2", (2, 7, 8), conv_attrs(3, dil=2, pad=1)),
    ("groups2", (4, 5, 5), conv_attrs(6, groups=2, pad=1)),
    ("no-bias", (3, 5, 5), conv_attrs(2, bias=False)),
    ("rect-stride", (2, 7, 6), conv_attrs(3, kernel=(3, 2), stride=(2, 1))),
    ("1x1", (3, 4, 4), conv_attrs(5, kernel=(1, 1))),
    ("tiling-patchify", (2, 6, 4), conv_attrs(3, kernel=(2, 2), stride=(2, 2))),
]

DWCONV_CASES = [
    ("depthwise", (3, 6, 6), dwconv_attrs(pad=1)),
    ("depthwise-mult2-stride2", (2, 7, 7), dwconv_attrs(stride=(2, 2), pad="same", mult=2)),
    ("depthwise-dil2-nobias", (2, 7, 7), dwconv_attrs(dil=2, bias=False)),
]


def all_conv_cases():
    return [("conv", *c) for c in CONV_CASES] + [("dwconv", *c) for c in DWCONV_CASES]


@pytest.mark.parametrize("kind,case,in_shape,attrs", all_conv_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_conv_gradients(kind, case, in_shape, attrs):
    rng = np.random.default_rng(1)
    _, a = resolve(kind, attrs, in_shape)
    x = rng.standard_normal((2, *in_shape))
    check_gradients(kind, a, x, make_params(kind, a, in_shape, rng), rng)


@pytest.mark.parametrize("kind,case,in_shape,attrs", all_conv_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_conv_forward_matches_loop_and_onnxruntime(kind, case, in_shape, attrs):
    rng = np.random.default_rng(2)
    out_shape, a = resolve(kind, attrs, in_shape)
    x = rng.standard_normal((2, *in_shape))
    p = make_params(kind, a, in_shape, rng)
    y, _ = run(kind, a, x, p)
    assert y.shape == (2, *out_shape)
    want = conv_loop(x, p["W"], p.get("b"), a["stride"], a["pads"], a["dilation"], a["groups"])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)

    x32, p32 = x.astype(np.float32), {k: v.astype(np.float32) for k, v in p.items()}
    y32, _ = run(kind, a, x32, p32)
    assert y32.dtype == np.float32
    inits = [p32["W"]] + ([p32["b"]] if "b" in p32 else [])
    ref = ort_run("Conv", x32, inits, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                  dilations=list(a["dilation"]), pads=list(a["pads"]), group=a["groups"])
    np.testing.assert_allclose(y32, ref, rtol=1e-5, atol=1e-5)


def test_lenet_conv1_shapes_and_params():
    # LeNet-5's first layer on MNIST: 6@5x5 with pad 2 keeps 28x28; 6*1*5*5 weights + 6 biases.
    out, a = resolve("conv", conv_attrs(6, kernel=(5, 5), pad=2), (1, 28, 28))
    p = make_params("conv", a, (1, 28, 28), np.random.default_rng(0), np.float32)
    y, backward = run("conv", a, np.zeros((64, 1, 28, 28), np.float32), p, training=True)
    assert out == (6, 28, 28) and y.shape == (64, 6, 28, 28)
    assert sum(v.size for v in p.values()) == 156
    dxs, grads = backward(np.ones_like(y))
    assert dxs[0].dtype == np.float32 and grads["W"].dtype == np.float32
    # Zero input: every bias gradient is the number of output cells it feeds, 64*28*28.
    np.testing.assert_array_equal(grads["b"], np.full(6, 64 * 28 * 28, np.float32))
    np.testing.assert_array_equal(grads["W"], 0)


def test_weight_gradient_over_several_chunks():
    # 4 samples at 40x40 give 6,400 columns: more than one piece of the chunked weight-gradient product.
    rng = np.random.default_rng(3)
    _, a = resolve("conv", conv_attrs(2, pad=1), (2, 40, 40))
    x = rng.standard_normal((4, 2, 40, 40))
    p = make_params("conv", a, (2, 40, 40), rng)
    y, backward = run("conv", a, x, p, training=True)
    dy = rng.standard_normal(y.shape)
    _, grads = backward(dy)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros_like(p["W"])
    for i in range(3):
        for j in range(3):
            want[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + 40, j:j + 40])
    np.testing.assert_allclose(grads["W"], want, rtol=1e-10)


# ---------------------------------------------------------------- upconv

UPCONV_CASES = [
    ("k3", (3, 4, 4), conv_attrs(2)),
    ("k2-stride2", (2, 3, 4), conv_attrs(3, kernel=(2, 2), stride=(2, 2))),
    ("k3-stride2-pad1", (2, 4, 3), conv_attrs(3, stride=(2, 2), pad=1)),
    ("k4-stride2-pad1", (2, 3, 3), conv_attrs(2, kernel=(4, 4), stride=(2, 2), pad=1)),
    ("dilation2", (2, 3, 4), conv_attrs(2, dil=2)),
    ("groups2", (4, 3, 3), conv_attrs(6, groups=2, stride=(2, 2))),
    ("no-bias-rect", (2, 3, 4), conv_attrs(3, kernel=(3, 2), stride=(1, 2), bias=False)),
]


@pytest.mark.parametrize("case,in_shape,attrs", UPCONV_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_upconv_gradients(case, in_shape, attrs):
    rng = np.random.default_rng(4)
    _, a = resolve("upconv", attrs, in_shape)
    x = rng.standard_normal((2, *in_shape))
    check_gradients("upconv", a, x, make_params("upconv", a, in_shape, rng), rng)


@pytest.mark.parametrize("case,in_shape,attrs", UPCONV_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_upconv_forward_matches_loop_and_onnxruntime(case, in_shape, attrs):
    rng = np.random.default_rng(5)
    out_shape, a = resolve("upconv", attrs, in_shape)
    x = rng.standard_normal((2, *in_shape))
    p = make_params("upconv", a, in_shape, rng)
    y, _ = run("upconv", a, x, p)
    assert y.shape == (2, *out_shape)
    want = conv_transpose_loop(x, p["W"], p.get("b"), a["stride"], a["pads"], a["dilation"], a["groups"])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)

    inits = [p["W"]] + ([p["b"]] if "b" in p else [])
    ref = ort_run("ConvTranspose", x, inits, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                  dilations=list(a["dilation"]), pads=list(a["pads"]), group=a["groups"])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_upconv_is_the_transpose_of_conv():
    # <conv(x), y> == <x, upconv(y)> for the same W and geometry: the definition of the transpose.
    rng = np.random.default_rng(6)
    geom = dict(kernel=(3, 3), stride=(2, 2), pad=1, bias=False)
    _, ca = resolve("conv", conv_attrs(4, **geom), (3, 7, 7))
    _, ua = resolve("upconv", conv_attrs(3, **geom), (4, 4, 4))
    W = rng.standard_normal((4, 3, 3, 3))
    x, z = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((2, 4, 4, 4))
    cx, _ = run("conv", ca, x, {"W": W})
    uz, _ = run("upconv", ua, z, {"W": W})
    assert uz.shape == x.shape
    assert np.isclose(np.sum(cx * z), np.sum(x * uz), rtol=1e-12)


# ---------------------------------------------------------------- maxpool and avgpool

POOL_CASES = [
    ("2/2", (2, 6, 6), pool_attrs((2, 2))),
    ("3/2", (2, 7, 7), pool_attrs((3, 3), (2, 2))),
    ("3/2-pad1", (2, 6, 6), pool_attrs((3, 3), (2, 2), pad=1)),
    ("3/2-ceil", (2, 6, 6), pool_attrs((3, 3), (2, 2), ceil=True)),
    ("2/2-ceil-odd", (2, 5, 7), pool_attrs((2, 2), ceil=True)),
    ("3/2-pad1-ceil", (1, 8, 8), pool_attrs((3, 3), (2, 2), pad=1, ceil=True)),
    # ceil would add a 4th window starting in the right padding; the Caffe/PyTorch rule drops it.
    ("2/2-pad1-ceil-last-dropped", (1, 5, 5), pool_attrs((2, 2), (2, 2), pad=1, ceil=True)),
    ("3/1-same", (2, 5, 5), pool_attrs((3, 3), (1, 1), pad="same")),
    ("2/1-same-asymmetric", (2, 5, 4), pool_attrs((2, 2), (1, 1), pad="same")),
    ("rect-3x2/2x1", (2, 7, 5), pool_attrs((3, 2), (2, 1))),
]


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("case,in_shape,attrs", POOL_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_pool_gradients(kind, case, in_shape, attrs):
    rng = np.random.default_rng(7)
    _, a = resolve(kind, attrs, in_shape)
    check_gradients(kind, a, distinct_values((2, *in_shape), rng), {}, rng)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("case,in_shape,attrs", POOL_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_pool_forward_matches_loop_and_onnxruntime(kind, case, in_shape, attrs):
    rng = np.random.default_rng(8)
    out_shape, a = resolve(kind, attrs, in_shape)
    x = rng.standard_normal((2, *in_shape))
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape)
    mode = "max" if kind == "maxpool" else "mean"
    np.testing.assert_allclose(y, pool_loop(x, a["kernel"], a["stride"], a["pads"], out_shape[1:], mode),
                               rtol=1e-12)
    op = {"maxpool": "MaxPool", "avgpool": "AveragePool"}[kind]
    extra = {"count_include_pad": 0} if kind == "avgpool" else {}
    ref = ort_run(op, x, kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["pads"]),
                  ceil_mode=int(a["ceil"]), **extra)
    assert ref.shape == y.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_avgpool_divides_by_cells_inside_the_input():
    # 3/2 pad 1 on a 4x4 of ones, ONNX count_include_pad=0: every window averages ones, so all ones;
    # and on arange, the corner window (0,0) sees x[0:2, 0:2] = {0, 1, 4, 5}: mean 2.5.
    _, a = resolve("avgpool", pool_attrs((3, 3), (2, 2), pad=1), (1, 4, 4))
    y, _ = run("avgpool", a, np.ones((1, 1, 4, 4)), {})
    np.testing.assert_array_equal(y, np.ones((1, 1, 2, 2)))
    y, _ = run("avgpool", a, np.arange(16.0).reshape(1, 1, 4, 4), {})
    assert y[0, 0, 0, 0] == 2.5


def test_maxpool_routes_tied_gradient_to_the_first_maximum():
    # A flat 4x4 block (MNIST's background): in each 2x2 window all four cells tie, and only the
    # top-left one (first in row-major order) receives the window's gradient.
    _, a = resolve("maxpool", pool_attrs((2, 2)), (1, 4, 4))
    y, backward = run("maxpool", a, np.zeros((1, 1, 4, 4)), {}, training=True)
    dx = backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))[0][0]
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx, want)


def test_overlapping_maxpool_tie_goes_to_each_windows_own_first_max():
    # 3/1 over a row [0, 5, 5, 0, 0]: windows [0,5,5] and [5,5,0] both pick index 1; window [5,0,0]
    # picks index 2. Gradients 1, 10, 100 land as 0, 11, 100, 0, 0.
    _, a = resolve("maxpool", pool_attrs((1, 3), (1, 1)), (1, 1, 5))
    _, backward = run("maxpool", a, np.array([[[[0.0, 5.0, 5.0, 0.0, 0.0]]]]), {}, training=True)
    dx = backward(np.array([[[[1.0, 10.0, 100.0]]]]))[0][0]
    np.testing.assert_array_equal(dx, [[[[0.0, 11.0, 100.0, 0.0, 0.0]]]])


# ---------------------------------------------------------------- gap, gmp, upsample

@pytest.mark.parametrize("kind,op", [("gap", "GlobalAveragePool"), ("gmp", "GlobalMaxPool")])
def test_global_pools(kind, op):
    rng = np.random.default_rng(9)
    out_shape, a = resolve(kind, {}, (3, 4, 5))
    x = distinct_values((2, 3, 4, 5), rng)
    y, _ = run(kind, a, x, {})
    assert y.shape == (2, *out_shape) == (2, 3)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)) if kind == "gap" else x.max(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_allclose(y, ort_run(op, x).reshape(2, 3), rtol=1e-5, atol=1e-6)
    check_gradients(kind, a, x, {}, rng)


def test_gmp_routes_tied_gradient_to_the_first_maximum():
    _, a = resolve("gmp", {}, (1, 2, 2))
    _, backward = run("gmp", a, np.array([[[[1.0, 3.0], [3.0, 2.0]]]]), {}, training=True)
    dx = backward(np.array([[7.0]]))[0][0]
    np.testing.assert_array_equal(dx, [[[[0.0, 7.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("factor", [2, 3])
def test_upsample(factor):
    rng = np.random.default_rng(10)
    out_shape, a = resolve("upsample", {"factor": factor}, (2, 3, 4))
    x = rng.standard_normal((2, 2, 3, 4))
    y, _ = run("upsample", a, x, {})
    assert y.shape == (2, *out_shape) == (2, 2, 3 * factor, 4 * factor)
    np.testing.assert_array_equal(y, x.repeat(factor, axis=2).repeat(factor, axis=3))
    # Resize nearest with asymmetric coordinates and floor rounding is exactly cell (h // F, w // F).
    ref = ort_run_resize(x, factor)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    check_gradients("upsample", a, x, {}, rng)


def ort_run_resize(x, factor):
    node = helper.make_node("Resize", ["X", "", "scales"], ["Y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * x.ndim)],
        [onnx.numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x.astype(np.float32)})[0]


# ---------------------------------------------------------------- layout at the boundary

def test_results_do_not_depend_on_the_memory_layout_of_the_input():
    # Kernels hand NCHW-shaped views of batch-innermost memory to each other; a plain C-ordered NCHW
    # array and such a view of the same values must give the same outputs and gradients.
    rng = np.random.default_rng(11)
    _, a = resolve("conv", conv_attrs(3, pad=1), (2, 5, 5))
    p = make_params("conv", a, (2, 5, 5), rng)
    x = rng.standard_normal((4, 2, 5, 5))
    x_chwn = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    dy = rng.standard_normal((4, 3, 5, 5))
    (y1, b1), (y2, b2) = run("conv", a, x, p, True), run("conv", a, x_chwn, p, True)
    np.testing.assert_array_equal(y1, y2)
    (dx1,), g1 = b1(dy)
    (dx2,), g2 = b2(np.ascontiguousarray(dy.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2))
    np.testing.assert_allclose(dx1, dx2, rtol=1e-13)
    np.testing.assert_allclose(g1["W"], g2["W"], rtol=1e-13)
