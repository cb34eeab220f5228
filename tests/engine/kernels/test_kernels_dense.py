"""The non-spatial, non-recurrent kernels: fc, flatten, embed, activations, softmax, dropout, noise,
bn, lrn, add, mul, concat. Backward against central differences in float64; forward against onnxruntime
running the matching ONNX operator in float32.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from dlc.engine.kernels import KERNELS, Ctx, norm
from dlc.engine.kernels.elementwise import SELU_ALPHA, SELU_SCALE, erfc, normal_cdf
from dlc.errors import DlcError
from dlc.layers import Signal
from kernel_checks import assert_gradients, onnx_run, random_arrays, resolve

ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "elu", "selu", "gelu", "identity", "leaky", "softmax", "silu",
               # the math kinds of issue 28 that take no setting (sqrt: positive inputs only, below)
               "logsoftmax", "softplus", "softsign", "exp", "abs", "neg"]


def away_from_kinks(x: np.ndarray) -> np.ndarray:
    """Move entries off relu's 0 and relu6's 6, where the derivative jumps."""
    for kink in (0.0, 6.0):
        near = np.abs(x - kink) < 0.05
        x[near] += 0.1
    return x


def run(kind, attrs, params, xs, state=None, training=False, seed=0):
    return KERNELS[kind](attrs, params, state or {}, xs, Ctx(training, np.random.default_rng(seed)))


# ---- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_fc_gradients(bias):
    rng = np.random.default_rng(1)
    attrs, shapes, _ = resolve("fc", [(4,)], units=3, bias=bias)
    assert shapes == ({"W": (3, 4), "b": (3,)} if bias else {"W": (3, 4)})
    assert_gradients("fc", attrs, random_arrays(shapes, rng), [rng.standard_normal((5, 4))])


def test_flatten_gradients_and_chw_order():
    rng = np.random.default_rng(2)
    attrs, _, _ = resolve("flatten", [(2, 3, 2)])
    x = rng.standard_normal((2, 2, 3, 2))
    y, _ = run("flatten", attrs, {}, [x])
    assert y.shape == (2, 12)
    assert y[1, 7] == x[1, 1, 0, 1]  # C, H, W order: 1*6 + 0*2 + 1
    assert_gradients("flatten", attrs, {}, [x])


def test_embed_gradients_with_repeated_tokens():
    rng = np.random.default_rng(3)
    attrs, shapes, _ = resolve("embed", [(4,)], dim=3, vocab=5)
    ids = np.array([[0, 2, 2, 4], [2, 1, 0, 0]], dtype=np.int64)
    params = random_arrays(shapes, rng)
    y, backward = run("embed", attrs, params, [ids])
    assert y.shape == (2, 4, 3)
    assert_gradients("embed", attrs, params, [ids])
    dy = np.ones_like(y)
    dxs, grads = backward(dy)
    assert dxs == [None]
    # token 2 appears three times, token 3 never
    assert np.array_equal(grads["W"][:, 0], [3, 1, 3, 0, 1])


def test_embed_rejects_ids_outside_the_vocabulary():
    attrs, shapes, _ = resolve("embed", [(2,)], dim=2, vocab=3)
    params = random_arrays(shapes, np.random.default_rng(0))
    for bad in (3, -1):
        with pytest.raises(DlcError, match=f"token id {bad} is outside the vocabulary 0..2"):
            run("embed", attrs, params, [np.array([[0, bad]])])


ACTIVATION_SHAPES = {"vector": (3, 5), "image": (2, 3, 2, 2), "sequence": (2, 3, 4)}


@pytest.mark.parametrize("layout", sorted(ACTIVATION_SHAPES))
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_gradients(kind, layout):
    shape = ACTIVATION_SHAPES[layout]
    attrs, _, _ = resolve(kind, [shape[1:]])
    x = away_from_kinks(4 * np.random.default_rng(4).standard_normal(shape))
    assert_gradients(kind, attrs, {}, [x])


@pytest.mark.parametrize("kind", ["elu", "leaky"])
def test_activation_gradients_with_other_alpha(kind):
    attrs, _, _ = resolve(kind, [(6,)], alpha=0.3)
    x = away_from_kinks(2 * np.random.default_rng(5).standard_normal((4, 6)))
    assert_gradients(kind, attrs, {}, [x])


def test_gelu_gradients_far_into_both_tails():
    attrs, _, _ = resolve("gelu", [(7,)])
    x = np.array([[-12.0, -6.5, -4.2, -0.3, 0.2, 3.9, 9.0]])
    assert_gradients("gelu", attrs, {}, [x])


@pytest.mark.parametrize("kind,written", [("dropout", {"p": 0.4}), ("noise", {"sigma": 0.3})])
def test_stochastic_gradients_in_training(kind, written):
    attrs, _, _ = resolve(kind, [(3, 2, 2)], **written)
    x = np.random.default_rng(6).standard_normal((2, 3, 2, 2))
    # the same seed in every evaluation: the mask or the noise is fixed while x moves
    assert_gradients(kind, attrs, {}, [x], ctx=lambda: Ctx(True, np.random.default_rng(7)))


BN_SHAPES = {"vector": (6, 3), "image": (3, 3, 2, 2), "signal": (3, 3, 4), "volume": (2, 3, 2, 2, 2)}


def batchless(shape: tuple) -> tuple:
    """A batch shape's sample shape as the compiler makes it: a signal (N, C, L) is C@L, not TxD."""
    return Signal(shape[1:]) if len(shape) == 3 else shape[1:]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", sorted(BN_SHAPES))
