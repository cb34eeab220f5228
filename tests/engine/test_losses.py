"""The losses and weight penalties: values against hand computations and published figures, gradients
against central differences in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlc.engine.losses import LOSSES, l1_penalty, l2_penalty, maxnorm_
from dlc.errors import DlcError
from kernel_checks import TOLERANCE, numerical_grad, relative_error


def assert_loss_gradient(name, out, target):
    value, dout = LOSSES[name](out, target)
    assert dout.shape == out.shape and dout.dtype == out.dtype
    numeric = numerical_grad(lambda: LOSSES[name](out, target)[0], out)
    assert relative_error(dout, numeric) < TOLERANCE
    return value


# ---- xent ---------------------------------------------------------------------------------------

def test_xent_by_hand():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    value, dout = LOSSES["xent"](logits, np.array([2, 0]))
    z = math.exp(1) + math.exp(2) + math.exp(3)
    expected = (-math.log(math.exp(3) / z) + math.log(3)) / 2
    assert value == pytest.approx(expected, rel=1e-14)
    # softmax minus one-hot, over the batch of 2
    np.testing.assert_allclose(dout[1], [(1 / 3 - 1) / 2, 1 / 6, 1 / 6], rtol=1e-14)


def test_xent_stays_finite_for_huge_logits():
    value, dout = LOSSES["xent"](np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert value == pytest.approx(500.0, rel=1e-14)  # the second sample is 1000 nats off
    assert np.all(np.isfinite(dout))
    value32, _ = LOSSES["xent"](np.array([[80.0, -80.0]], dtype=np.float32), np.array([1]))
    assert value32 == pytest.approx(160.0, rel=1e-6)


def test_xent_accepts_one_hot_and_soft_targets():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    onehot = np.eye(5)[labels]
    assert LOSSES["xent"](logits, onehot)[0] == pytest.approx(LOSSES["xent"](logits, labels)[0], rel=1e-14)
    np.testing.assert_allclose(LOSSES["xent"](logits, onehot)[1], LOSSES["xent"](logits, labels)[1], atol=1e-16)
    soft = rng.dirichlet(np.ones(5), size=4)  # mixup-style targets
    assert_loss_gradient("xent", logits, soft)


@pytest.mark.parametrize("shape,labels_shape", [((4, 3), (4,)), ((2, 3, 4), (2, 3)), ((2, 3, 2, 2), (2, 2, 2))])
def test_xent_gradients(shape, labels_shape):
    rng = np.random.default_rng(1)
    logits = 2 * rng.standard_normal(shape)
    classes = shape[-1] if len(shape) == 3 else shape[1]
    labels = rng.integers(0, classes, labels_shape)
    assert_loss_gradient("xent", logits, labels)


def test_xent_on_sequences_averages_every_position():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 3, 4))  # (N, T, classes): the class axis is last
    labels = rng.integers(0, 4, (2, 3))
    value, _ = LOSSES["xent"](logits, labels)
    flat, _ = LOSSES["xent"](logits.reshape(6, 4), labels.reshape(6))
    assert value == pytest.approx(flat, rel=1e-14)


def test_xent_rejects_bad_targets():
    with pytest.raises(DlcError, match="class label 3 is outside 0..2"):
        LOSSES["xent"](np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(DlcError, match="do not fit outputs of shape"):
        LOSSES["xent"](np.zeros((2, 3)), np.zeros((3,)))


# ---- bce ----------------------------------------------------------------------------------------

def test_bce_by_hand():
    p = np.array([[0.9], [0.2]])
    value, _ = LOSSES["bce"](p, np.array([1, 0]))
    assert value == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-14)


def test_bce_gradients_and_clipping():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, (4, 3))
    t = rng.integers(0, 2, (4, 3)).astype(float)
    assert_loss_gradient("bce", p, t)
    value, dout = LOSSES["bce"](np.array([[0.0], [1.0]]), np.array([1.0, 0.0]))
    assert np.isfinite(value) and np.all(np.isfinite(dout))
    assert dout[0, 0] < 0 < dout[1, 0]  # a saturated wrong answer is still pushed back


def test_bce_logits_is_bce_after_a_sigmoid():
    rng = np.random.default_rng(4)
    z = 3 * rng.standard_normal((5, 2))
    t = rng.uniform(0, 1, (5, 2))
    fused = assert_loss_gradient("bce_logits", z, t)
    assert fused == pytest.approx(LOSSES["bce"](1 / (1 + np.exp(-z)), t)[0], rel=1e-12)
    value, dout = LOSSES["bce_logits"](np.array([[800.0], [-800.0]]), np.array([0.0, 0.0]))
    assert value == pytest.approx(400.0, rel=1e-14) and np.all(np.isfinite(dout))


# ---- mse ----------------------------------------------------------------------------------------

def test_mse_is_half_the_squared_error_summed_over_outputs_averaged_over_the_batch():
    out = np.array([[0.5, 0.25], [1.0, 0.0], [0.0, 0.0]])
    t = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    value, _ = LOSSES["mse"](out, t)
    assert value == pytest.approx(0.5 * (0.25 + 0.0625 + 1 + 0.25) / 3, rel=1e-14)
    assert_loss_gradient("mse", out, t)


def test_mse_one_hot_encodes_class_labels():
    rng = np.random.default_rng(5)
    out = rng.uniform(0, 1, (4, 10))  # Nielsen's network: ten sigmoid outputs, digit labels
    labels = np.array([3, 0, 9, 3])
    value, dout = LOSSES["mse"](out, labels)
    assert value == pytest.approx(LOSSES["mse"](out, np.eye(10)[labels])[0], rel=1e-14)
    assert_loss_gradient("mse", out, labels)


def test_mse_reads_one_value_per_sample_for_a_single_output():
    out = np.array([[0.1], [0.8], [0.7], [0.3]])  # XOR
    value, dout = LOSSES["mse"](out, np.array([0, 1, 1, 0]))
    assert value == pytest.approx(0.5 * (0.01 + 0.04 + 0.09 + 0.09) / 4, rel=1e-14)
    assert dout.shape == (4, 1)


def test_mse_keeps_float32():
    out = np.ones((2, 3), dtype=np.float32)
    assert LOSSES["mse"](out, np.array([0, 2]))[1].dtype == np.float32


# ---- hinge --------------------------------------------------------------------------------------

def test_hinge_matches_the_cs231n_example():
    # CS231n "Linear classification": losses 2.9, 0 and 12.9 on three images, 5.27 on average
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    value, _ = LOSSES["hinge"](scores, np.array([0, 1, 2]))
    assert value == pytest.approx((2.9 + 0 + 12.9) / 3, rel=1e-14)


def test_hinge_gradients():
    rng = np.random.default_rng(6)
    scores = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    value = assert_loss_gradient("hinge", scores, labels)
    assert value == pytest.approx(LOSSES["hinge"](scores, np.eye(4)[labels])[0], rel=1e-14)


# ---- penalties ----------------------------------------------------------------------------------

def test_l2_and_l1_penalties_by_hand_and_by_differences():
    params = {"fc1.W": np.array([[1.0, -2.0], [0.5, 0.0]]), "fc1.b": np.array([3.0, 4.0]),
              "fc2.W": np.array([[-1.5, 2.5]])}
    names = ["fc1.W", "fc2.W"]  # biases are not decayed
    value, grads = l2_penalty(params, names, 0.1)
    assert value == pytest.approx(0.05 * (1 + 4 + 0.25 + 2.25 + 6.25), rel=1e-14)
    assert set(grads) == set(names)
    value, grads = l1_penalty(params, names, 0.1)
    assert value == pytest.approx(0.1 * (1 + 2 + 0.5 + 1.5 + 2.5), rel=1e-14)
    assert set(grads) == set(names)
    rng = np.random.default_rng(7)
    ws = {"W": rng.standard_normal((3, 4)), "R": rng.standard_normal((2, 2))}
    for penalty in (l2_penalty, l1_penalty):
        _, grads = penalty(ws, ["W", "R"], 0.3)
        for k in ws:
            numeric = numerical_grad(lambda: penalty(ws, ["W", "R"], 0.3)[0], ws[k])
            assert relative_error(grads[k], numeric) < TOLERANCE


def test_maxnorm_projects_each_units_incoming_weights():
    W = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # norms 5, 0.5, 0
    same = maxnorm_(W, 2.0)
    assert same is W
    np.testing.assert_allclose(W, [[1.2, 1.6], [0.3, 0.4], [0.0, 0.0]], rtol=1e-15)
    filters = np.ones((2, 3, 2, 2), dtype=np.float32)  # conv: one norm per output channel, sqrt(12)
    maxnorm_(filters, 1.0)
    np.testing.assert_allclose(np.sqrt((filters ** 2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-6)
    assert filters.dtype == np.float32
    recurrent = np.full((2, 4, 3), 2.0)  # (dirs, G*H, D): a unit's weights are the last axis
    maxnorm_(recurrent, 1.0, axes=(-1,))
    np.testing.assert_allclose(np.sqrt((recurrent ** 2).sum(axis=-1)), 1.0, rtol=1e-15)
