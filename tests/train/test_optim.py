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
from dlc.train.schedules import make_schedule, warmup_factor

W0 = [0.5, -1.0, 2.0]
G1 = [0.1, -0.2, 0.3]
G2 = [-0.4, 0.5, 0.05]
LR = 0.1


def two_steps(kind: str, **hyper) -> np.ndarray:
    opt = optim.make_optimizer(kind, **hyper)
    w = {"fc1.W": np.array(W0, np.float32)}
    for g in (G1, G2):
        optim.step(opt, w, {"fc1.W": np.array(g, np.float32)}, LR, decayed=["fc1.W"])
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


def adamw(w, g, s, t, wd=0.1):
    # Loshchilov & Hutter 2019, Algorithm 2 as PyTorch's AdamW applies it: w <- w - lr*wd*w, then adam
    return adam(w - LR * wd * w, g, s, t)


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
    ("adamw", adamw, {"weight_decay": 0.1}),
    ("adamw", adam, {}),  # no decay: adam itself
    ("adam", adam, {"weight_decay": 0.1}),  # adam's decay is a penalty in the gradient, not its step's
])
def test_two_steps_follow_the_published_rule(kind, rule, hyper):
    got = two_steps(kind, **hyper)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand(rule), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_the_torch_engine_runs_the_same_update_bit_for_bit(kind):
    # one formula for both engines (dlc.torch.rules runs optim's functions with torch as the array module)
    torch = pytest.importorskip("torch")
    from dlc.torch.rules import UPDATES
    opt, slots = optim.make_optimizer(kind), {}
    w = torch.tensor(W0, dtype=torch.float32)
    for g in (G1, G2):
        opt.t += 1
        UPDATES[kind](opt, lambda key: slots.setdefault(key, torch.zeros_like(w)), "fc1.W", w,
                      torch.tensor(g, dtype=torch.float32), LR)
    assert np.array_equal(w.numpy(), two_steps(kind))


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


def test_adamw_decays_only_the_tensors_named_decayed():
    opt = optim.make_optimizer("adamw", weight_decay=0.5)
    p = {"fc1.W": np.array(W0, np.float32), "fc1.b": np.array(W0, np.float32)}
    optim.step(opt, p, {k: np.array(G1, np.float32) for k in p}, LR, decayed=["fc1.W"])
    # first adam step is lr * sign(g) (Kingma & Ba 2.1); the weight first shrinks by 1 - lr * wd = 0.95
    np.testing.assert_allclose(p["fc1.b"], np.array(W0) - LR * np.sign(G1), rtol=1e-6)
    np.testing.assert_allclose(p["fc1.W"], 0.95 * np.array(W0) - LR * np.sign(G1), rtol=1e-6)


def test_clipping_scales_every_gradient_by_one_global_norm():
    # |(3, 4, 12)| = 13: each gradient is multiplied by 1 / (13 + 1e-6), as PyTorch's clip_grad_norm_
    grads = {"fc1.W": np.array([3.0, 4.0], np.float32), "fc1.b": np.array([12.0], np.float32)}
    assert optim.clip_global_norm(grads, 1.0) == pytest.approx(13.0)
    np.testing.assert_allclose(grads["fc1.W"], [3 / 13, 4 / 13], rtol=1e-6)
    np.testing.assert_allclose(grads["fc1.b"], [12 / 13], rtol=1e-6)
    untouched = {"fc1.W": np.array([3.0, 4.0], np.float32)}
    assert optim.clip_global_norm(untouched, 5.5) == pytest.approx(5.0)
    assert untouched["fc1.W"].tolist() == [3.0, 4.0]


def test_bad_hyperparameters_are_errors():
    with pytest.raises(DlcError, match="unknown optimizer `adamax`"):
        optim.make_optimizer("adamax")
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


def test_warmup_ramps_the_first_steps_linearly():
    # warmup=4: steps 0..3 take 1/4, 2/4, 3/4 and all of the scheduled rate; no warmup is always 1
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


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


def sgd_data() -> Data:
    rng = np.random.default_rng(5)
    return Data(Split(rng.standard_normal((8, 4)).astype(np.float32), np.array([0, 1] * 4)), name="t")