def test_bn_gradients(layout, training):
    rng = np.random.default_rng(8)
    shape = BN_SHAPES[layout]
    attrs, shapes, state_shapes = resolve("bn", [batchless(shape)])
    params = {"gamma": 1 + random_arrays(shapes, rng)["gamma"], "beta": random_arrays(shapes, rng)["beta"]}
    state = {"mean": 0.3 * rng.standard_normal(3), "var": rng.uniform(0.5, 2, 3)}
    assert_gradients("bn", attrs, params, [2 * rng.standard_normal(shape) + 1], state=state,
                     ctx=lambda: Ctx(training))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn_gradients(size):
    attrs, _, _ = resolve("lrn", [(6, 2, 2)], size=size, alpha=0.5, beta=0.75, k=2.0)
    x = np.random.default_rng(9).standard_normal((2, 6, 2, 2))
    assert_gradients("lrn", attrs, {}, [x])


def test_add_gradients_three_inputs():
    rng = np.random.default_rng(10)
    attrs, _, _ = resolve("add", [(2, 3)] * 3)
    xs = [rng.standard_normal((2, 2, 3)) for _ in range(3)]
    y, _ = run("add", attrs, {}, xs)
    assert np.array_equal(y, xs[0] + xs[1] + xs[2])
    assert_gradients("add", attrs, {}, xs)


# equal shapes (three inputs), and a vector of features against an image or a sequence, on either side
MUL_SHAPES = {"equal": [(2, 3)] * 3, "image": [(3, 2, 2), (3,)], "sequence": [(4,), (3, 4)],
              "three with a vector": [(3, 4), (4,), (3, 4)]}


@pytest.mark.parametrize("case", sorted(MUL_SHAPES))
def test_mul_gradients(case):
    rng = np.random.default_rng(12)
    shapes = MUL_SHAPES[case]
    attrs, _, _ = resolve("mul", shapes)
    xs = [rng.standard_normal((2, *s)) for s in shapes]
    y, _ = run("mul", attrs, {}, xs)
    # the vector as numpy would broadcast it by hand: over an image's pixels, over a sequence's steps
    full = [x[:, :, None, None] if x.ndim == 2 and y.ndim == 4 else x[:, None, :] if x.ndim == 2 < y.ndim
            else x for x in xs]
    assert np.array_equal(y, np.prod(np.broadcast_arrays(*full), axis=0))
    assert_gradients("mul", attrs, {}, xs)


@pytest.mark.parametrize("vector_first", [False, True])
def test_mul_of_an_image_by_a_vector_keeps_the_images_memory_layout(vector_first):
    # Squeeze-and-excitation's x * s between convs: x arrives as an NCHW view of (C, H, W, N) memory
    # and y leaves the same way, so the next conv reads it without copying it back
    rng = np.random.default_rng(14)
    attrs, _, _ = resolve("mul", [(3,), (3, 4, 5)] if vector_first else [(3, 4, 5), (3,)])
    x = np.moveaxis(np.ascontiguousarray(np.moveaxis(rng.standard_normal((2, 3, 4, 5)), 0, -1)), -1, 0)
    s = rng.standard_normal((2, 3))
    y, _ = run("mul", attrs, {}, [s, x] if vector_first else [x, s])
    np.testing.assert_array_equal(y, x * s[:, :, None, None])
    assert np.moveaxis(y, 0, -1).flags.c_contiguous


@pytest.mark.parametrize("kind,shapes", [("silu", [(3, 2, 2)]), ("mul", MUL_SHAPES["image"]),
                                         ("mul", MUL_SHAPES["three with a vector"])])
def test_silu_and_mul_in_float32_are_float64_rounded(kind, shapes):
    # float32's forward and gradients are float64's to float32's precision, not another computation
    rng = np.random.default_rng(13)
    attrs, _, _ = resolve(kind, shapes)
    xs = [2 * rng.standard_normal((2, *s)) for s in shapes]
    results = {}
    for dtype in (np.float64, np.float32):
        y, backward = run(kind, attrs, {}, [x.astype(dtype) for x in xs])
        dxs, _ = backward(np.ones_like(y))
        assert {a.dtype for a in (y, *dxs)} == {np.dtype(dtype)}
        results[dtype] = (y, *dxs)
    for a, b in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shapes", [[(2, 3, 3), (4, 3, 3)], [(3,), (2,), (1,)], [(4, 2), (4, 3)]])
def test_concat_gradients(shapes):
    rng = np.random.default_rng(11)
    attrs, _, _ = resolve("concat", shapes)
    xs = [rng.standard_normal((2, *s)) for s in shapes]
    y, _ = run("concat", attrs, {}, xs)
    axis = attrs["axis"] + 1
    assert y.shape[axis] == sum(s[attrs["axis"]] for s in shapes)
    assert_gradients("concat", attrs, {}, xs)


