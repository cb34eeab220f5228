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


def test_the_pytorch_code_generator_returns_the_outputs_in_order(tmp_path):
    torch = pytest.importorskip("torch")
    from dlc.engine.params import save_checkpoint
    from dlc.engine.run import forward
    from dlc.torch.trainer import network

    net = _net(TWO)
    save_checkpoint(tmp_path / "w.npz", net.params, net.state)
    model = network(net.graph)["Net"].load_dlc(tmp_path / "w.npz").eval()
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        logits, aux = model(torch.from_numpy(x))
    mine, _ = forward(net, x)
    np.testing.assert_allclose(logits.numpy(), mine["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.numpy(), mine["aux"], rtol=1e-5, atol=1e-6)


# a bias shared by every sample (no batch axis), a row scale with a leading 1 against the batch, and a
# sequence: ONNX's broadcasting of tensors of lower rank, aligned on the right
SHARED = """input 4 shared as w
input 1x4 shared as s
input seq 3 of 4 as v -> add w -> mul s -> tanh
"""


def test_a_shared_input_has_no_batch_axis_and_broadcasts_over_it():
    from dlc.engine.run import backward, forward

    net = _net(SHARED)
    assert [(n.name, n.out_shape) for n in net.graph.inputs] == [("w", (4,)), ("s", (1, 4)), ("v", (3, 4))]
    assert net.graph.output.out_shape == (3, 4)
    rng = np.random.default_rng(0)
    x = {"w": rng.standard_normal(4), "s": rng.standard_normal((1, 4)), "v": rng.standard_normal((5, 3, 4))}
    y, tape = forward(net, x, keep=True)
    np.testing.assert_allclose(y, np.tanh((x["v"] + x["w"]) * x["s"]))
    _, dx = backward(tape, np.ones_like(y))
    # the gradient of a shared tensor sums over every sample and step it was repeated to
    d = 1 - y**2
    np.testing.assert_allclose(dx["w"], (d * x["s"]).sum(axis=(0, 1)))
    np.testing.assert_allclose(dx["s"], (d * (x["v"] + x["w"])).sum(axis=0).sum(axis=0, keepdims=True))
    with pytest.raises(DlcError, match="input `w` is shared by every sample, shaped 4 without a batch axis"):
        forward(net, {**x, "w": rng.standard_normal((5, 4))})


def test_shared_and_scalar_inputs_pass_gradcheck_and_onnxruntime_agrees():
    from dlc.engine.gradcheck import check_gradients

    rng = np.random.default_rng(3)
    scalar = "input scalar as a\ninput scalar as b -> add a -> tanh -> mul a\n"
    for text, feeds in ((SHARED, {"w": (4,), "s": (1, 4), "v": (2, 3, 4)}), (scalar, {"a": (5,), "b": (5,)})):
        checks = check_gradients(compile_spec(text), loss="mse")
        assert max(t.worst for c in checks for t in c.tensors) < 1e-6
        _onnxruntime_agrees(_net(text), {k: rng.standard_normal(v).astype(np.float32) for k, v in feeds.items()})


@pytest.mark.parametrize("text, message", [
    ("input 3 shared as w -> relu", "relu cannot read a `shared` input (no batch axis)"),
    ("input 3 shared as w\ninput 3 shared as u -> add w", "add reads only `shared` inputs"),
    ("input 2x3 shared as w\ninput 3 as v -> add w", "the shared input 2x3 has more axes than the batch and a "
                                                     "sample 3 together"),
    ("input 3@4x4 shared as w", "a shared input is written as its whole shape, like 3x4 or 16"),
])
def test_shared_input_mistakes(text, message):
    with pytest.raises(DlcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_spec(text)


def _cli(*args):
    from click.testing import CliRunner

    from dlc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_two_output_model_from_either_pytorch_exporter_imports_and_reproduces(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    from torch import nn

    import torch_models

    class Heads(nn.Module):  # a classifier's logits, and a head reading them
        def __init__(self):
            super().__init__()
            self.body, self.head, self.aux = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 2)

        def forward(self, x):
            logits = self.head(torch.relu(self.body(x)))
            return logits, torch.tanh(self.aux(logits))

    torch.manual_seed(0)
    module = Heads()
    x = torch.randn(5, 4)
    torch_models.export(module, tmp_path / "heads.onnx", (x,), dynamo=dynamo)
    r = _cli("import", tmp_path / "heads.onnx", "-o", tmp_path / "heads.dlc")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "heads.dlc").read_text()
    g = compile_spec(text)
    assert [n.out_shape for n in g.outputs] == [(3,), (2,)] and text.splitlines()[-1].startswith("output ")
    np.save(tmp_path / "x.npy", x.numpy())
    r = _cli("infer", tmp_path / "heads.dlc", "--weights", tmp_path / "heads.npz", "--engine", "numpy",
             "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        expected = module(x)
    got = np.load(tmp_path / "y.npz")
    assert list(got.files) == g.output_names
    for name, want in zip(g.output_names, expected):
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-5, atol=1e-5)


def test_tables_mark_the_output_rows_and_json_lists_the_outputs_in_order(tmp_path):
    import json

    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    r = _cli("shapes", spec)
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[3:8]}
    assert "fc2 → logits" in rows["fc2"] and "fc3 → aux" in rows["fc3"] and "→" not in rows["fc1"]
    doc = json.loads(_cli("summary", spec, "--json").output)
    assert doc["outputs"] == [{"name": "logits", "layer": "fc2", "shape": [3]},
                              {"name": "aux", "layer": "tanh1", "shape": [2]}]
    # the exported model's analysis finds the same ends by their ONNX names
    assert _cli("export", spec, "-o", tmp_path / "two.onnx").exit_code == 0
    doc = json.loads(_cli("summary", tmp_path / "two.onnx", "--json").output)
    assert [(o["name"], o["shape"]) for o in doc["outputs"]] == [("logits", [3]), ("aux", [2])]
    shared = tmp_path / "shared.dlc"
    shared.write_text(SHARED)
    doc = json.loads(_cli("summary", shared, "--json").output)
    assert doc["inputs"][0] == {"name": "w", "shape": [4], "dtype": "float32", "shared": True}
    assert doc["outputs"] == [{"name": "tanh1", "layer": "tanh1", "shape": [3, 4]}]


def test_draw_shows_each_output_as_an_end(tmp_path):
    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    for suffix in ("svg", "mmd", "dot"):
        assert _cli("draw", spec, "-o", tmp_path / f"two.{suffix}").exit_code == 0
        text = (tmp_path / f"two.{suffix}").read_text()
        assert "fc2 → logits" in text and "fc3 → aux" in text, suffix


def test_infer_shows_and_saves_every_output_by_name(tmp_path):
    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    assert _cli("export", spec, "-o", tmp_path / "two.onnx").exit_code == 0
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for engine in ("numpy", "onnxruntime"):
        r = _cli("infer", tmp_path / "two.onnx", "--engine", engine, "--device", "cpu", "--input",
                 tmp_path / "x.npy", "--out", tmp_path / f"{engine}.npz")
        assert r.exit_code == 0 and "output logits (3, 3)" in r.output and "output aux (3, 2)" in r.output, r.output
    numpy_out, ort_out = np.load(tmp_path / "numpy.npz"), np.load(tmp_path / "onnxruntime.npz")
    assert numpy_out.files == ort_out.files == ["logits", "aux"]
    for name in numpy_out.files:
        np.testing.assert_allclose(numpy_out[name], ort_out[name], rtol=1e-5, atol=1e-6)
    r = _cli("infer", tmp_path / "two.onnx", "--random", "2", "--out", tmp_path / "y.npy")
    assert r.exit_code == 2 and "give --out Y.npz to save them all" in r.output


def test_train_refuses_several_outputs_in_one_line(tmp_path):
    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    r = _cli("train", spec, "--data", "glyphs", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "has 2 outputs (logits, aux): dlc train fits one target per sample" in r.output


def test_infer_reads_a_shared_input_without_a_batch_axis(tmp_path):
    spec = tmp_path / "shared.dlc"
    spec.write_text(SHARED)
    assert _cli("export", spec, "-o", tmp_path / "shared.onnx").exit_code == 0
    rng = np.random.default_rng(5)
    x = {"w": rng.standard_normal(4), "s": rng.standard_normal((1, 4)), "v": rng.standard_normal((2, 3, 4))}
    np.savez(tmp_path / "x.npz", **{k: v.astype(np.float32) for k, v in x.items()})
    for engine in ("numpy", "onnxruntime"):
        r = _cli("infer", tmp_path / "shared.onnx", "--engine", engine, "--device", "cpu", "--input",
                 tmp_path / "x.npz", "--out", tmp_path / "y.npy")
        assert r.exit_code == 0, r.output
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.tanh((x["v"] + x["w"]) * x["s"]), rtol=1e-5,
                                   atol=1e-6)
    np.savez(tmp_path / "bad.npz", **{**x, "w": np.ones((2, 4), np.float32)})
    r = _cli("infer", tmp_path / "shared.onnx", "--input", tmp_path / "bad.npz")
    assert r.exit_code == 2 and "one tensor shared by every sample (no batch axis)" in r.output


# PyTorch's x.mm(w) with w an input of the model: a matrix shared by every sample
MATMUL = "input 3x4 shared as w\ninput seq 2 of 3 as v -> matmul w -> tanh\n"


def test_matmul_by_a_shared_matrix_counts_as_fc_and_agrees_with_numpy_onnxruntime_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from dlc.analysis import analyse
    from dlc.engine.gradcheck import check_gradients
    from dlc.engine.run import forward
    from dlc.torch.trainer import network

    g = compile_spec(MATMUL)
    mm = g.node("matmul1")
    assert mm.out_shape == (2, 4)
    stats = {s.node.name: s for s in analyse(g).nodes}
    assert (stats["matmul1"].params, stats["matmul1"].macs) == (0, 2 * 4 * 3)  # 8 outputs of 3 products each
    assert max(t.worst for c in check_gradients(g, loss="mse") for t in c.tensors) < 1e-6
    rng = np.random.default_rng(6)
    x = {"w": rng.standard_normal((3, 4)).astype(np.float32), "v": rng.standard_normal((5, 2, 3)).astype(np.float32)}
    net = _net(MATMUL)
    np.testing.assert_allclose(forward(net, x)[0], np.tanh(x["v"] @ x["w"]), rtol=1e-5, atol=1e-6)
    _onnxruntime_agrees(net, x)
    model = network(g)["Net"]()
    with torch.no_grad():
        y = model(torch.from_numpy(x["w"]), torch.from_numpy(x["v"])).numpy()
    np.testing.assert_allclose(y, np.tanh(x["v"] @ x["w"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(DlcError, match="multiplies the current tensor by a matrix shared by every sample"):
        compile_spec("input seq 3 of 4 as w\ninput seq 2 of 3 as v -> matmul w")


@pytest.mark.parametrize("addmm", [False, True], ids=["mm", "addmm"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_mm_by_an_input_matrix_from_either_pytorch_exporter_imports_as_matmul(tmp_path, dynamo, addmm):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import onnx
    from torch import nn

    import torch_models
    from dlc.onnx.importing.importer import input_labels

    class Mm(nn.Module):  # x @ w, or x @ w + b with b a 4-vector (PyTorch's addmm: Gemm with C, or MatMul, Add)
        def forward(self, x, w, *b):
            return torch.tanh(torch.addmm(b[0], x, w) if b else x.mm(w))

    x, w, b = torch.randn(2, 3), torch.randn(3, 4), torch.randn(4)
    args = (x, w, b) if addmm else (x, w)
    torch_models.export(Mm(), tmp_path / "mm.onnx", args, dynamo=dynamo)
    r = _cli("import", tmp_path / "mm.onnx", "-o", tmp_path / "mm.dlc")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "mm.dlc").read_text()
    assert "3x4 shared" in text and "matmul" in text, text
    names = input_labels([v.name for v in onnx.load(tmp_path / "mm.onnx").graph.input])
    np.savez(tmp_path / "xw.npz", **dict(zip(names, (a.numpy() for a in args))))
    r = _cli("infer", tmp_path / "mm.dlc", "--weights", tmp_path / "mm.npz", "--engine", "numpy",
             "--input", tmp_path / "xw.npz", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), Mm()(*args).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", [TWO, SHARED, MATMUL], ids=["two outputs", "shared", "matmul"])
def test_dlc_exports_import_back_and_reproduce(tmp_path, text):
    from dlc.engine.run import forward

    spec = tmp_path / "net.dlc"
    spec.write_text(text)
    assert _cli("export", spec, "-o", tmp_path / "net.onnx").exit_code == 0
    r = _cli("import", tmp_path / "net.onnx", "-o", tmp_path / "back.dlc")
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(7)
    net = _net(text)
    feeds = {n.name: rng.standard_normal(n.out_shape if n.attrs.get("shared") else (2, *n.out_shape))
             .astype(np.float32) for n in net.graph.inputs}
    np.savez(tmp_path / "x.npz", **feeds)
    given = tmp_path / "x.npz" if len(feeds) > 1 else tmp_path / "x.npy"
    np.save(tmp_path / "x.npy", next(iter(feeds.values())))
    r = _cli("infer", tmp_path / "back.dlc", "--weights", tmp_path / "back.npz", "--engine", "numpy", "--input",
             given, "--out", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
    want, _ = forward(net, feeds if len(feeds) > 1 else next(iter(feeds.values())))
    want = want if isinstance(want, dict) else {"": want}
    with np.load(tmp_path / "y.npz") as got:
        assert len(got.files) == len(want)
        for name, w in zip(got.files, want.values()):
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text, column", [("input scalar 3", 14), ("input 3 shared shared", 16)])
def test_a_misread_input_line_names_the_scalar_and_shared_forms(text, column):
    with pytest.raises(DlcError) as e:
        compile_spec(text)
    assert "`input scalar` or `input 3x4 shared`" in e.value.message and e.value.pos.col == column


def test_a_float16_export_casts_every_output_back_and_an_output_still_feeds_the_next_layer(tmp_path):
    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    for dtype, name in (("fp32", "y32"), ("fp16", "y16")):
        assert _cli("export", spec, "--dtype", dtype, "-o", tmp_path / f"{name}.onnx").exit_code == 0
        r = _cli("infer", tmp_path / f"{name}.onnx", "--random", "4", "--device", "cpu", "--out",
                 tmp_path / f"{name}.npz")
        assert r.exit_code == 0 and "output aux (4, 2) float32" in r.output, r.output
    low, full = np.load(tmp_path / "y16.npz"), np.load(tmp_path / "y32.npz")
    assert low.files == full.files == ["logits", "aux"]
    for name in low.files:  # float16 rounds at 4.9e-4 of each value
        np.testing.assert_allclose(low[name], full[name], rtol=1e-2, atol=1e-2)
