"""The NumPy engine on whole graphs: backprop through branches and merges against central differences,
the fused losses, checkpoints, initialisation statistics and `dlc gradcheck`.

Graphs are built node by node through the layer registry, so these tests do not depend on the compiler;
the `dlc gradcheck` tests go through the real command on spec text.
"""

from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine import run
from dlc.engine.gradcheck import check_gradients
from dlc.engine.kernels import KERNELS
from dlc.engine.params import init_params, load_checkpoint, save_checkpoint
from dlc.errors import DlcError
from dlc.graph import Graph, Network, Node
from dlc.layers import KINDS

TOL = 1e-6


def build(input_shape, *steps, tokens=False) -> Graph:
    """A graph from (name, kind, written attrs[, input names]) steps; a step reads the previous one
    unless it names its inputs. Options and flags take the registry's defaults, as the compiler's do."""
    nodes = [Node("input", "input", {"shape": tuple(input_shape)}, [], tuple(input_shape),
                  "int64" if tokens else "float32")]
    shapes = {"input": tuple(input_shape)}
    for name, kind, written, *inputs in steps:
        k = KINDS[kind]
        attrs = k.default_attrs()
        if k.size_attr:
            attrs[k.size_attr] = k.size_default
        attrs.update(written)
        ins = list(inputs[0]) if inputs else [nodes[-1].name]
        shape, resolved = k.resolve(attrs, [shapes[i] for i in ins])
        shapes[name] = shape
        nodes.append(Node(name, kind, resolved, ins, shape))
    return Graph(nodes)


def conv(name, channels, kernel, inputs=None, **kw):
    step = (name, "conv", dict(channels=channels, kernel=kernel, **kw))
    return step + ((inputs,) if inputs else ())


def act(name, kind, inputs=None):
    return (name, kind, {}) + ((inputs,) if inputs else ())


def assert_gradients_match(graph, **kw):
    layers = check_gradients(graph, every_entry=True, **kw)
    checked = {t.tensor for r in layers for t in r.tensors}
    worst = {t.tensor: t.worst for r in layers for t in r.tensors}
    assert all(e < TOL for e in worst.values()), worst
    return checked


def resnet_block():
    # ResNet "B" block that halves the map and doubles the channels: the shortcut is a projection
    return build(
        (4, 6, 6),
        conv("conv1", 8, 3, stride=2, pad=1, bias=False), act("bn1", "bn"), act("relu1", "relu"),
        conv("conv2", 8, 3, pad=1, bias=False), act("bn2", "bn"),
        conv("proj", 8, 1, ["input"], stride=2, bias=False), act("proj_bn", "bn"),
        act("add1", "add", ["bn2", "proj_bn"]), act("relu2", "relu"),
        act("gap", "gap"), ("fc", "fc", {"units": 3}), act("softmax", "softmax"),
    )


def test_resnet_block_with_projection_shortcut():
    g = resnet_block()
    assert g.node("add1").out_shape == (8, 3, 3)
    checked = assert_gradients_match(g)
    assert {"input", "conv1.W", "conv2.W", "proj.W", "bn1.gamma", "proj_bn.beta", "fc.W"} <= checked


def test_inception_concat():
    g = build(
        (4, 5, 5),
        conv("a", 2, 1, ["input"]), act("a_relu", "relu"),
        conv("b1", 2, 1, ["input"]), act("b1_relu", "relu"), conv("b2", 3, 3, pad=1), act("b2_relu", "relu"),
        ("pool", "maxpool", {"kernel": 3, "stride": 1, "pad": 1}, ["input"]), conv("d", 2, 1),
        act("d_relu", "relu"),
        act("cat", "concat", ["a_relu", "b2_relu", "d_relu"]),
        act("gap", "gap"), ("fc", "fc", {"units": 3}),
    )
    assert g.node("cat").out_shape == (7, 5, 5)
    assert_gradients_match(g, loss="mse")


def test_unet_skip_upconv_and_concat_label():
    g = build(
        (1, 8, 8),
        conv("e1", 3, 3, pad="same"), act("e1_relu", "relu"), ("pool", "maxpool", {"kernel": 2}),
        conv("mid", 4, 3, pad="same"), act("mid_relu", "relu"),
        ("up", "upconv", {"channels": 3, "kernel": 2, "stride": 2}),
        act("cat", "concat", ["up", "e1_relu"]), conv("out", 2, 1),
    )
    assert g.node("cat").out_shape == (6, 8, 8) and g.output.out_shape == (2, 8, 8)
    assert_gradients_match(g)