# ---- forward against onnxruntime ----------------------------------------------------------------

def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def assert_close_f32(y, ref):
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fc_matches_gemm(bias):
    rng = np.random.default_rng(20)
    attrs, shapes, _ = resolve("fc", [(5,)], units=4, bias=bias)
    params = {k: f32(rng, *s) for k, s in shapes.items()}
    x = f32(rng, 3, 5)
    ref = onnx_run("Gemm", [x, params["W"], params.get("b")], transB=1)[0]
    assert_close_f32(run("fc", attrs, params, [x])[0], ref)


def test_flatten_matches_onnx_flatten():
    rng = np.random.default_rng(21)
    x = f32(rng, 2, 3, 4, 5)
    attrs, _, _ = resolve("flatten", [(3, 4, 5)])
    assert np.array_equal(run("flatten", attrs, {}, [x])[0], onnx_run("Flatten", [x], axis=1)[0])


def test_embed_matches_gather():
    rng = np.random.default_rng(22)
    attrs, shapes, _ = resolve("embed", [(5,)], dim=3, vocab=7)
    W = f32(rng, *shapes["W"])
    ids = rng.integers(0, 7, (2, 5))
    assert np.array_equal(run("embed", attrs, {"W": W}, [ids])[0], onnx_run("Gather", [W, ids], axis=0)[0])


ONNX_ACTIVATIONS = {
    "relu": ("Relu", {}, {}, 17),
    "sigmoid": ("Sigmoid", {}, {}, 17),
    "tanh": ("Tanh", {}, {}, 17),
    "elu": ("Elu", {"alpha": 0.7}, {"alpha": 0.7}, 17),
    "selu": ("Selu", {}, {"alpha": SELU_ALPHA, "gamma": SELU_SCALE}, 17),
    "gelu": ("Gelu", {}, {}, 20),
    "leaky": ("LeakyRelu", {"alpha": 0.1}, {"alpha": 0.1}, 17),
    "silu": ("Swish", {}, {}, 24),  # Swish(alpha=1) is SiLU; onnxruntime runs it from opset 24
    "logsoftmax": ("LogSoftmax", {}, {"axis": 1}, 17),
    "softplus": ("Softplus", {}, {}, 17),
    "softsign": ("Softsign", {}, {}, 17),
    "exp": ("Exp", {}, {}, 17),
    "abs": ("Abs", {}, {}, 17),
    "neg": ("Neg", {}, {}, 17),
    # the kinds of issue 21: ONNX's HardSwish, one operator, checks dlc's x * hardsigmoid(x)
    "hardsigmoid": ("HardSigmoid", {}, {"alpha": 1 / 6, "beta": 0.5}, 17),
    "hardswish": ("HardSwish", {}, {}, 17),
}


@pytest.mark.parametrize("kind", sorted(ONNX_ACTIVATIONS))
def test_activation_matches_onnxruntime(kind):
    op, written, onnx_attrs, opset = ONNX_ACTIVATIONS[kind]
    x = f32(np.random.default_rng(23), 2, 3, 4, 4, scale=3)
    attrs, _, _ = resolve(kind, [(3, 4, 4)], **written)
    assert_close_f32(run(kind, attrs, {}, [x])[0], onnx_run(op, [x], opset=opset, **onnx_attrs)[0])


# ---- the math kinds of issue 28 with a setting or a tensor ----

def test_sqrt_gradients_and_onnxruntime_on_positive_inputs():
    x = np.random.default_rng(40).uniform(0.5, 3.0, (2, 3, 2, 2))
    attrs, _, _ = resolve("sqrt", [(3, 2, 2)])
    assert_gradients("sqrt", attrs, {}, [x])
    x32 = x.astype(np.float32)
    assert_close_f32(run("sqrt", attrs, {}, [x32])[0], onnx_run("Sqrt", [x32])[0])


@pytest.mark.parametrize("kind", ["softmax", "logsoftmax"])
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_and_logsoftmax_along_another_axis_against_central_differences_and_onnxruntime(kind, axis):
    rng = np.random.default_rng(41)
    attrs, _, _ = resolve(kind, [(3, 4, 5)], axis=axis)
    assert_gradients(kind, attrs, {}, [rng.standard_normal((2, 3, 4, 5))])
    x = f32(rng, 2, 3, 4, 5, scale=3)
    op = {"softmax": "Softmax", "logsoftmax": "LogSoftmax"}[kind]
    assert_close_f32(run(kind, attrs, {}, [x])[0], onnx_run(op, [x], axis=attrs["axis"] + 1)[0])


@pytest.mark.parametrize("bounds", [{"min": -1.0, "max": 1.0}, {"min": 0.5}, {"max": -0.5}])
def test_clip_with_any_bounds_against_central_differences_and_onnxruntime(bounds):
    rng = np.random.default_rng(42)
    attrs, _, _ = resolve("clip", [(6,)], **bounds)
    x = 3 * rng.standard_normal((4, 6))
    for edge in bounds.values():  # off the bounds, where the derivative jumps
        x[np.abs(x - edge) < 0.05] += 0.1
    assert_gradients("clip", attrs, {}, [x])
    x32 = x.astype(np.float32)
    lo, hi = (np.array(bounds[k], np.float32) if k in bounds else None for k in ("min", "max"))
    assert_close_f32(run("clip", attrs, {}, [x32])[0], onnx_run("Clip", [x32, lo, hi])[0])


