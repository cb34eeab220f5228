"""The transformer kernels: layernorm, rmsnorm, attention, posembed, clstoken, tokens, seqpool, and fc on each
step of a sequence. Backward against central differences in float64, in every mode; forward against
onnxruntime's operator (LayerNormalization, RMSNormalization) or a plain loop written from the definition (attention:
Vaswani et al. 2017, eq. 1 and section 3.2.2); attention's memory at GPT-2 small's size.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from dlc.engine.kernels import KERNELS, Ctx
from dlc.layers import Signal
from kernel_checks import TOLERANCE, assert_gradients, gradient_errors, onnx_run, random_arrays, resolve


def run(kind, attrs, params, xs, training=False, seed=0):
    return KERNELS[kind](attrs, params, {}, xs, Ctx(training, np.random.default_rng(seed)))


# ---- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (4, 5)], ids=["vector", "sequence"])
def test_layernorm_gradients(shape):
    rng = np.random.default_rng(1)
    attrs, shapes, _ = resolve("layernorm", [shape])
    params = {"gamma": 1 + random_arrays(shapes, rng)["gamma"], "beta": random_arrays(shapes, rng)["beta"]}
    assert_gradients("layernorm", attrs, params, [2 * rng.standard_normal((3, *shape)) + 1])


@pytest.mark.parametrize("shape", [(5,), (4, 5)], ids=["vector", "sequence"])
def test_rmsnorm_gradients(shape):
    rng = np.random.default_rng(1)
    attrs, shapes, _ = resolve("rmsnorm", [shape])
    assert shapes == {"gamma": (5,)}
    params = {"gamma": 1 + random_arrays(shapes, rng)["gamma"]}
    assert_gradients("rmsnorm", attrs, params, [2 * rng.standard_normal((3, *shape)) + 1])


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norms_in_float32_stay_float32_and_agree_with_float64(kind):
    # float32's gradients are float64's rounded: one forward and backward at each precision
    rng = np.random.default_rng(4)
    attrs, shapes, _ = resolve(kind, [(4, 6)])
    params = {k: (1 if k == "gamma" else 0) + random_arrays(shapes, rng)[k] for k in shapes}
    x, dy = 2 * rng.standard_normal((3, 4, 6)) + 1, rng.standard_normal((3, 4, 6))
    results = {}
    for dtype in (np.float64, np.float32):
        y, backward = run(kind, attrs, {k: v.astype(dtype) for k, v in params.items()}, [x.astype(dtype)])
        dxs, grads = backward(dy.astype(dtype))
        assert {a.dtype for a in (y, *dxs, *grads.values())} == {np.dtype(dtype)}
        results[dtype] = (y, dxs[0], *grads.values())
    for a, b in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def assert_attention_gradients(attrs, params, x, ctx=lambda: Ctx()):
    """Every gradient against central differences, except the key bias's, which is zero: adding b to every
    key adds q·b to each score of a row alike, and softmax ignores that. Its check is that it is ~0.
    (With rope the bias turns with each key's position, so the scores of a row move apart: it counts.)"""
    errors = gradient_errors("attention", attrs, params, [x], ctx=ctx)
    zero = "bk" if "bk" in params and not attrs["rope"] else None
    bad = {k: e for k, e in errors.items() if k != zero and not e < TOLERANCE}
    assert not bad, f"attention: relative errors above {TOLERANCE}: {bad}"
    if zero:
        _, backward = KERNELS["attention"](attrs, params, {}, [x], ctx())
        assert np.abs(backward(np.ones_like(x))[1]["bk"]).max() < 1e-12


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads", [1, 3])
def test_attention_gradients(heads, causal, bias):
    rng = np.random.default_rng(2)
    attrs, shapes, _ = resolve("attention", [(4, 6)], heads=heads, causal=causal, bias=bias)
    assert_attention_gradients(attrs, random_arrays(shapes, rng), rng.standard_normal((2, 4, 6)))


def test_attention_gradients_with_dropout_in_training():
    rng = np.random.default_rng(3)
    attrs, shapes, _ = resolve("attention", [(5, 4)], heads=2, causal=True, dropout=0.3)
    params = random_arrays(shapes, rng)
    x = rng.standard_normal((2, 5, 4))
    # the same seed in every evaluation: the mask on the attention weights is fixed while x moves
    assert_attention_gradients(attrs, params, x, ctx=lambda: Ctx(True, np.random.default_rng(4)))
    dropped, _ = run("attention", attrs, params, [x], training=True, seed=4)
    assert not np.allclose(dropped, run("attention", attrs, params, [x])[0])  # the mask did something


def test_fc_gradients_on_each_step():
    rng = np.random.default_rng(5)
    attrs, shapes, _ = resolve("fc", [(4, 3)], units=2)
    assert attrs["steps"] == 4
    assert_gradients("fc", attrs, random_arrays(shapes, rng), [rng.standard_normal((2, 4, 3))])


def test_posembed_gradients():
    rng = np.random.default_rng(6)
    attrs, shapes, _ = resolve("posembed", [(4, 3)])
    assert_gradients("posembed", attrs, random_arrays(shapes, rng), [rng.standard_normal((2, 4, 3))])


def test_clstoken_gradients():
    rng = np.random.default_rng(7)
    attrs, shapes, _ = resolve("clstoken", [(4, 3)])
    assert_gradients("clstoken", attrs, random_arrays(shapes, rng), [rng.standard_normal((2, 4, 3))])


def test_tokens_gradients():
    attrs, _, _ = resolve("tokens", [(3, 2, 4)])
    assert_gradients("tokens", attrs, {}, [np.random.default_rng(8).standard_normal((2, 3, 2, 4))])


@pytest.mark.parametrize("mode", ["first", "last", "mean"])
def test_seqpool_gradients(mode):
    attrs, _, _ = resolve("seqpool", [(4, 3)], **{mode: True})
    assert attrs["mode"] == mode
    assert_gradients("seqpool", attrs, {}, [np.random.default_rng(9).standard_normal((2, 4, 3))])


# every mode of the options: grouped kv heads (kv=1 is multi-query), rope, a window, all together
OPTION_MODES = {"kv groups": dict(heads=4, kv=2), "multi-query": dict(heads=4, kv=1),
                "rope": dict(heads=2, rope=True), "window": dict(heads=2, causal=True, window=2),
                "all": dict(heads=4, kv=2, rope=500000.0, causal=True, window=3)}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("mode", OPTION_MODES)
def test_attention_option_gradients(mode, bias):
    rng = np.random.default_rng(5)
    attrs, shapes, _ = resolve("attention", [(5, 8)], bias=bias, **OPTION_MODES[mode])
    assert_attention_gradients(attrs, random_arrays(shapes, rng), rng.standard_normal((2, 5, 8)))


@pytest.mark.parametrize("mode", OPTION_MODES)
def test_attention_option_gradients_in_float32(mode):
    # central differences in float32 are noise; float32's backward instead matches float64's (checked
    # above against central differences) to float32's precision
    rng = np.random.default_rng(6)
    attrs, shapes, _ = resolve("attention", [(5, 8)], **OPTION_MODES[mode])
    params, x = random_arrays(shapes, rng), rng.standard_normal((2, 5, 8))
    dy = rng.standard_normal((2, 5, 8))
    y64, back64 = run("attention", attrs, params, [x])
    y32, back32 = run("attention", attrs, {k: v.astype(np.float32) for k, v in params.items()},
                      [x.astype(np.float32)])
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    (dx64,), g64 = back64(dy)
    (dx32,), g32 = back32(dy.astype(np.float32))
    assert dx32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    for name, want in [("x", dx64), *g64.items()]:
        got = dx32 if name == "x" else g32[name]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name


# ---- forward against references -----------------------------------------------------------------

def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 7)], ids=["vector", "sequence"])
def test_layernorm_matches_layernormalization(shape):
    rng = np.random.default_rng(20)
    attrs, _, _ = resolve("layernorm", [shape[1:]], eps=1e-6)
    gamma, beta, x = f32(rng, 7), f32(rng, 7), f32(rng, *shape, scale=3.0)
    ref = onnx_run("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-6)[0]
    y = run("layernorm", attrs, {"gamma": gamma, "beta": beta}, [x])[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 7)], ids=["vector", "sequence"])