def lstm_classifier():
    return build(
        (5,), ("embed", "embed", {"dim": 4, "vocab": 7}), ("lstm", "lstm", {"hidden": 3}),
        ("fc", "fc", {"units": 2}), act("softmax", "softmax"), tokens=True,
    )


def test_lstm_classifier_with_cross_entropy():
    checked = assert_gradients_match(lstm_classifier(), loss="xent")
    # token ids have no gradient; every weight has one
    assert checked == {"embed.W", "lstm.W", "lstm.R", "lstm.B", "fc.W", "fc.b"}


def mlp():
    return build((4,), ("fc1", "fc", {"units": 5}), act("s1", "sigmoid"), ("fc2", "fc", {"units": 3}),
                 act("s2", "sigmoid"))


def test_mlp_with_quadratic_cost():
    assert_gradients_match(mlp(), loss="mse")


def test_dropout_and_bn_in_training_mode_check_with_fixed_masks():
    g = build((6,), ("fc1", "fc", {"units": 8}), act("bn", "bn"), act("relu", "relu"),
              ("drop", "dropout", {"p": 0.5}), ("noise", "noise", {"sigma": 0.3}), ("fc2", "fc", {"units": 3}))
    assert_gradients_match(g, batch=3)


def test_tensor_read_by_two_branches_sums_their_gradients():
    # y = W x + b + x (an fc branch and an identity branch added); with mse against zero targets,
    # L = sum(y^2) / (2N), so dL/dx = (y W + y) / N and dL/dW = y^T x / N.
    g = build((3,), ("fc", "fc", {"units": 3}, ["input"]), act("skip", "identity", ["input"]),
              act("add", "add", ["fc", "skip"]))
    params, state = init_params(g, dtype=np.float64)
    params["fc.b"][:] = [0.1, -0.2, 0.3]
    x = np.random.default_rng(1).standard_normal((4, 3))
    y, tape = run.forward(Network(g, params, state), x, keep=True)
    expected_y = x @ params["fc.W"].T + params["fc.b"] + x
    np.testing.assert_allclose(y, expected_y, rtol=1e-12)
    grads, dx = run.backward(tape, y / 4)
    np.testing.assert_allclose(dx, (y @ params["fc.W"] + y) / 4, rtol=1e-12)
    np.testing.assert_allclose(grads["fc.W"], y.T @ x / 4, rtol=1e-12)
    np.testing.assert_allclose(grads["fc.b"], y.sum(axis=0) / 4, rtol=1e-12)


def test_without_the_input_gradient_the_parameter_gradients_are_unchanged():
    # The first conv and fc read the network input: told need_dx=False they skip its gradient. The
    # parameter gradients must equal those of the full pass, which the central-difference checks pin.
    g = compile_spec("input 2@7x7 -> conv 3@3x3 pad=1 tanh -> maxpool 2/2 -> flatten -> fc 4", file="<t>")
    params, state = init_params(g, dtype=np.float64)
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((5, 2, 7, 7)), np.array([0, 3, 1, 2, 2])
    grads = {}
    for wanted in (True, False):
        _, _, dout, tape = run.loss_forward(Network(g, params, state), x, labels, "xent", keep=True, input_grad=wanted)
        grads[wanted], dx = run.backward(tape, dout)
        assert (dx is None) == (not wanted)
    for name, full in grads[True].items():
        np.testing.assert_array_equal(grads[False][name], full)


def test_a_tape_serves_one_backward_pass():
    g = mlp()
    params, state = init_params(g)
    _, tape = run.forward(Network(g, params, state), np.ones((2, 4), np.float32), keep=True)
    run.backward(tape, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="already consumed"):
        run.backward(tape, np.ones((2, 3), np.float32))


def test_fused_cross_entropy_runs_to_the_logits_and_returns_probabilities():
    g = resnet_block()
    params, state = init_params(g, dtype=np.float64)
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((5, 4, 6, 6)), np.array([0, 2, 1, 1, 0])
    logits, _ = run.forward(Network(g, params, dict(state)), x, training=True, upto="fc")
    value, out, grads = run.loss_and_grads(Network(g, params, dict(state)), x, labels, "xent")
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, p, rtol=1e-12)
    assert value == pytest.approx(-np.log(p[np.arange(5), labels]).mean(), rel=1e-12)
    # d/dlogits of mean cross-entropy is (p - onehot) / N; fc.b's gradient is its column sum
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(grads["fc.b"], (p - onehot).sum(axis=0) / 5, rtol=1e-10, atol=1e-15)
    assert set(grads) == set(params)