@pytest.mark.parametrize("shape,channels", [((3, 4, 4), True), ((3, 4, 4), False), ((6,), True), ((5, 4), True)])
def test_prelu_slopes_against_central_differences_and_onnxruntime(shape, channels):
    rng = np.random.default_rng(43)
    attrs, shapes, _ = resolve("prelu", [shape], channels=channels)
    params = {"alpha": rng.uniform(0.1, 0.5, shapes["alpha"])}
    x = away_from_kinks(rng.standard_normal((2, *shape)))
    assert_gradients("prelu", attrs, params, [x])
    x32, a32 = x.astype(np.float32), params["alpha"].astype(np.float32)
    assert_close_f32(run("prelu", attrs, {"alpha": a32}, [x32])[0], onnx_run("PRelu", [x32, a32])[0])


@pytest.mark.parametrize("shape,channels", [((3, 4, 4), True), ((3, 4, 4), False), ((5, 4), True)])
def test_shift_against_central_differences_and_onnxruntime(shape, channels):
    rng = np.random.default_rng(46)
    attrs, shapes, _ = resolve("shift", [shape], channels=channels)
    params = random_arrays(shapes, rng)
    assert_gradients("shift", attrs, params, [rng.standard_normal((2, *shape))])
    x32, b32 = f32(rng, 2, *shape), params["b"].astype(np.float32)
    assert_close_f32(run("shift", attrs, {"b": b32}, [x32])[0], onnx_run("Add", [x32, b32])[0])


@pytest.mark.parametrize("shape,axis", [((6,), None), ((4, 3, 3), None), ((6, 5), 0), ((3, 4, 2), 2)])
def test_glu_against_central_differences_and_torch_formula(shape, axis):
    rng = np.random.default_rng(44)
    attrs, _, _ = resolve("glu", [shape], axis=axis)
    x = rng.standard_normal((2, *shape))
    assert_gradients("glu", attrs, {}, [x])
    a, b = np.split(x, 2, axis=attrs["axis"] + 1)
    np.testing.assert_allclose(run("glu", attrs, {}, [x])[0], a / (1 + np.exp(-b)), rtol=1e-12)


@pytest.mark.parametrize("sum_", [False, True])
@pytest.mark.parametrize("keep", [False, True])
def test_reduce_against_central_differences_and_onnxruntime(sum_, keep):
    rng = np.random.default_rng(45)
    attrs, _, _ = resolve("reduce", [(2, 3, 4)], axis=1, sum=sum_, keep=keep)
    assert_gradients("reduce", attrs, {}, [rng.standard_normal((2, 2, 3, 4))])
    x = f32(rng, 2, 2, 3, 4)
    op = "ReduceSum" if sum_ else "ReduceMean"
    ref = onnx_run(op, [x, np.array([2])], opset=18, keepdims=int(keep))[0]
    assert_close_f32(run("reduce", attrs, {}, [x])[0], ref)


def test_relu6_matches_clip():
    x = f32(np.random.default_rng(24), 4, 10, scale=5)
    attrs, _, _ = resolve("relu6", [(10,)])
    ref = onnx_run("Clip", [x, np.array(0, dtype=np.float32), np.array(6, dtype=np.float32)])[0]
    assert_close_f32(run("relu6", attrs, {}, [x])[0], ref)


def test_identity_returns_its_input():
    x = f32(np.random.default_rng(25), 2, 3)
    attrs, _, _ = resolve("identity", [(3,)])
    assert np.array_equal(run("identity", attrs, {}, [x])[0], onnx_run("Identity", [x])[0])


@pytest.mark.parametrize("shape,axis", [((3, 7), 1), ((2, 5, 3, 3), 1), ((2, 4, 6), -1)])
def test_softmax_matches_onnxruntime(shape, axis):
    # large logits: only a max-shifted softmax stays finite
    x = f32(np.random.default_rng(26), *shape, scale=30)
    attrs, _, _ = resolve("softmax", [shape[1:]])
    y = run("softmax", attrs, {}, [x])[0]
    assert_close_f32(y, onnx_run("Softmax", [x], opset=13, axis=axis)[0])
    np.testing.assert_allclose(y.sum(axis=axis), 1, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5), (2, 3, 6), (2, 3, 2, 3, 4)])
