"""The experts kernel (a mixture's joining node): routing against a plain loop, ties, backward against
central differences in float64 (ties inside the top K included), float32 against float64, and the
load-balancing loss by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.engine.kernels import KERNELS, Ctx
from dlc.engine.kernels.mixture import balance_grad
from kernel_checks import assert_gradients, numerical_grad, resolve


def mixture_inputs(rng, n=5, e=4, d=3, dtype=np.float64):
    return [rng.standard_normal((n, e)).astype(dtype), *(rng.standard_normal((n, d)).astype(dtype) for _ in range(e))]


def attrs_of(e, top, balance=0.0):
    attrs, _, _ = resolve("experts", [(e,), *[(3,)] * e], experts=e, top=top, balance=balance)
    return attrs


def test_forward_is_the_softmax_of_the_top_k_logits_weighting_their_experts():
    rng = np.random.default_rng(0)
    xs = mixture_inputs(rng)
    y, _ = KERNELS["experts"](attrs_of(4, 2), {}, {}, xs, Ctx())
    for n in range(5):
        logits = list(xs[0][n])
        best = sorted(range(4), key=lambda i: -logits[i])[:2]
        ws = [math.exp(logits[i]) for i in best]
        expect = sum(w / sum(ws) * xs[1 + i][n] for w, i in zip(ws, best))
        np.testing.assert_allclose(y[n], expect, rtol=1e-12)


def test_ties_go_to_the_lower_expert_index():
    xs = [np.array([[1.0, 2.0, 2.0, 2.0]]), *(np.full((1, 3), float(i)) for i in range(4))]
    y, _ = KERNELS["experts"](attrs_of(4, 2), {}, {}, xs, Ctx())
    np.testing.assert_allclose(y, [[1.5] * 3])  # experts 1 and 2 of the tied 1, 2, 3, at 1/2 each


@pytest.mark.parametrize("top", [1, 2, 4])
def test_gradients_away_from_ties(top):
    rng = np.random.default_rng(top)
    assert_gradients("experts", attrs_of(4, top), {}, mixture_inputs(rng))


def test_gradients_with_a_tie_inside_the_top_k():
    # two equal largest logits both kept (top 2 of 4, the third well below): the routing does not jump
    # there, so the gradient exists; a tie at the K-th place is a jump and is not differentiated
    rng = np.random.default_rng(7)
    xs = mixture_inputs(rng)
    xs[0][:, :] = [[3.0, 3.0, 0.0, -1.0]] * 5
    assert_gradients("experts", attrs_of(4, 2), {}, xs)


def test_a_tie_at_the_kth_place_takes_the_gradient_of_the_lower_experts_side():
    # logits 2, 1, 1, 0 with top 2: experts 2 and 3 tie for the second place, a jump in the routing
    # where no derivative exists; the engine routes to expert 2 and back-propagates that routing, the
    # limit from the side where expert 2's logit is the larger
    rng = np.random.default_rng(5)
    xs = mixture_inputs(rng, n=1)
    xs[0][:] = [[2.0, 1.0, 1.0, 0.0]]
    nudged = [x.copy() for x in xs]
    nudged[0][0, 1] += 1e-9
    dy = rng.standard_normal((1, 3))
    at_tie = KERNELS["experts"](attrs_of(4, 2), {}, {}, xs, Ctx())[1](dy)[0]
    beside = KERNELS["experts"](attrs_of(4, 2), {}, {}, nudged, Ctx())[1](dy)[0]
    for a, b in zip(at_tie, beside):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert not at_tie[3].any() and at_tie[2].any()  # expert 3 gets nothing, expert 2 its share


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(3)
    xs = mixture_inputs(rng)
    y64, b64 = KERNELS["experts"](attrs_of(4, 2), {}, {}, xs, Ctx())
    y32, b32 = KERNELS["experts"](attrs_of(4, 2), {}, {}, [x.astype(np.float32) for x in xs], Ctx())
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y64.shape)
    for g32, g64 in zip(b32(dy.astype(np.float32))[0], b64(dy)[0]):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


def test_balance_loss_by_hand_and_its_gradient():
    # every logit equal: each step keeps expert 0 (ties), so f = (1, 0) and P = (1/2, 1/2):
    # alpha·E·Σ f_i·P_i = 0.3 · 2 · 1/2
    z = np.zeros((4, 2))
    idx = np.zeros((4, 1), dtype=int)
    value, _ = balance_grad(z, idx, 0.3)
    assert value == pytest.approx(0.3)
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 3))
    idx = np.argsort(-z, axis=1, kind="stable")[:, :2]
    _, grad = balance_grad(z, idx, 0.7)
    np.testing.assert_allclose(grad, numerical_grad(lambda: balance_grad(z, idx, 0.7)[0], z), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("spec", [
    "input seq 5 of 6 -> experts 4 top=2 { fc 8 tanh -> fc 6 } -> fc 3",
    "input 6 -> experts 3 top=1 balance=0.1 { fc 8 tanh -> fc 6 } -> fc 3",
    "input seq 5 of 6 -> experts 4 top=3 balance=0.5 { fc 8 tanh -> fc 6 } -> fc 3",
])
def test_whole_networks_pass_dlc_gradcheck_with_and_without_the_balance_loss(spec):
    r = CliRunner().invoke(main, ["gradcheck", "-e", spec, "--all", "--batch", "3"])
    assert r.exit_code == 0, r.output
    assert "layers within relative error 1e-06" in r.output
