"""rnn, lstm, gru: backpropagation through time against central differences (float64) for every
direction and output mode, and the forward pass against onnxruntime's RNN/LSTM/GRU operators.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlc.engine.kernels import KERNELS, Ctx
from kernel_checks import assert_gradients, onnx_run, random_arrays, resolve

MODES = [(bidirectional, sequences) for bidirectional in (False, True) for sequences in (False, True)]
N, T, D, H = 2, 4, 3, 2


def node(kind, bidirectional, sequences, hidden=H):
    attrs, shapes, _ = resolve(kind, [(T, D)], hidden=hidden, bidirectional=bidirectional, sequences=sequences)
    return attrs, shapes


def test_parameter_shapes_follow_the_onnx_layout():
    attrs, shapes = node("lstm", True, False)
    assert shapes == {"W": (2, 4 * H, D), "R": (2, 4 * H, H), "B": (2, 8 * H)}
    attrs, shapes = node("gru", False, True)
    assert shapes == {"W": (1, 3 * H, D), "R": (1, 3 * H, H), "B": (1, 6 * H)}


@pytest.mark.parametrize("bidirectional,sequences", MODES)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_gradients(kind, bidirectional, sequences):
    rng = np.random.default_rng([["rnn", "lstm", "gru"].index(kind), bidirectional, sequences])
    attrs, shapes = node(kind, bidirectional, sequences)
    params = random_arrays(shapes, rng, scale=0.7)
    x = rng.standard_normal((N, T, D))
    y, _ = KERNELS[kind](attrs, params, {}, [x], Ctx())
    dirs = 2 if bidirectional else 1
    assert y.shape == ((N, T, dirs * H) if sequences else (N, dirs * H))
    assert_gradients(kind, attrs, params, [x])


ONNX_OPS = {"rnn": ("RNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {"linear_before_reset": 1})}


@pytest.mark.parametrize("bidirectional,sequences", MODES)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_matches_onnxruntime(kind, bidirectional, sequences):
    rng = np.random.default_rng(7)
    hidden = 3
    attrs, shapes = node(kind, bidirectional, sequences, hidden=hidden)
    params = random_arrays(shapes, rng, dtype=np.float32, scale=0.8)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    y, backward = KERNELS[kind](attrs, params, {}, [x], Ctx())
    dxs, grads = backward(np.ones_like(y))
    assert y.dtype == dxs[0].dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())

    op, extra = ONNX_OPS[kind]
    dirs = 2 if bidirectional else 1
    # ONNX layout 0: X (T, N, D), Y (T, dirs, N, H), Y_h (dirs, N, H)
    Y, Y_h = onnx_run(op, [x.transpose(1, 0, 2).copy(), params["W"], params["R"], params["B"]], n_outputs=2,
                      hidden_size=hidden, direction="bidirectional" if bidirectional else "forward", **extra)
    if sequences:
        ref = Y.transpose(2, 0, 1, 3).reshape(N, T, dirs * hidden)
    else:
        ref = Y_h.transpose(1, 0, 2).reshape(N, dirs * hidden)
        # Y_h is each direction's final state: step T-1 forward, step 0 backward
        np.testing.assert_array_equal(Y_h[0], Y[-1, 0])
        if bidirectional:
            np.testing.assert_array_equal(Y_h[1], Y[0, 1])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_backward_direction_reads_the_sequence_reversed(kind):
    # the backward half of a bidirectional layer is the forward cell run on x[:, ::-1]
    rng = np.random.default_rng(3)
    attrs2, shapes2 = node(kind, True, True)
    attrs1, _ = node(kind, False, True)
    params = random_arrays(shapes2, rng)
    x = rng.standard_normal((N, T, D))
    y2, _ = KERNELS[kind](attrs2, params, {}, [x], Ctx())
    reverse_only = {k: v[1:] for k, v in params.items()}
    y1, _ = KERNELS[kind](attrs1, reverse_only, {}, [x[:, ::-1]], Ctx())
    np.testing.assert_allclose(y2[:, :, H:], y1[:, ::-1], rtol=1e-14)