def test_bn_inference_matches_batchnormalization(shape):
    rng = np.random.default_rng(27)
    attrs, _, _ = resolve("bn", [batchless(shape)], eps=1e-3)
    params = {"gamma": f32(rng, 3), "beta": f32(rng, 3)}
    state = {"mean": f32(rng, 3), "var": rng.uniform(0.5, 2, 3).astype(np.float32)}
    x = f32(rng, *shape)
    ref = onnx_run("BatchNormalization", [x, params["gamma"], params["beta"], state["mean"], state["var"]],
                   opset=15, epsilon=1e-3)[0]
    assert_close_f32(run("bn", attrs, params, [x], state=state)[0], ref)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_onnxruntime(size):
    x = f32(np.random.default_rng(28), 2, 7, 3, 3, scale=2)
    attrs, _, _ = resolve("lrn", [(7, 3, 3)], size=size, alpha=0.3, beta=0.75, k=1.5)
    ref = onnx_run("LRN", [x], opset=13, size=size, alpha=0.3, beta=0.75, bias=1.5)[0]
    assert_close_f32(run("lrn", attrs, {}, [x])[0], ref)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size_follows_the_onnx_window(size):
    # onnxruntime implements odd sizes only; the ONNX text puts floor((size-1)/2) channels before
    # and ceil((size-1)/2) after: size 4 sums channels c-1 .. c+2
    x = np.random.default_rng(29).standard_normal((2, 6, 2, 2))
    attrs, _, _ = resolve("lrn", [(6, 2, 2)], size=size, alpha=0.3, beta=0.75, k=1.5)
    before, after = (size - 1) // 2, size // 2
    ref = np.empty_like(x)
    for c in range(6):
        window = x[:, max(0, c - before):min(6, c + after + 1)]
        ref[:, c] = x[:, c] / (1.5 + 0.3 / size * (window ** 2).sum(axis=1)) ** 0.75
    np.testing.assert_allclose(run("lrn", attrs, {}, [x])[0], ref, rtol=1e-13)


@pytest.mark.parametrize("training", [True, False])
def test_instancenorm_matches_its_definition_onnxruntime_and_central_differences(training):
    # each sample's channel over its own pixels, whatever the batch and in training or not
    rng = np.random.default_rng(31)
    attrs, shapes, state_shapes = resolve("instancenorm", [(3, 4, 5)], eps=1e-3)
    assert shapes == {"gamma": (3,), "beta": (3,)} and state_shapes == {}
    params = {"gamma": 1 + 0.5 * rng.standard_normal(3), "beta": rng.standard_normal(3)}
    x = 2 * rng.standard_normal((2, 3, 4, 5)) + 1
    y = run("instancenorm", attrs, params, [x], training=training)[0]
    for s in range(2):
        for c in range(3):
            plane = x[s, c]
            want = (plane - plane.mean()) / np.sqrt(plane.var() + 1e-3) * params["gamma"][c] + params["beta"][c]
            np.testing.assert_allclose(y[s, c], want, rtol=1e-12)
    f = {k: v.astype(np.float32) for k, v in params.items()}
    ref = onnx_run("InstanceNormalization", [x.astype(np.float32), f["gamma"], f["beta"]], opset=13, epsilon=1e-3)[0]
    assert_close_f32(run("instancenorm", attrs, f, [x.astype(np.float32)])[0], ref)
    assert_gradients("instancenorm", attrs, params, [x], ctx=lambda: Ctx(training))


@pytest.mark.parametrize("shape", [(6, 4, 5), Signal((6, 7)), (4, 2, 3, 3)], ids=["image", "signal", "volume"])
def test_groupnorm_matches_its_definition_onnxruntime_and_central_differences(shape):
    # each sample's group of channels over all their positions; then each channel's scale and shift
    rng = np.random.default_rng(32)
    groups = 2
    attrs, shapes, state_shapes = resolve("groupnorm", [shape], groups=groups, eps=1e-3)
    c = shape[0]
    assert shapes == {"gamma": (c,), "beta": (c,)} and state_shapes == {}
    params = {"gamma": 1 + 0.5 * rng.standard_normal(c), "beta": rng.standard_normal(c)}
    x = 2 * rng.standard_normal((2, *shape)) + 1
    y = run("groupnorm", attrs, params, [x])[0]
    per = c // groups
    for s in range(2):
        for g in range(groups):
            block = x[s, g * per:(g + 1) * per]
            for k in range(per):
                ch = g * per + k
                want = (x[s, ch] - block.mean()) / np.sqrt(block.var() + 1e-3) * params["gamma"][ch] + params["beta"][ch]
                np.testing.assert_allclose(y[s, ch], want, rtol=1e-12, atol=1e-12)
    # onnxruntime's InstanceNormalization of the grouped view (PyTorch's exported form), then gamma and beta
    f = {k: v.astype(np.float32) for k, v in params.items()}
    grouped = x.astype(np.float32).reshape(2, groups, -1)
    ref = onnx_run("InstanceNormalization", [grouped, np.ones(groups, np.float32), np.zeros(groups, np.float32)],
                   opset=13, epsilon=1e-3)[0].reshape(x.shape)
    view = (1, c) + (1,) * (len(shape) - 1)
    assert_close_f32(run("groupnorm", attrs, f, [x.astype(np.float32)])[0],
                     ref * f["gamma"].reshape(view) + f["beta"].reshape(view))
    assert_gradients("groupnorm", attrs, params, [x])


def test_add_matches_onnx_add_and_sum():
    rng = np.random.default_rng(29)
    a, b, c = (f32(rng, 2, 3, 2, 2) for _ in range(3))
    attrs, _, _ = resolve("add", [(3, 2, 2)] * 2)
    assert_close_f32(run("add", attrs, {}, [a, b])[0], onnx_run("Add", [a, b])[0])
    attrs, _, _ = resolve("add", [(3, 2, 2)] * 3)
    assert_close_f32(run("add", attrs, {}, [a, b, c])[0], onnx_run("Sum", [a, b, c])[0])