def test_fused_bce_matches_bce_on_the_sigmoid_output():
    g = build((3,), ("fc", "fc", {"units": 1}), act("sig", "sigmoid"))
    params, state = init_params(g, dtype=np.float64)
    x, t = np.random.default_rng(3).standard_normal((6, 3)), np.array([0, 1, 1, 0, 1, 0.0])
    value, out, grads = run.loss_and_grads(Network(g, params, state), x, t, "bce")
    s = 1 / (1 + np.exp(-(x @ params["fc.W"].T + params["fc.b"])))
    np.testing.assert_allclose(out, s, rtol=1e-12)
    assert value == pytest.approx(-(t * np.log(s[:, 0]) + (1 - t) * np.log(1 - s[:, 0])).mean(), rel=1e-12)
    np.testing.assert_allclose(grads["fc.W"], ((s[:, 0] - t) @ x / 6)[None], rtol=1e-10)


def test_the_plan_is_kept_outside_the_graph_and_leaves_with_it():
    g = build((4,), ("fc", "fc", {"units": 3}))
    params, state = init_params(g)
    before = dict(vars(g))
    run.forward(Network(g, params, state), np.zeros((2, 4), np.float32))
    assert vars(g) == before  # nothing was written onto the Graph
    key = id(g)
    assert run.PLANS[key].nodes is g.nodes
    g.nodes = list(g.nodes)  # a graph whose node list was replaced gets a fresh plan
    assert run.compile_plan(g).nodes is g.nodes
    del g
    gc.collect()
    assert key not in run.PLANS


def test_predict_in_chunks_equals_one_forward_pass():
    g = resnet_block()
    params, state = init_params(g)
    x = np.random.default_rng(4).standard_normal((7, 4, 6, 6)).astype(np.float32)
    whole, _ = run.forward(Network(g, params, state), x)
    np.testing.assert_allclose(run.predict(Network(g, params, state), x, batch=3), whole, rtol=1e-5, atol=1e-7)
    assert run.predict(Network(g, params, state), x[:0]).shape == (0, 3)


def test_activations_yield_every_node_in_order():
    g = lstm_classifier()
    params, state = init_params(g)
    x = np.array([[1, 2, 3, 4, 5], [0, 6, 6, 1, 2]])
    seen = [(node.name, out.shape) for node, out in run.activations(Network(g, params, state), x)]
    assert seen == [("input", (2, 5)), ("embed", (2, 5, 4)), ("lstm", (2, 3)), ("fc", (2, 2)),
                    ("softmax", (2, 2))]


def test_wrong_input_shape_and_unknown_layer_are_errors():
    g = mlp()
    params, state = init_params(g)
    with pytest.raises(DlcError, match=r"shape \(2, 5\).*takes 4"):
        run.forward(Network(g, params, state), np.zeros((2, 5), np.float32))
    with pytest.raises(DlcError, match="no layer named `fc9`"):
        run.forward(Network(g, params, state), np.zeros((2, 4), np.float32), upto="fc9")
    with pytest.raises(DlcError, match="unknown loss `l3`"):
        run.loss_and_grads(Network(g, params, state), np.zeros((2, 4), np.float32), np.zeros((2, 3)), "l3")


def test_checkpoint_round_trip_keeps_arrays_and_metadata(tmp_path):
    g = resnet_block()
    params, state = init_params(g, seed=5)
    state["bn1.mean"][:] = np.arange(8)
    path = tmp_path / "net.npz"
    save_checkpoint(path, params, state, meta={"spec": "input 4@6x6 ...", "normalisation": [0.1, 0.3]})
    p2, s2, meta = load_checkpoint(path, g)
    assert set(p2) == set(params) and set(s2) == set(state)
    for k in params:
        np.testing.assert_array_equal(p2[k], params[k])
        assert p2[k].dtype == np.float32
    np.testing.assert_array_equal(s2["bn1.mean"], np.arange(8))
    assert meta["spec"] == "input 4@6x6 ..." and meta["normalisation"] == [0.1, 0.3]
    assert meta["dlc_version"]
    assert os.listdir(tmp_path) == ["net.npz"]  # the temporary file was renamed, not left behind


