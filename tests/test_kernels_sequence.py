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
from dlc.layers import Grid
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
    (With rope the bias turns with each key's position, so the scores of a row move apart: it counts.)
    x: the input, or the list of inputs (with a source for from= and a mask)."""
    xs = x if isinstance(x, list) else [x]
    x = xs[0]
    errors = gradient_errors("attention", attrs, params, xs, ctx=ctx)
    zero = "bk" if "bk" in params and not attrs["rope"] else None
    bad = {k: e for k, e in errors.items() if k != zero and not e < TOLERANCE}
    assert not bad, f"attention: relative errors above {TOLERANCE}: {bad}"
    if zero:
        _, backward = KERNELS["attention"](attrs, params, {}, xs, ctx())
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


def test_posembed_of_a_longer_table_and_fixed_gradients():
    rng = np.random.default_rng(5)
    attrs, shapes, _ = resolve("posembed", [(3, 4)], positions=7)
    params = random_arrays(shapes, rng)
    assert_gradients("posembed", attrs, params, [rng.standard_normal((2, 3, 4))])
    # only the first 3 of the 7 rows are read: the others get no gradient
    _, backward = run("posembed", attrs, params, [rng.standard_normal((2, 3, 4))])
    assert np.all(backward(np.ones((2, 3, 4)))[1]["P"][3:] == 0)
    attrs, shapes, _ = resolve("posembed", [(3, 4)], fixed=True)
    assert shapes == {}
    assert_gradients("posembed", attrs, {}, [rng.standard_normal((2, 3, 4))])


def whisper_sinusoids(length, channels):
    """Whisper's `sinusoids` (openai/whisper, whisper/model.py), one entry at a time."""
    increment = math.log(10000) / (channels // 2 - 1)
    table = np.zeros((length, channels))
    for p in range(length):
        for i in range(channels // 2):
            table[p, i] = math.sin(p * math.exp(-increment * i))
            table[p, channels // 2 + i] = math.cos(p * math.exp(-increment * i))
    return table


def test_posembed_fixed_adds_whispers_sinusoids():
    attrs, _, _ = resolve("posembed", [(30, 8)], fixed=True)
    x = np.zeros((1, 30, 8))
    np.testing.assert_allclose(run("posembed", attrs, {}, [x])[0][0], whisper_sinusoids(30, 8), atol=1e-12)
    # position 0 is sin 0 = 0 and cos 0 = 1; the first frequency is 1 and the last 1/10000
    np.testing.assert_allclose(run("posembed", attrs, {}, [x])[0][0, 1], [math.sin(1), math.sin(10000 ** -(1 / 3)),
                               math.sin(10000 ** -(2 / 3)), math.sin(1e-4), math.cos(1), math.cos(10000 ** -(1 / 3)),
                               math.cos(10000 ** -(2 / 3)), math.cos(1e-4)], atol=1e-12)


def test_clstoken_gradients():
    rng = np.random.default_rng(7)
    attrs, shapes, _ = resolve("clstoken", [(4, 3)])
    assert_gradients("clstoken", attrs, random_arrays(shapes, rng), [rng.standard_normal((2, 4, 3))])


def test_tokens_gradients():
    attrs, _, _ = resolve("tokens", [(3, 2, 4)])
    assert_gradients("tokens", attrs, {}, [np.random.default_rng(8).standard_normal((2, 3, 2, 4))])


def test_image_gradients():
    attrs, _, _ = resolve("image", [(6, 3)], grid=(2, 3))
    assert_gradients("image", attrs, {}, [np.random.default_rng(8).standard_normal((2, 6, 3))])


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


def attention_by_loops(x, p, heads, causal, kv=None, theta=None, window=None, source=None, mask=None):
    """Self-attention one sample, head and step at a time, straight from the definition; query head h
    reads key/value head h // (heads/kv); a causal step i sees steps max(0, i - window + 1) .. i. With a
    source, keys and values are its steps (cross-attention); with a mask, a step sees only the keys
    whose mask is 1 (padding left out of the softmax)."""
    n, t, d = x.shape
    dh = d // heads
    group = heads // (kv or heads)
    source = x if source is None else source
    q = x @ p["Wq"].T + p["bq"]
    k, v = (source @ p[f"W{w}"].T + p[f"b{w}"] for w in "kv")
    out = np.zeros_like(x)
    for s in range(n):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            kv_cols = slice(h // group * dh, (h // group + 1) * dh)
            for i in range(t):
                first = 0 if window is None else max(0, i - window + 1)
                seen = range(first, i + 1) if causal else range(source.shape[1])
                seen = [j for j in seen if mask is None or mask[s, j] == 1]
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


# cross-attention and padding masks: 5 queries of 6 features attend to 7 source steps of 4 features
CROSS_MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])


@pytest.mark.parametrize("kv", [None, 1])
@pytest.mark.parametrize("masked", [False, True], ids=["whole", "padded"])
def test_cross_attention_matches_the_definition(masked, kv):
    rng = np.random.default_rng(27)
    mask = CROSS_MASK if masked else None
    ins = [(5, 6), (7, 4)] + ([(7,)] if masked else [])
    attrs, shapes, _ = resolve("attention", ins, heads=3, kv=kv, **{"from": "src", "mask": "pad" if masked else None})
    params = random_arrays(shapes, rng)
    x, src = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 7, 4))
    want = attention_by_loops(x, params, 3, False, kv, source=src, mask=mask)
    xs = [x, src] + ([mask] if masked else [])
    np.testing.assert_allclose(run("attention", attrs, params, xs)[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_a_padding_mask_leaves_the_padded_steps_out_of_self_attention(causal):
    rng = np.random.default_rng(28)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    attrs, shapes, _ = resolve("attention", [(6, 8), (6,)], heads=2, causal=causal, mask="pad")
    params = random_arrays(shapes, rng)
    x = rng.standard_normal((2, 6, 8))
    np.testing.assert_allclose(run("attention", attrs, params, [x, mask])[0],
                               attention_by_loops(x, params, 2, causal, mask=mask), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_cross_attention_and_mask_gradients(bias):
    rng = np.random.default_rng(29)
    attrs, shapes, _ = resolve("attention", [(5, 6), (7, 4), (7,)], heads=3, kv=1, bias=bias,
                               **{"from": "src", "mask": "pad"})
    params = random_arrays(shapes, rng)
    x, src = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 7, 4))
    assert_attention_gradients(attrs, params, [x, src, CROSS_MASK])
    # padding gets no weight, so nothing flows back to it: the padded source steps' gradient is 0
    y, backward = run("attention", attrs, params, [x, src, CROSS_MASK])
    d_src = backward(rng.standard_normal(y.shape))[0][1]
    assert np.all(d_src[CROSS_MASK == 0] == 0) and np.all(np.abs(d_src[CROSS_MASK == 1]).sum(axis=-1) > 0)


def test_a_query_whose_keys_are_all_padding_averages_them_rather_than_nan():
    rng = np.random.default_rng(30)
    attrs, shapes, _ = resolve("attention", [(3, 4), (3,)], heads=1, mask="pad")
    params = random_arrays(shapes, rng)
    y = run("attention", attrs, params, [rng.standard_normal((1, 3, 4)), np.zeros((1, 3), np.int64)])[0]
    assert np.all(np.isfinite(y))


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


def test_image_puts_step_i_times_w_plus_j_at_pixel_i_j():
    x = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    y = run("image", resolve("image", [Grid((2, 3), 3)])[0], {}, [x])[0]
    assert y.shape == (2, 3, 2, 3)
    # step 1*3 + 2 = 5 is pixel (1, 2), step 1 pixel (0, 1)
    assert np.array_equal(y[1, :, 1, 2], x[1, 5]) and np.array_equal(y[0, :, 0, 1], x[0, 1])
    # and tokens undoes it
    assert np.array_equal(run("tokens", resolve("tokens", [(3, 2, 3)])[0], {}, [y])[0], x)


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


# --- Swin: windowed attention and patchmerge, against torchvision's construction (tests/torch_models.py)

WINDOWS = [((4, 4), (2, 2), 0), ((4, 4), (2, 2), 1), ((6, 6), (3, 3), 1), ((2, 4), (2, 2), 1)]


@pytest.mark.parametrize("grid, window, shift", WINDOWS)
def test_windowed_attention_gradients(grid, window, shift):
    rng = np.random.default_rng(5)
    attrs, shapes, _ = resolve("attention", [Grid(grid, 6)], heads=2, window=window, shift=shift)
    assert_attention_gradients(attrs, random_arrays(shapes, rng), rng.standard_normal((2, grid[0] * grid[1], 6)))


@pytest.mark.parametrize("grid, window, shift", WINDOWS)
def test_windowed_attention_matches_torchvisions_shifted_window_attention(grid, window, shift):
    # the last case's grid is as tall as the window: torchvision shifts it along the width alone
    torch = pytest.importorskip("torch")
    import torch_models
    rng = np.random.default_rng(6)
    attrs, shapes, _ = resolve("attention", [Grid(grid, 8)], heads=2, window=window, shift=shift)
    p = random_arrays(shapes, rng)
    x = rng.standard_normal((2, grid[0] * grid[1], 8))
    twin = torch_models.SwinAttention(8, 2, window[0], shift).double()
    with torch.no_grad():
        for tensor, value in ((twin.qkv.weight, np.concatenate((p["Wq"], p["Wk"], p["Wv"]))),
                              (twin.qkv.bias, np.concatenate((p["bq"], p["bk"], p["bv"]))),
                              (twin.proj.weight, p["Wo"]), (twin.proj.bias, p["bo"]),
                              (twin.relative_position_bias_table, p["B"])):
            tensor.copy_(torch.from_numpy(value))
        expected = twin(torch.from_numpy(x).view(2, *grid, 8)).reshape(2, -1, 8).numpy()
    np.testing.assert_allclose(run("attention", attrs, p, [x])[0], expected, rtol=0, atol=1e-12)


def test_patchmerge_joins_each_2x2_neighbourhood_in_swins_order():
    attrs, _, _ = resolve("patchmerge", [Grid((2, 4), 1)])
    # the 2x4 grid's tokens numbered row by row: 0 1 2 3 / 4 5 6 7; x0, x1, x2, x3 of the left
    # neighbourhood are (0, 0), (1, 0), (0, 1), (1, 1): 0, 4, 1, 5
    x = np.arange(8.0).reshape(1, 8, 1)
    assert run("patchmerge", attrs, {}, [x])[0].tolist() == [[[0, 4, 1, 5], [2, 6, 3, 7]]]
    attrs, _, _ = resolve("patchmerge", [Grid((4, 6), 3)])
    assert_gradients("patchmerge", attrs, {}, [np.random.default_rng(7).standard_normal((2, 24, 3))])
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