def test_mul_matches_onnx_mul_with_the_vector_unsqueezed():
    rng = np.random.default_rng(29)
    a, b, v = f32(rng, 2, 3, 2, 2), f32(rng, 2, 3, 2, 2), f32(rng, 2, 3)
    attrs, _, _ = resolve("mul", [(3, 2, 2)] * 2)
    assert_close_f32(run("mul", attrs, {}, [a, b])[0], onnx_run("Mul", [a, b])[0])
    attrs, _, _ = resolve("mul", [(3, 2, 2), (3,)])
    assert_close_f32(run("mul", attrs, {}, [a, v])[0], onnx_run("Mul", [a, v[:, :, None, None]])[0])
    s = f32(rng, 2, 5, 3)
    attrs, _, _ = resolve("mul", [(3,), (5, 3)])
    assert_close_f32(run("mul", attrs, {}, [v, s])[0], onnx_run("Mul", [v[:, None, :], s])[0])


@pytest.mark.parametrize("shapes", [[(2, 3, 3), (4, 3, 3)], [(3,), (5,)], [(4, 2), (4, 3), (4, 1)]])
def test_concat_matches_onnx_concat(shapes):
    rng = np.random.default_rng(30)
    xs = [f32(rng, 2, *s) for s in shapes]
    attrs, _, _ = resolve("concat", shapes)
    ref = onnx_run("Concat", xs, axis=attrs["axis"] + 1)[0]
    assert np.array_equal(run("concat", attrs, {}, xs)[0], ref)


# ---- dtype, statistics, running averages, randomness --------------------------------------------

def test_float32_stays_float32_forward_and_backward():
    rng = np.random.default_rng(31)
    x = f32(rng, 4, 3, 2, 2)
    cases = [(k, resolve(k, [(3, 2, 2)]), [x]) for k in ACTIVATIONS]
    cases += [("dropout", resolve("dropout", [(3, 2, 2)], p=0.5), [x]),
              ("noise", resolve("noise", [(3, 2, 2)], sigma=0.1), [x]),
              ("bn", resolve("bn", [(3, 2, 2)]), [x]),
              ("lrn", resolve("lrn", [(3, 2, 2)]), [x]),
              ("flatten", resolve("flatten", [(3, 2, 2)]), [x]),
              ("add", resolve("add", [(3, 2, 2)] * 2), [x, x]),
              ("mul", resolve("mul", [(3, 2, 2)] * 2), [x, x]),
              ("mul", resolve("mul", [(3, 2, 2), (3,)]), [x, f32(rng, 4, 3)]),
              ("concat", resolve("concat", [(3, 2, 2)] * 2), [x, x]),
              ("fc", resolve("fc", [(5,)], units=3), [f32(rng, 4, 5)])]
    for kind, (attrs, pshapes, sshapes), xs in cases:
        params = {k: (np.ones(s) if k == "gamma" else 0.1 * np.ones(s)).astype(np.float32)
                  for k, s in pshapes.items()}
        state = {k: np.ones(s, dtype=np.float32) for k, s in sshapes.items()}
        for training in (False, True):
            y, backward = run(kind, attrs, params, xs, state=state, training=training)
            dxs, grads = backward(np.ones_like(y))
            assert y.dtype == np.float32, (kind, training)
            assert all(d.dtype == np.float32 for d in dxs), (kind, training)
            assert all(g.dtype == np.float32 for g in grads.values()), (kind, training)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 5), (4, 3, 5), (2, 3, 2, 2, 3)])
def test_bn_training_normalises_with_the_batch_and_moves_the_running_averages(shape):
    rng = np.random.default_rng(32)
    attrs, _, _ = resolve("bn", [batchless(shape)], momentum=0.2, eps=1e-5)
    x = 3 * rng.standard_normal(shape) + 2
    params = {"gamma": np.ones(3), "beta": np.zeros(3)}
    old_mean, old_var = np.array([0.5, -1.0, 0.0]), np.array([1.0, 2.0, 0.5])
    state = {"mean": old_mean.copy(), "var": old_var.copy()}
    mean_before, var_before = state["mean"], state["var"]
    y, _ = run("bn", attrs, params, [x], state=state, training=True)

    # by hand: per channel, every sample (and pixel) of the batch
    per_channel = np.moveaxis(x, 1, 0).reshape(3, -1)
    n = per_channel.shape[1]
    mu = per_channel.sum(axis=1) / n
    biased = ((per_channel - mu[:, None]) ** 2).sum(axis=1) / n
    unbiased = biased * n / (n - 1)
    assert state["mean"] is mean_before and state["var"] is var_before  # updated in place
    np.testing.assert_allclose(state["mean"], 0.8 * old_mean + 0.2 * mu, rtol=1e-12)
    np.testing.assert_allclose(state["var"], 0.8 * old_var + 0.2 * unbiased, rtol=1e-12)
    # normalised with the biased variance: mean 0, variance exactly var/(var+eps) per channel
    y_channels = np.moveaxis(y, 1, 0).reshape(3, -1)
    np.testing.assert_allclose(y_channels.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(y_channels.var(axis=1), biased / (biased + 1e-5), rtol=1e-10)

    frozen = {k: v.copy() for k, v in state.items()}
    run("bn", attrs, params, [x], state=state, training=False)
    assert all(np.array_equal(state[k], frozen[k]) for k in state)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (2, 3, 4)])