def test_checkpoint_of_another_network_names_the_first_layer_that_differs(tmp_path):
    path = tmp_path / "net.npz"
    params, state = init_params(resnet_block())
    save_checkpoint(path, params, state)
    wider = build((4, 6, 6), conv("conv1", 6, 3, stride=2, pad=1, bias=False))
    with pytest.raises(DlcError, match=r"layer conv1: conv1\.W is \(8, 4, 3, 3\) in the checkpoint, "
                                       r"\(6, 4, 3, 3\) in the spec"):
        load_checkpoint(path, wider)


def test_missing_and_damaged_checkpoints_are_errors(tmp_path):
    with pytest.raises(DlcError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DlcError, match="not a dlc checkpoint"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))  # an npz, but without dlc's metadata
    with pytest.raises(DlcError, match="not a dlc checkpoint"):
        load_checkpoint(plain)


def test_he_init_has_std_sqrt_2_over_fan_in():
    g = build((32, 9, 9), conv("conv", 64, 3), act("gap", "gap"), ("fc", "fc", {"units": 500}),
              act("bn", "bn"))
    params, state = init_params(g, init="he", seed=0)
    # conv fan-in is C_in * kh * kw = 32 * 9 = 288; fc fan-in 64
    assert params["conv.W"].std() == pytest.approx(np.sqrt(2 / 288), rel=0.03)
    assert params["fc.W"].std() == pytest.approx(np.sqrt(2 / 64), rel=0.03)
    assert abs(params["fc.W"].mean()) < 0.01
    assert not params["conv.b"].any() and not params["fc.b"].any()
    np.testing.assert_array_equal(params["bn.gamma"], 1)
    np.testing.assert_array_equal(params["bn.beta"], 0)
    np.testing.assert_array_equal(state["bn.mean"], 0)
    np.testing.assert_array_equal(state["bn.var"], 1)
    assert params["conv.W"].dtype == np.float32