def one_sgd_step(tmp_path: Path, name: str, **cfg) -> dict:
    graph = compile_spec(BN_NET, file="bn.dlc")
    train(graph, sgd_data(), TrainConfig(loss="xent", lr=0.1, batch=8, epochs=1, **cfg), tmp_path / name,
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


def test_warmup_takes_a_share_of_the_rate_and_adamw_keeps_decay_out_of_the_loss(tmp_path):
    # one sgd step with warmup=4 is one step at lr / 4: the weights move a quarter as far
    init, _ = init_params(compile_spec(BN_NET, file="bn.dlc"))
    plain = one_sgd_step(tmp_path, "plain")
    warm = one_sgd_step(tmp_path, "warm", warmup=4)
    for name in plain:
        np.testing.assert_allclose(warm[name] - init[name], (plain[name] - init[name]) / 4, rtol=1e-4, atol=1e-7)
    # adamw's decay is not a penalty: the loss it reports is adam's, while the weights differ
    adam = train(compile_spec(BN_NET, file="bn.dlc"), sgd_data(), TrainConfig(loss="xent", optimizer="adam", lr=0.1,
                 batch=8, epochs=1), tmp_path / "adam", meta={})
    adamw = train(compile_spec(BN_NET, file="bn.dlc"), sgd_data(), TrainConfig(loss="xent", optimizer="adamw",
                  lr=0.1, batch=8, epochs=1, weight_decay=0.5), tmp_path / "adamw", meta={})
    assert adamw.history[0]["train_loss"] == adam.history[0]["train_loss"]
    w_adam = load_checkpoint(tmp_path / "adam" / "last.npz")[0]
    w_adamw = load_checkpoint(tmp_path / "adamw" / "last.npz")[0]
    for name in w_adam:  # one step: the decayed weights are adam's minus lr * wd * W0; the rest are adam's
        shift = 0.1 * 0.5 * init[name] if name.endswith(".W") else 0
        np.testing.assert_allclose(w_adamw[name], w_adam[name] - shift, rtol=1e-5, atol=1e-7)


def test_clip_bounds_the_step_of_plain_sgd(tmp_path):
    # with sgd, W1 - W0 = -lr * g: clipped to a global norm c, the whole step has norm lr * c
    init, _ = init_params(compile_spec(BN_NET, file="bn.dlc"))
    plain = one_sgd_step(tmp_path, "plain")
    clipped = one_sgd_step(tmp_path, "clip", clip=0.01)

    def step(w):
        return math.sqrt(sum(float(((w[k] - init[k]).astype(np.float64) ** 2).sum()) for k in w))

    assert step(plain) > 0.1 * 0.01 * 10  # the unclipped gradient is far longer than the bound
    assert step(clipped) == pytest.approx(0.1 * 0.01, rel=1e-3)
    for name in plain:  # and in the same direction
        np.testing.assert_allclose(clipped[name] - init[name], (plain[name] - init[name]) * step(clipped) / step(plain),
                                   rtol=1e-3, atol=1e-8)


def test_maxnorm_caps_each_units_incoming_weights(tmp_path):
    params = one_sgd_step(tmp_path, "mn", maxnorm=0.3)
    for name in ("fc1.W", "fc2.W"):
        norms = np.sqrt((params[name].astype(np.float64) ** 2).sum(axis=1))
        assert norms.max() <= 0.3 * (1 + 1e-6)
    assert not np.allclose(params["bn1.gamma"], 0.3)


def test_adamw_and_clipping_match_pytorch():
    torch = pytest.importorskip("torch")
    w, b = (torch.nn.Parameter(torch.tensor(W0)) for _ in range(2))
    ref = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=LR)
    opt = optim.make_optimizer("adamw", weight_decay=0.1)
    p = {"fc1.W": np.array(W0, np.float32), "fc1.b": np.array(W0, np.float32)}
    for g in (G1, G2):
        w.grad, b.grad = torch.tensor(g), torch.tensor(g)
        ref.step()
        optim.step(opt, p, {k: np.array(g, np.float32) for k in p}, LR, decayed=["fc1.W"])
    np.testing.assert_allclose(p["fc1.W"], w.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(p["fc1.b"], b.detach().numpy(), rtol=1e-6)
    grads = {"fc1.W": np.array(G1, np.float32), "fc1.b": np.array(G2, np.float32)}
    tw, tb = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    tw.grad, tb.grad = torch.tensor(G1), torch.tensor(G2)
    torch.nn.utils.clip_grad_norm_([tw, tb], 0.1)
    optim.clip_global_norm(grads, 0.1)
    np.testing.assert_allclose(np.concatenate([grads["fc1.W"], grads["fc1.b"]]),
                               np.concatenate([tw.grad.numpy(), tb.grad.numpy()]), rtol=1e-6)