def test_bn_on_batch_innermost_memory_matches_the_c_ordered_batch(shape, training):
    # Convs hand bn NCHW views of (C, H, W, N) memory, which bn reads as one (C, H*W*N) matrix (BLAS
    # sums and dot products); a C-ordered batch takes the general (N, C, H*W) path, whose gradients
    # test_bn_gradients checks by central differences. Both give the same outputs and gradients,
    # and dy may arrive in either layout.
    rng = np.random.default_rng(34)
    attrs, _, _ = resolve("bn", [batchless(shape)])
    x = 2 * rng.standard_normal(shape) + 1
    dy = rng.standard_normal(shape)
    params = {"gamma": 1 + 0.5 * rng.standard_normal(3), "beta": rng.standard_normal(3)}
    state = {"mean": 0.3 * rng.standard_normal(3), "var": rng.uniform(0.5, 2, 3)}

    def inner(a):
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)

    y, backward = run("bn", attrs, params, [x], state={k: v.copy() for k, v in state.items()}, training=training)
    (dx,), grads = backward(dy)
    xi = inner(x)
    assert np.shares_memory(norm._by_channel(xi, norm._batch_innermost(xi)), xi)  # the (C, H*W*N) path
    for x_in, dy_in in [(inner(x), inner(dy)), (inner(x), dy), (x, inner(dy))]:
        y2, backward2 = run("bn", attrs, params, [x_in], state={k: v.copy() for k, v in state.items()},
                            training=training)
        (dx2,), grads2 = backward2(dy_in)
        np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx2, dx, rtol=1e-10, atol=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads2[k], grads[k], rtol=1e-12)