def test_he_init_of_a_stride_2_upconv_doubles_the_input_variance():
    # He et al. (2015): Var(w) = 2 / n with n the products summed into one output. A 2x2/2 transposed
    # convolution gives each output pixel exactly one tap from each of its C_in channels, so n = C_in
    # and Var(y) = C_in * (2 / C_in) * E[x^2] = 2 for unit-variance inputs.
    g = build((64, 8, 8), ("up", "upconv", {"channels": 32, "kernel": 2, "stride": 2}))
    params, state = init_params(g, init="he", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((8, 64, 8, 8))
    y, _ = run.forward(Network(g, params, state), x)
    assert y.shape == (8, 32, 16, 16)
    assert y.var() == pytest.approx(2.0, rel=0.1)


def test_embedding_rows_have_unit_variance_and_recurrent_gates_their_own_fan_in():
    # An embedding is a product with a one-hot vector (fan-in 1): N(0, 1) rows under he and xavier, as
    # PyTorch's nn.Embedding. An lstm stacks one H x D matrix per gate: he's fan-in is D for W, H for R.
    g = compile_spec("input seq 10 -> embed 100 vocab=400 -> lstm 50", file="lm.dlc")
    for init in ("he", "xavier"):
        params, _ = init_params(g, init=init, dtype=np.float64)
        assert params["embed1.W"].std() == pytest.approx(1.0, rel=0.02), init
    params, _ = init_params(g, init="he", dtype=np.float64)
    assert params["lstm1.W"].std() == pytest.approx(np.sqrt(2 / 100), rel=0.03)
    assert params["lstm1.R"].std() == pytest.approx(np.sqrt(2 / 50), rel=0.03)
    assert not params["lstm1.B"].any()
    assert init_params(g, init="gaussian", std=0.5)[0]["embed1.W"].std() == pytest.approx(0.5, rel=0.02)


def test_attention_projections_start_glorot_uniform_under_he_as_keras_and_pytorch():
    # An attention projection has no rectifier after it, so no He factor of 2: Glorot & Bengio's
    # uniform(±sqrt(6 / (fan_in + fan_out))) as Keras's MultiHeadAttention, under he and xavier alike.
    # Wq of D = 256 is 256 x 256: limit sqrt(6/512) = 0.108, std limit/sqrt(3) = 0.0625 (He's: 0.088);
    # with kv=2 of 8 heads of 32, Wk is 64 x 256: limit sqrt(6/320) = 0.137. The fc after it keeps He's.
    g = compile_spec("input seq 10 -> embed 256 vocab=50 -> attention 8 kv=2 -> fc 100", file="a.dlc")
    for init in ("he", "xavier"):
        params, _ = init_params(g, init=init, dtype=np.float64)
        for w, limit in (("Wq", np.sqrt(6 / 512)), ("Wo", np.sqrt(6 / 512)), ("Wk", np.sqrt(6 / 320))):
            W = params[f"attention1.{w}"]
            assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit, (init, w)
            assert W.std() == pytest.approx(limit / np.sqrt(3), rel=0.03), (init, w)
        assert not params["attention1.bq"].any()
    assert init_params(g, init="he", dtype=np.float64)[0]["fc1.W"].std() == pytest.approx(np.sqrt(2 / 256), rel=0.03)
    assert init_params(g, init="gaussian", std=0.5)[0]["attention1.Wq"].std() == pytest.approx(0.5, rel=0.02)


def test_xavier_and_gaussian_init():
    g = build((300,), ("fc", "fc", {"units": 200}))
    w = init_params(g, init="xavier")[0]["fc.W"]
    limit = np.sqrt(6 / (300 + 200))  # Glorot & Bengio (2010), uniform
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    w = init_params(g, init="gaussian", std=0.5)[0]["fc.W"]
    assert w.std() == pytest.approx(0.5, rel=0.02)


def test_init_is_seeded_and_reproducible():
    g = resnet_block()
    a, b, c = (init_params(g, seed=s)[0] for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.W"], c["conv1.W"])


def test_unknown_init_is_an_error():
    with pytest.raises(DlcError, match="unknown init `lecun`"):
        init_params(mlp(), init="lecun")


def gradcheck_cli(*args):
    return CliRunner().invoke(main, ["gradcheck", *args])


@pytest.mark.parametrize("spec", [
    "input 2 -> fc 2 sigmoid -> fc 1 sigmoid",
    "input 3@6x6\nconv 4@3x3 pad=1 bn relu\nmaxpool 2\nfc 3 softmax",
    "input seq 4\nembed 3 vocab=5\ngru 3 sequences\nlstm 2\nfc 2 softmax",
    "input 2@6x6\nadd(\n  conv 4@3x3/2 pad=1 bn relu\n  conv 4@3x3 pad=1 bn\n | shortcut\n)\nrelu\ngap\nfc 3",
    "input 1@4x4\nconv 3@3x3 pad=1 softmax",  # pixel-wise classes: one label per pixel
    "input seq 3 of 2\nlstm 3 sequences\nsoftmax",  # one label per step
])
def test_gradcheck_command_passes_on_correct_kernels(spec):
    r = gradcheck_cli("-e", spec)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "FAIL" not in r.output


def test_gradcheck_json():
    r = gradcheck_cli("-e", "input 3\nfc 4 tanh\nfc 2 softmax", "--json", "--all")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "dlc.gradcheck/1" and doc["ok"] and doc["loss"] == "xent"
    layers = {layer["layer"]: layer for layer in doc["layers"]}
    assert set(layers) == {"input", "fc1", "fc2"}
    sizes = {t["tensor"]: (t["size"], t["checked"]) for t in layers["fc1"]["tensors"]}
    assert sizes == {"fc1.W": (12, 12), "fc1.b": (4, 4)}  # --all: every entry


def test_gradcheck_fails_on_a_broken_backward(monkeypatch):
    forward = KERNELS["tanh"]

    def broken_tanh(attrs, params, state, xs, ctx):
        y, backward = forward(attrs, params, state, xs, ctx)
        return y, lambda dy: ([dx * 1.001 for dx in backward(dy)[0]], {})

    monkeypatch.setitem(KERNELS, "tanh", broken_tanh)
    r = gradcheck_cli("-e", "input 3\nfc 4 tanh\nfc 2")
    assert r.exit_code == 1
    assert "FAIL" in r.output
    assert "exceed the tolerance" in r.output and "fc1" in r.output


def test_gradcheck_reports_a_bad_spec_without_a_traceback():
    r = gradcheck_cli("-e", "input 3\nfc 4 bogus_layer")
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "<expr>:2" in r.output
