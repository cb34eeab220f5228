"""Networks with several outputs (`output a, b`) and inputs without a batch axis (`input 3x4 shared`,
`input scalar`): the language, the NumPy engine forward and backward, and every backend that reads a
network's ends."""

from __future__ import annotations

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.errors import DlcError
from dlc.graph import Network

# a classifier whose logits also feed an auxiliary head: the second output reads the first
TWO = """input 4 -> fc 8 relu -> fc 3 as logits
fc 2 tanh as aux
output logits, aux
"""


def _net(text: str) -> Network:
    from dlc.engine.params import init_params

    g = compile_spec(text)
    params, state = init_params(g, seed=0)
    return Network(g, params, state)


def test_output_names_the_ends_in_its_order_and_an_output_may_feed_later_steps():
    g = compile_spec(TWO)
    assert g.output_names == ["logits", "aux"]
    assert [(n.name, n.out_shape) for n in g.outputs] == [("fc2", (3,)), ("tanh1", (2,))]
    assert g.node("fc3").inputs == ["fc2"] and g.node("tanh1").inputs == ["fc3"]
    # without `output` the last step is the one output, named as its layer
    g = compile_spec("input 4 -> fc 3 as logits -> fc 2")
    assert g.output_names == ["fc2"] and g.output.name == "fc2"


@pytest.mark.parametrize("text, message, column", [
    ("input 4 -> fc 3 as a -> fc 2 as b\noutput a, c", "unknown label `c` (labels so far: a, b)", 11),
    ("input 4 -> fc 3 as a -> fc 2 as b\noutput b, b", "`b` is named twice in `output`", 11),
    ("input 4 -> fc 3 as a -> fc 2 as b\noutput a", "fc 2 as b (fc2) feeds no output", 25),
    ("input 4 -> fc 3 as a\noutput a\nfc 2", "`output` ends the network (line 2)", 1),
    ("input 4 -> fc 3 as a\noutput a\noutput a", "`output` ends the network (line 2)", 1),
    ("input 4 as v -> fc 3 as a\noutput v, a", "`v` is an input", 8),
    ("input 4 -> fc 3 as a\noutput", "`output` names labelled steps, separated by commas", 7),
    ("input 4 -> add( fc 3 as a\noutput a | identity )", "`output` is a top-level statement", 1),
    ("input 4 -> fc 3 -> fc 3 as fc1\noutput fc1", "`fc1` is also the name of layer fc1", 8),
])
def test_output_mistakes_are_located(text, message, column):
    with pytest.raises(DlcError) as e:
        compile_spec(text)
    assert message in str(e.value) and e.value.pos.col == column, str(e.value)


def test_forward_gives_each_output_by_name_and_backward_takes_a_gradient_for_each():
    from dlc.engine.run import backward, forward, predict

    net = _net(TWO)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ys, tape = forward(net, x, keep=True)
    p = net.params
    h = np.maximum(x @ p["fc1.W"].T + p["fc1.b"], 0)
    logits = h @ p["fc2.W"].T + p["fc2.b"]
    aux = np.tanh(logits @ p["fc3.W"].T + p["fc3.b"])
    assert list(ys) == ["logits", "aux"]
    np.testing.assert_allclose(ys["logits"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys["aux"], aux, rtol=1e-5, atol=1e-6)
    # logits reach the loss directly and through aux: fc2's bias gradient is the sum of both paths
    grads, _ = backward(tape, {"logits": np.ones_like(logits), "aux": np.ones_like(aux)})
    through_aux = (1 - aux**2) @ p["fc3.W"]
    np.testing.assert_allclose(grads["fc2.b"], (1 + through_aux).sum(axis=0), rtol=1e-5)
    by_two = predict(net, x, batch=2)
    np.testing.assert_allclose(by_two["aux"], aux, rtol=1e-5, atol=1e-6)


def test_gradcheck_sums_the_outputs_losses():
    from dlc.engine.gradcheck import check_gradients

    checks = check_gradients(compile_spec(TWO), loss="mse")
    assert {t.tensor for c in checks for t in c.tensors} >= {"fc3.W", "fc2.W", "input"}
    assert max(t.worst for c in checks for t in c.tensors) < 1e-6


def _onnxruntime_agrees(net: Network, feeds: dict) -> list[str]:
    import onnxruntime as ort

    from dlc.engine.run import forward
    from dlc.onnx.export import check_export, to_onnx

    model = to_onnx(net)
    check_export(model, net)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)
    mine, _ = forward(net, feeds if len(feeds) > 1 else next(iter(feeds.values())))
    mine = mine if isinstance(mine, dict) else {net.graph.output_names[0]: mine}
    names = [o.name for o in session.get_outputs()]
    for name, y in zip(names, theirs):
        np.testing.assert_allclose(mine[name], y, rtol=1e-5, atol=1e-6)
    return names


def test_export_has_a_graph_output_per_label_in_order_and_onnxruntime_agrees():
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    assert _onnxruntime_agrees(_net(TWO), {"input": x}) == ["logits", "aux"]