def test_bn_training_step_holds_no_batch_sized_array_beyond_what_it_returns_and_keeps():
    # A float32 batch of 64 x 64@28x28 (12.8 MB, EfficientNet's first block): forward returns y and
    # keeps xhat for backward (2 batches at its peak); backward returns dx and holds dy * xhat for
    # gamma's gradient (2 batches). Temporaries for each term of the formulas made it 3-4 batches.
    rng = np.random.default_rng(33)
    x = rng.standard_normal((64, 64, 28, 28), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    attrs, _, _ = resolve("bn", [x.shape[1:]])
    params = {"gamma": np.ones(64, np.float32), "beta": np.zeros(64, np.float32)}
    state = {"mean": np.zeros(64, np.float32), "var": np.ones(64, np.float32)}
    tracemalloc.start()
    try:
        y, backward = run("bn", attrs, params, [x], state=state, training=True)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        backward(dy)
        backward_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert forward_peak < 2.1 * x.nbytes
    assert backward_peak < 2.1 * x.nbytes


def test_dropout_drops_at_rate_p_and_scales_the_rest():
    attrs, _, _ = resolve("dropout", [(200, 500)], p=0.3)
    x = np.full((1, 200, 500), 2.0, dtype=np.float32)
    y, backward = run("dropout", attrs, {}, [x], training=True, seed=3)
    kept = y != 0
    n = x.size
    # within 5 standard deviations of a binomial(n, 0.7) count
    assert abs(kept.sum() - 0.7 * n) < 5 * math.sqrt(n * 0.3 * 0.7)
    np.testing.assert_allclose(y[kept], 2.0 / 0.7, rtol=1e-6)
    dx = backward(np.ones_like(y))[0][0]
    assert np.array_equal(dx != 0, kept)
    # the same seed gives the same mask; another seed a different one
    assert np.array_equal(run("dropout", attrs, {}, [x], training=True, seed=3)[0], y)
    assert not np.array_equal(run("dropout", attrs, {}, [x], training=True, seed=4)[0], y)
    assert run("dropout", attrs, {}, [x], training=False)[0] is x


def test_noise_adds_gaussian_noise_in_training_only():
    attrs, _, _ = resolve("noise", [(100, 1000)], sigma=0.25)
    x = np.ones((1, 100, 1000))
    y, _ = run("noise", attrs, {}, [x], training=True)
    e = (y - x).ravel()
    # sample mean and std of 1e5 draws: within 5 standard errors
    assert abs(e.mean()) < 5 * 0.25 / math.sqrt(e.size)
    assert abs(e.std() - 0.25) < 5 * 0.25 / math.sqrt(2 * e.size)
    assert run("noise", attrs, {}, [x], training=False)[0] is x


def test_stochastic_kinds_need_an_rng_in_training():
    attrs, _, _ = resolve("dropout", [(3,)], p=0.5)
    with pytest.raises(ValueError, match="ctx.rng"):
        KERNELS["dropout"](attrs, {}, {}, [np.ones((2, 3))], Ctx(training=True))


def test_erfc_agrees_with_the_math_module_to_float64_rounding():
    x = np.concatenate([np.linspace(-9, 9, 3601), [0.0, 0.46875, -0.46875, 4.0, -4.0, 26.0, 40.0, -40.0]])
    ref = np.array([math.erfc(v) for v in x])
    got = erfc(x)
    tiny = ref < 1e-300
    assert np.all(got[tiny] < 1e-300)
    assert np.max(np.abs(got - ref)[~tiny] / ref[~tiny]) < 1e-14


def test_gelu_values_at_published_points():
    # x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, from the math module
    x = np.array([[-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]])
    ref = [v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x[0]]
    attrs, _, _ = resolve("gelu", [(7,)])
    np.testing.assert_allclose(run("gelu", attrs, {}, [x])[0][0], ref, rtol=1e-14, atol=1e-300)
    assert abs(run("gelu", attrs, {}, [x])[0][0, 5] - 0.8413447460685429) < 1e-15  # Phi(1)


def test_float32_normal_cdf_is_within_float32_rounding_of_the_math_module():
    # float32 takes Abramowitz & Stegun 7.1.26 (error <= 1.5e-7) in place of Cody's float64 erfc
    x = np.linspace(-12, 12, 4801)
    ref = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    got, gauss = normal_cdf(x.astype(np.float32))
    assert got.dtype == gauss.dtype == np.float32
    assert np.max(np.abs(got - ref)) < 3e-7
    # the exponential A&S computes on the way, which gelu's backward reuses: exp(-x²/2), whose float32
    # argument carries a rounding of x²/2 (1e-5 relative far out, 1e-7 absolute)
    np.testing.assert_allclose(gauss, np.exp(-x * x / 2), rtol=0, atol=2e-7)


def test_float32_gelu_gradient_is_within_float32_rounding_of_the_float64_one():
    # float32 backward reuses the forward's exp(-x²/2); float64 computes its own: both are
    # dy * (Phi(x) + x exp(-x²/2) / sqrt(2 pi)), from the math module here
    x = np.linspace(-12, 12, 4801).reshape(1, -1)
    dy = np.random.default_rng(7).standard_normal(x.shape)
    ref = dy * np.array([[0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                          for v in x[0]]])
    attrs, _, _ = resolve("gelu", [(x.shape[1],)])
    _, backward = KERNELS["gelu"](attrs, {}, {}, [x.astype(np.float32)], Ctx(True, np.random.default_rng(0)))
    got = backward(dy.astype(np.float32))[0][0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=4e-7 * np.abs(dy).max())


# ---- the kinds of today's vision networks (issue 21) ----

@pytest.mark.parametrize("kind", ["hardsigmoid", "hardswish"])
def test_hard_activations_against_central_differences_and_pytorchs_formula(kind):
    x = 4 * np.random.default_rng(50).standard_normal((2, 3, 4, 4))
    x[np.abs(np.abs(x) - 3) < 0.05] += 0.1  # off the kinks at -3 and 3
    attrs, _, _ = resolve(kind, [(3, 4, 4)])
    assert_gradients(kind, attrs, {}, [x])
    gate = np.minimum(np.maximum(x + 3, 0), 6) / 6  # PyTorch's relu6(x + 3) / 6, written apart
    np.testing.assert_allclose(run(kind, attrs, {}, [x])[0], gate if kind == "hardsigmoid" else x * gate, rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 4), (6,), (5, 4)], ids=["image", "vector", "sequence"])
def test_scale_against_central_differences_a_loop_and_onnxruntime(shape):
    rng = np.random.default_rng(51)
    attrs, shapes, _ = resolve("scale", [shape])
    params = {"gamma": rng.standard_normal(shapes["gamma"])}
    x = rng.standard_normal((2, *shape))
    assert_gradients("scale", attrs, params, [x])
    y = run("scale", attrs, params, [x])[0]
    axis = 1 if len(shape) != 2 else 2  # a channel of an image, a feature of a vector or of each step
    for f in range(shape[axis - 1]):
        np.testing.assert_allclose(np.take(y, f, axis), np.take(x, f, axis) * params["gamma"].reshape(-1)[f])
    x32, g32 = x.astype(np.float32), params["gamma"].astype(np.float32)
    assert_close_f32(run("scale", attrs, {"gamma": g32}, [x32])[0], onnx_run("Mul", [x32, g32])[0])


def test_droppath_drops_whole_samples_in_training_and_is_the_identity_at_inference():
    attrs, _, _ = resolve("droppath", [(3, 2, 2)], p=0.5)
    x = np.random.default_rng(52).standard_normal((400, 3, 2, 2))
    assert run("droppath", attrs, {}, [x])[0] is x
    y, backward = run("droppath", attrs, {}, [x], training=True)
    kept = np.all(y == 2 * x, axis=(1, 2, 3))  # kept ones scaled by 1 / (1 - 0.5)
    assert np.all(kept | np.all(y == 0, axis=(1, 2, 3))) and 150 < kept.sum() < 250
    (dx,), _ = backward(np.ones_like(x))
    assert np.array_equal(dx[kept], np.full_like(x[kept], 2)) and not dx[~kept].any()
    assert_gradients("droppath", attrs, {}, [x[:4]], ctx=lambda: Ctx(True, np.random.default_rng(7)))
