"""Optimizers against hand computations of their published update rules, schedules at chosen epochs,
and regularisation that leaves biases and bn alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.engine.params import init_params, load_checkpoint
from dlc.errors import DlcError
from dlc.train import optim
from dlc.train.config import TrainConfig
from dlc.train.dataset import Data, Split
from dlc.train.loop import train
from dlc.train.schedules import make_schedule

W0 = [0.5, -1.0, 2.0]
G1 = [0.1, -0.2, 0.3]
G2 = [-0.4, 0.5, 0.05]
LR = 0.1


def two_steps(kind: str, **hyper) -> np.ndarray:
    opt = optim.make_optimizer(kind, **hyper)
    w = {"fc1.W": np.array(W0, np.float32)}
    for g in (G1, G2):
        optim.step(opt, w, {"fc1.W": np.array(g, np.float32)}, LR)
    return w["fc1.W"]


def by_hand(rule) -> list[float]:
    """Apply `rule(w, g, slots, t)` element by element in Python floats for the two gradients."""
    out = []
    for i in range(3):
        w, slots = W0[i], {}
        for t, g in enumerate((G1[i], G2[i]), start=1):
            w = rule(w, g, slots, t)
        out.append(w)
    return out


def sgd(w, g, s, t):
    return w - LR * g


def momentum(w, g, s, t, mu=0.9):
    s["v"] = mu * s.get("v", 0.0) - LR * g
    return w + s["v"]


def nesterov(w, g, s, t, mu=0.9):
    v_prev = s.get("v", 0.0)
    s["v"] = mu * v_prev - LR * g
    return w - mu * v_prev + (1 + mu) * s["v"]


def adagrad(w, g, s, t, eps=1e-8):
    s["c"] = s.get("c", 0.0) + g * g
    return w - LR * g / (math.sqrt(s["c"]) + eps)


def rmsprop(w, g, s, t, rho=0.9, eps=1e-8):
    s["c"] = rho * s.get("c", 0.0) + (1 - rho) * g * g
    return w - LR * g / (math.sqrt(s["c"]) + eps)


def adam(w, g, s, t, b1=0.9, b2=0.999, eps=1e-8):
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    mhat, vhat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
    return w - LR * mhat / (math.sqrt(vhat) + eps)


@pytest.mark.parametrize("kind, rule, hyper", [
    ("sgd", sgd, {}),
    ("momentum", momentum, {}),
    ("momentum", lambda w, g, s, t: momentum(w, g, s, t, mu=0.5), {"momentum": 0.5}),
    ("nesterov", nesterov, {}),
    ("adagrad", adagrad, {}),
    ("rmsprop", rmsprop, {}),
    ("rmsprop", lambda w, g, s, t: rmsprop(w, g, s, t, rho=0.99, eps=1e-6), {"beta2": 0.99, "eps": 1e-6}),
    ("adam", adam, {}),
    ("adam", lambda w, g, s, t: adam(w, g, s, t, b1=0.5, b2=0.9), {"beta1": 0.5, "beta2": 0.9}),
])
def test_two_steps_follow_the_published_rule(kind, rule, hyper):
    got = two_steps(kind, **hyper)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand(rule), rtol=2e-6, atol=1e-7)


def test_adam_first_step_moves_each_weight_by_lr():
    # Kingma & Ba, section 2.1: with bias correction the first step is lr * sign(g) (up to eps).
    opt = optim.make_optimizer("adam")
    p = {"fc1.W": np.array(W0, np.float32)}
    optim.step(opt, p, {"fc1.W": np.array(G1, np.float32)}, LR)
    np.testing.assert_allclose(p["fc1.W"], np.array(W0) - LR * np.sign(G1), rtol=1e-6)


def test_state_round_trips_exactly_through_json():
    opt = optim.make_optimizer("adam")
    p = {"fc1.W": np.array(W0, np.float32), "fc1.b": np.array([0.1], np.float32)}
    optim.step(opt, p, {"fc1.W": np.array(G1, np.float32), "fc1.b": np.array([0.3], np.float32)}, LR)
    import json
    back = optim.state_from_json(json.loads(json.dumps(optim.state_to_json(opt))))
    assert back.t == 1 and back.kind == "adam" and sorted(back.slots) == ["m:fc1.W", "m:fc1.b", "v:fc1.W", "v:fc1.b"]
    for k, a in opt.slots.items():
        assert back.slots[k].dtype == a.dtype and np.array_equal(back.slots[k], a)


def test_bad_hyperparameters_are_errors():
    with pytest.raises(DlcError, match="unknown optimizer `adamw`"):
        optim.make_optimizer("adamw")
    with pytest.raises(DlcError, match="momentum must satisfy"):
        optim.make_optimizer("momentum", momentum=1.5)


@pytest.mark.parametrize("kind, keys, expected", [
    ("constant", {}, {0: 0.1, 7: 0.1}),
    ("step", {"step_every": 3, "gamma": 0.5}, {0: 0.1, 2: 0.1, 3: 0.05, 6: 0.025, 9: 0.0125}),
    ("step", {}, {0: 0.1, 2: 0.1, 3: 0.01, 6: 0.001}),  # defaults: gamma 0.1 every E // 3 = 3 epochs
    ("poly", {"power": 2}, {0: 0.1, 5: 0.025, 9: 0.001}),  # 0.1 * (1 - t/10)^2
    ("cosine", {}, {0: 0.1, 5: 0.05, 10: 0.1}),  # half-way is the mean; t = E restarts
    ("cosine", {"restart_every": 4, "lr_min": 0.02}, {0: 0.1, 2: 0.06, 4: 0.1, 6: 0.06}),
    ("exp", {"gamma": 0.5}, {0: 0.1, 1: 0.05, 3: 0.0125}),
    ("exp", {"k": 0.5}, {0: 0.1, 2: 0.1 * math.e ** -1}),
    ("linear", {}, {0: 0.1, 5: 0.05, 9: 0.01}),
    ("linear", {"lr_min": 0.02}, {0: 0.1, 5: 0.06}),
    ("invsqrt", {"k": 3}, {0: 0.1, 1: 0.05, 5: 0.025}),  # 0.1 / sqrt(1 + 3t)
])
def test_schedule_values(kind, keys, expected):
    lr = make_schedule(kind, 0.1, 10, **keys)
    for t, want in expected.items():
        assert lr(t) == pytest.approx(want, rel=1e-12), (kind, t)


def test_unknown_schedule_is_an_error():
    with pytest.raises(DlcError, match="unknown schedule `warmup`"):
        make_schedule("warmup", 0.1, 10)


IMAGE_NET = "input 3@8x8 -> conv 4@3x3 -> bn -> relu -> upconv 2@2x2/2 -> gap -> fc 2"
TOKEN_NET = "input seq 10 -> embed 8 vocab=50 -> lstm 4 -> fc 3"


def test_only_weights_are_decayed():
    image = compile_spec(IMAGE_NET, file="image.dlc")
    names = ["conv1.W", "conv1.b", "bn1.gamma", "bn1.beta", "upconv1.W", "upconv1.b", "fc1.W", "fc1.b"]
    assert optim.decayed(image, names) == ["conv1.W", "upconv1.W", "fc1.W"]
    tokens = compile_spec(TOKEN_NET, file="tokens.dlc")
    names = ["embed1.W", "lstm1.W", "lstm1.R", "lstm1.B", "fc1.W", "fc1.b"]
    assert optim.decayed(tokens, names) == ["embed1.W", "lstm1.W", "lstm1.R", "fc1.W"]


def test_maxnorm_runs_over_each_units_incoming_weights():
    # conv W (C_out, C_in, kh, kw) and fc W (units, in): a unit's weights are all but the first axis;
    # upconv W (C_in, C_out, kh, kw): output channel j reads W[:, j]; lstm W/R (dirs, 4H, D): a row.
    image = compile_spec(IMAGE_NET, file="image.dlc")
    assert optim.maxnorm_axes(image, ["conv1.W", "conv1.b", "upconv1.W", "fc1.W"]) == {
        "conv1.W": None, "upconv1.W": (0, 2, 3), "fc1.W": None}
    tokens = compile_spec(TOKEN_NET, file="tokens.dlc")
    assert optim.maxnorm_axes(tokens, ["embed1.W", "lstm1.W", "lstm1.R", "lstm1.B"]) == {
        "embed1.W": None, "lstm1.W": (-1,), "lstm1.R": (-1,)}


BN_NET = "input 4 -> fc 3 -> bn -> relu -> fc 2 softmax"


def one_sgd_step(tmp_path: Path, name: str, **cfg) -> dict:
    graph = compile_spec(BN_NET, file="bn.dlc")
    rng = np.random.default_rng(5)
    data = Data(Split(rng.standard_normal((8, 4)).astype(np.float32), np.array([0, 1] * 4)), name="t")
    train(graph, data, TrainConfig(loss="xent", lr=0.1, batch=8, epochs=1, **cfg), tmp_path / name,
          meta={}, save_every=None)
    params, _, _ = load_checkpoint(tmp_path / name / "last.npz")
    return params


def test_weight_decay_and_l1_change_weights_only(tmp_path):
    plain = one_sgd_step(tmp_path, "plain")
    init, _ = init_params(compile_spec(BN_NET, file="bn.dlc"))
    decayed = one_sgd_step(tmp_path, "wd", weight_decay=0.5)
    l1 = one_sgd_step(tmp_path, "l1", l1=0.25)
    for name in plain:
        if name.endswith(".W"):
            # sgd on loss + wd/2 |W|^2 moves W by a further -lr * wd * W0; with l1, -lr * l1 * sign(W0)
            np.testing.assert_allclose(decayed[name], plain[name] - 0.1 * 0.5 * init[name], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(l1[name], plain[name] - 0.1 * 0.25 * np.sign(init[name]), rtol=1e-5, atol=1e-7)
        else:  # fc biases, bn gamma and beta
            assert np.array_equal(decayed[name], plain[name]) and np.array_equal(l1[name], plain[name]), name


def test_maxnorm_caps_each_units_incoming_weights(tmp_path):
    params = one_sgd_step(tmp_path, "mn", maxnorm=0.3)
    for name in ("fc1.W", "fc2.W"):
        norms = np.sqrt((params[name].astype(np.float64) ** 2).sum(axis=1))
        assert norms.max() <= 0.3 * (1 + 1e-6)
    assert not np.allclose(params["bn1.gamma"], 0.3)