def test_rmsnorm_matches_rmsnormalization(shape):
    rng = np.random.default_rng(21)
    attrs, _, _ = resolve("rmsnorm", [shape[1:]], eps=1e-6)
    gamma, x = f32(rng, 7), f32(rng, *shape, scale=3.0)
    ref = onnx_run("RMSNormalization", [x, gamma], opset=23, axis=-1, epsilon=1e-6)[0]
    y = run("rmsnorm", attrs, {"gamma": gamma}, [x])[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def turned(x, m, theta):
    """One head's features at position m under rope, pair by pair: feature i and i + d/2 turn by
    m·theta^(-2i/d) (Su et al. 2021, eq. 34, in Hugging Face Llama's pairing)."""
    half = len(x) // 2
    out = x.copy()
    for i in range(half):
        angle = m * theta ** (-2 * i / len(x))
        c, s = math.cos(angle), math.sin(angle)
        out[i], out[i + half] = x[i] * c - x[i + half] * s, x[i + half] * c + x[i] * s
    return out


def attention_by_loops(x, p, heads, causal, kv=None, theta=None, window=None):
    """Self-attention one sample, head and step at a time, straight from the definition; query head h
    reads key/value head h // (heads/kv); a causal step i sees steps max(0, i - window + 1) .. i."""
    n, t, d = x.shape
    dh = d // heads
    group = heads // (kv or heads)
    q, k, v = (x @ p[f"W{w}"].T + p[f"b{w}"] for w in "qkv")
    out = np.zeros_like(x)
    for s in range(n):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            kv_cols = slice(h // group * dh, (h // group + 1) * dh)
            for i in range(t):
                first = 0 if window is None else max(0, i - window + 1)
                seen = range(first, i + 1) if causal else range(t)
                qi = q[s, i, cols] if theta is None else turned(q[s, i, cols], i, theta)
                keys = {j: k[s, j, kv_cols] if theta is None else turned(k[s, j, kv_cols], j, theta) for j in seen}
                scores = np.array([qi @ keys[j] / math.sqrt(dh) for j in seen])
                w = np.exp(scores - scores.max())
                w /= w.sum()
                out[s, i, cols] = sum(wj * v[s, j, kv_cols] for wj, j in zip(w, seen))
    return out @ p["Wo"].T + p["bo"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_the_definition(causal):
    rng = np.random.default_rng(21)
    attrs, shapes, _ = resolve("attention", [(5, 6)], heads=3, causal=causal)
    params = random_arrays(shapes, rng)
    x = rng.standard_normal((2, 5, 6))
    np.testing.assert_allclose(run("attention", attrs, params, [x])[0], attention_by_loops(x, params, 3, causal),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", OPTION_MODES)
def test_attention_options_match_the_definition(mode):
    rng = np.random.default_rng(25)
    written = OPTION_MODES[mode]
    attrs, shapes, _ = resolve("attention", [(6, 8)], **written)
    params = random_arrays(shapes, rng)
    x = rng.standard_normal((2, 6, 8))
    theta = None if "rope" not in written else 10000.0 if written["rope"] is True else written["rope"]
    want = attention_by_loops(x, params, written["heads"], written.get("causal", False), written.get("kv"),
                              theta, written.get("window"))
    np.testing.assert_allclose(run("attention", attrs, params, [x])[0], want, rtol=1e-12, atol=1e-12)


def test_a_window_as_long_as_the_sequence_is_causal_attention():
    rng = np.random.default_rng(26)
    attrs, shapes, _ = resolve("attention", [(6, 8)], heads=2, causal=True, window=6)
    causal, _, _ = resolve("attention", [(6, 8)], heads=2, causal=True)
    params, x = random_arrays(shapes, rng), rng.standard_normal((1, 6, 8))
    assert np.array_equal(run("attention", attrs, params, [x])[0], run("attention", causal, params, [x])[0])
    short, _, _ = resolve("attention", [(6, 8)], heads=2, causal=True, window=2)
    assert not np.allclose(run("attention", short, params, [x])[0], run("attention", causal, params, [x])[0])


def test_attention_dropout_is_the_identity_at_inference_and_rescales_in_training():
    rng = np.random.default_rng(22)
    attrs, shapes, _ = resolve("attention", [(6, 4)], heads=2, dropout=0.5)
    params = random_arrays(shapes, rng)
    x = rng.standard_normal((1, 6, 4))
    no_dropout, _, _ = resolve("attention", [(6, 4)], heads=2)
    assert np.array_equal(run("attention", attrs, params, [x])[0], run("attention", no_dropout, params, [x])[0])
    # inverted dropout: averaged over many masks, the training output is the inference output
    mean = np.mean([run("attention", attrs, params, [x], training=True, seed=s)[0] for s in range(2000)], axis=0)
    np.testing.assert_allclose(mean, run("attention", attrs, params, [x])[0], atol=0.1)


def test_tokens_reads_pixels_row_by_row():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    y = run("tokens", resolve("tokens", [(3, 2, 2)])[0], {}, [x])[0]
    # step i*W + j holds pixel (i, j)'s three channels
    assert y.shape == (2, 4, 3)
    assert np.array_equal(y[1, 2], x[1, :, 1, 0]) and np.array_equal(y[0, 1], x[0, :, 0, 1])


def test_clstoken_goes_first_and_seqpool_first_reads_it():
    rng = np.random.default_rng(23)
    cls = f32(rng, 3)
    x = f32(rng, 2, 4, 3)
    y = run("clstoken", resolve("clstoken", [(4, 3)])[0], {"cls": cls}, [x])[0]
    assert np.array_equal(y[:, 0], np.stack([cls, cls])) and np.array_equal(y[:, 1:], x)
    first = run("seqpool", resolve("seqpool", [(5, 3)], first=True)[0], {}, [y])[0]
    last = run("seqpool", resolve("seqpool", [(5, 3)], last=True)[0], {}, [y])[0]
    mean = run("seqpool", resolve("seqpool", [(5, 3)])[0], {}, [y])[0]
    assert np.array_equal(first, np.stack([cls, cls])) and np.array_equal(last, x[:, -1])
    np.testing.assert_allclose(mean, y.mean(axis=1), rtol=1e-6)


# ---- memory -------------------------------------------------------------------------------------

def test_attention_at_gpt2_size_fits_in_memory():
    # T=1024, D=768, 12 heads, batch 1: the scores are 12 * 1024^2 float32 = 48 MiB, the one T^2*H
    # buffer of the forward pass; the projections, Q, K, V and the output are 3 MiB each.
    t, d, heads = 1024, 768, 12
    scores = heads * t * t * 4
    attrs, shapes, _ = resolve("attention", [(t, d)], heads=heads, causal=True)
    rng = np.random.default_rng(24)
    params = {k: f32(rng, *s, scale=0.02) for k, s in shapes.items()}
    x = f32(rng, 1, t, d)
    tracemalloc.start()
    try:
        y, backward = run("attention", attrs, params, [x])
        kept, peak = tracemalloc.get_traced_memory()
        del backward  # inference: the engine drops the closure at once, and with it what it kept
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(y).all()
    assert peak < 1.5 * scores, f"peak {peak / 2**20:.0f} MiB"
    # for backward: the weights (one T^2*H buffer) and x, Q, K, V, O, y (3 MiB each), nothing more
    assert kept < scores + 8 * t * d * 4, f"kept {kept / 2**20:.0f} MiB"
    assert after <= y.nbytes + 2**20  # only the output outlives the closure


# ---- layernorm channels (issue 21): ConvNeXt's LayerNorm2d --------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 2), Signal((4, 5)), (3, 2, 2, 2)], ids=["image", "signal", "volume"])
def test_layernorm_channels_against_central_differences_and_each_pixel_alone(shape):
    rng = np.random.default_rng(30)
    attrs, shapes, _ = resolve("layernorm", [shape], channels=True)
    assert shapes == {"gamma": (shape[0],), "beta": (shape[0],)}
    params = {"gamma": 1 + random_arrays(shapes, rng)["gamma"], "beta": random_arrays(shapes, rng)["beta"]}
    x = 2 * rng.standard_normal((3, *shape)) + 1
    assert_gradients("layernorm", attrs, params, [x])
    y = run("layernorm", attrs, params, [x])[0]
    at = (1, slice(None), *(1,) * (len(shape) - 1))  # one position's channels, normalised by hand
    pixel = x[at]
    want = (pixel - pixel.mean()) / np.sqrt(pixel.var() + 1e-5) * params["gamma"] + params["beta"]
    np.testing.assert_allclose(y[at], want, rtol=1e-10)


def test_layernorm_channels_matches_layernormalization_of_the_channels_last_image():
    rng = np.random.default_rng(31)
    attrs, _, _ = resolve("layernorm", [(6, 3, 4)], channels=True, eps=1e-6)
    gamma, beta, x = f32(rng, 6), f32(rng, 6), f32(rng, 2, 6, 3, 4, scale=3.0)
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ref = onnx_run("LayerNormalization", [last, gamma, beta], axis=-1, epsilon=1e-6)[0].transpose(0, 3, 1, 2)
    y = run("layernorm", attrs, {"gamma": gamma, "beta": beta}, [x])[0]
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
