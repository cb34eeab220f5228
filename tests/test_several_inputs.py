"""Networks with several inputs (`input ... as LABEL` lines): shapes, broadcasting merges, the NumPy
engine forward and backward, and every backend that reads a network's input."""

from __future__ import annotations

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.errors import DlcError
from dlc.graph import Network

TWO = """input 3@4x4 as a
input 3@1x4 as b
add a
conv 2@3x3
"""


def test_each_input_is_a_node_named_by_its_label_and_read_by_it():
    g = compile_spec(TWO)
    assert [(n.name, n.out_shape) for n in g.inputs] == [("a", (3, 4, 4)), ("b", (3, 1, 4))]
    add = g.node("add1")
    # the step after `input ... as b` continues from b; `add a` joins a: b's size-1 height repeats 4 times
    assert add.inputs == ["b", "a"] and add.out_shape == (3, 4, 4)
    assert g.output.out_shape == (2, 2, 2)




def test_sequence_and_tokens_inputs():
    g = compile_spec("input seq 6 of 4 as feats -> fc 4 as f\ninput seq 6 as ids -> embed 4 vocab=10 -> add f")
    assert [n.dtype for n in g.inputs] == ["float32", "int64"] and g.output.out_shape == (6, 4)


def _net(text: str) -> Network:
    from dlc.engine.params import init_params

    g = compile_spec(text)
    params, state = init_params(g, seed=0)
    return Network(g, params, state)


def test_forward_broadcasts_as_numpy_and_backward_sums_over_the_copies():
    from dlc.engine.run import backward, forward

    net = _net("input seq 2 of 3 as a\ninput seq 2 of 1 as b\nadd a\nmul b")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 1))
    y, tape = forward(net, {"a": a, "b": b}, keep=True)
    np.testing.assert_allclose(y, (a + b) * b)
    _, dx = backward(tape, np.ones_like(y))
    # d/da (a + b) b = b, repeated over the 3 columns; d/db = a + 2b summed over them
    np.testing.assert_allclose(dx["a"], np.broadcast_to(b, a.shape))
    np.testing.assert_allclose(dx["b"], (a + 2 * b).sum(axis=2, keepdims=True))


def test_forward_names_a_missing_or_misshapen_input():
    from dlc.engine.run import forward

    net = _net(TWO)
    with pytest.raises(DlcError, match="has 2 inputs: give a batch for each of a, b"):
        forward(net, np.zeros((1, 3, 4, 4)))
    with pytest.raises(DlcError, match="takes the inputs a, b; received a"):
        forward(net, {"a": np.zeros((1, 3, 4, 4))})
    with pytest.raises(DlcError, match=r"the batch of input `b` has shape \(1, 3, 4, 4\)"):
        forward(net, {"a": np.zeros((1, 3, 4, 4)), "b": np.zeros((1, 3, 4, 4))})


def test_gradcheck_checks_each_input():
    from dlc.engine.gradcheck import check_gradients

    layers = check_gradients(compile_spec(TWO + "mul( identity | gap -> fc 2 sigmoid )\n"), loss="mse")
    assert [r.layer for r in layers][:2] == ["a", "b"]
    assert all(t.worst < 1e-6 for r in layers for t in r.tensors)


def test_one_input_keeps_the_name_input_with_a_label():
    g = compile_spec("input 4 as v\nfc 4\nadd v")
    assert [n.name for n in g.inputs] == ["input"] and g.output.inputs == ["fc1", "input"]


def test_broadcast_needs_one_rank_and_size_one_axes():
    assert compile_spec("input seq 2 of 3 as a\ninput seq 1 of 3 as b\nmul a").output.out_shape == (2, 3)
    with pytest.raises(DlcError, match=r"add needs equal shapes, got 2x2 and 2x3"):
        compile_spec("input seq 2 of 3 as a\ninput seq 2 of 2 as b\nadd a")


def test_json_lists_every_input_and_the_table_shows_each_as_a_row(tmp_path):
    import json

    from click.testing import CliRunner

    from dlc.cli import main

    spec = tmp_path / "two.dlc"
    spec.write_text(TWO)
    r = CliRunner().invoke(main, ["params", str(spec), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["inputs"] == [{"name": "a", "shape": [3, 4, 4], "dtype": "float32"},
                                              {"name": "b", "shape": [3, 1, 4], "dtype": "float32"}]
    rows = CliRunner().invoke(main, ["summary", str(spec)]).output.splitlines()
    assert any(r.startswith("b ") and "input 3@1x4 as b" in r and "3@1x4" in r for r in rows)


BROADCAST = "input seq 2 of 3 as a\ninput seq 2 of 1 as b\nadd a\nmul b\n"


def _cli(*args):
    from click.testing import CliRunner

    from dlc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("engine", ["onnxruntime", "numpy"])
def test_infer_reads_one_array_per_input_name(tmp_path, engine):
    pytest.importorskip("onnxruntime")
    spec, onnx_file, feeds, out = (tmp_path / n for n in ("b.dlc", "b.onnx", "ab.npz", "y.npy"))
    spec.write_text(BROADCAST)
    r = _cli("export", spec, "-o", onnx_file)
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 2, 3)).astype(np.float32), rng.standard_normal((4, 2, 1)).astype(np.float32)
    np.savez(feeds, a=a, b=b)
    r = _cli("infer", onnx_file, "--input", feeds, "--engine", engine, "-o", out)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(out), (a + b) * b, rtol=1e-6)


def test_export_has_a_graph_input_per_input_and_onnxruntime_agrees_with_the_engine(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from dlc.engine.run import forward
    from dlc.onnx.export import check_export, to_onnx

    net = _net(TWO + "mul( identity | gap -> fc 2 sigmoid )\n")
    model = to_onnx(net)
    check_export(model, net)
    assert [(v.name, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
            for v in model.graph.input] == [("a", ["N", 3, 4, 4]), ("b", ["N", 3, 1, 4])]
    rng = np.random.default_rng(1)
    x = {"a": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
         "b": rng.standard_normal((2, 3, 1, 4)).astype(np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, x)[0], forward(net, x)[0], rtol=1e-4, atol=1e-5)


def test_import_writes_the_inputs_beyond_the_first_as_labels_a_merge_reads(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def model(b_batch):
        x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [b, 3]) for n, b in (("0", 2), ("1", b_batch))]
        y = helper.make_tensor_value_info("2", TensorProto.FLOAT, [2, 6])
        g = helper.make_graph([helper.make_node("Concat", ["0", "1"], ["2"], axis=1)], "g", x, [y])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    onnx.save(model(2), tmp_path / "two.onnx")
    r = _cli("import", tmp_path / "two.onnx", "-o", tmp_path / "two.dlc")
    assert r.exit_code == 0, r.output
    lines = [t.split("#")[0].strip() for t in (tmp_path / "two.dlc").read_text().splitlines()]
    # PyTorch's names `0` and `1` are no labels; the second input is read by the concat after the first
    assert [t for t in lines if t] == ["input 3 as in2", "input 3 as in1", "concat in2"]
    onnx.save(model(1), tmp_path / "bcast.onnx")
    r = _cli("import", tmp_path / "bcast.onnx", "-o", tmp_path / "bcast.dlc")
    # the second input's batch of 1 is no batch: ONNX broadcasts it, which a concat does not
    assert r.exit_code == 2 and "it reads the input 1, which has no batch axis" in r.output


def test_the_pytorch_code_generator_takes_one_tensor_per_input(tmp_path):
    torch = pytest.importorskip("torch")
    from dlc.engine.params import save_checkpoint
    from dlc.engine.run import forward
    from dlc.torch.trainer import network

    net = _net(TWO + "mul( identity | gap -> fc 2 sigmoid )\n")
    save_checkpoint(tmp_path / "w.npz", net.params, net.state)
    Net = network(net.graph)["Net"]
    assert Net.input_shapes == {"a": (3, 4, 4), "b": (3, 1, 4)}
    model = Net.load_dlc(tmp_path / "w.npz").eval()
    rng = np.random.default_rng(2)
    x = {"a": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
         "b": rng.standard_normal((2, 3, 1, 4)).astype(np.float32)}
    with torch.no_grad():
        y = model(torch.from_numpy(x["a"]), b=torch.from_numpy(x["b"])).numpy()
    np.testing.assert_allclose(y, forward(net, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_two_input_model_from_either_pytorch_exporter_imports_and_reproduces(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    import onnx
    from torch import nn

    import torch_models
    from dlc.onnx.importing.importer import input_labels

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, a, b):
            return torch.relu(self.fc(a)) + b

    torch.manual_seed(0)
    module = Two()
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    torch_models.export(module, tmp_path / "two.onnx", (a, b), dynamo=dynamo)
    r = _cli("import", tmp_path / "two.onnx", "-o", tmp_path / "two.dlc")
    assert r.exit_code == 0, r.output
    g = compile_spec((tmp_path / "two.dlc").read_text())
    assert sorted(n.out_shape for n in g.inputs) == [(3,), (4,)] and g.output.out_shape == (4,)
    names = input_labels([v.name for v in onnx.load(tmp_path / "two.onnx").graph.input])
    np.savez(tmp_path / "ab.npz", **dict(zip(names, (a.numpy(), b.numpy()))))
    r = _cli("infer", tmp_path / "two.dlc", "--weights", tmp_path / "two.npz", "--engine", "numpy",
             "--input", tmp_path / "ab.npz", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), module(a, b).numpy(), rtol=1e-5, atol=1e-6)


ELEMENTWISE = """input 3@4x4 as a
input 3@1x4 as b
maximum a
sub a
conv 2@3x3
pow( sigmoid | conv 2@1x1 )
div( identity | minimum( identity | conv 2@1x1 sigmoid ) )
"""


def test_the_elementwise_merges_compute_numpys_expressions():
    from dlc.engine.run import forward

    net = _net("input seq 2 of 3 as a\ninput seq 2 of 1 as b\nminimum a as n\nmaximum a\nsub n\n"
               "div( identity | sigmoid )\npow( sigmoid | identity )")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 1))
    n = np.minimum(b, a)
    s = np.maximum(n, a) - n
    d = s * (1 + np.exp(-s))  # s / sigmoid(s)
    np.testing.assert_allclose(forward(net, {"a": a, "b": b})[0], (1 / (1 + np.exp(-d))) ** d, rtol=1e-6)


def test_the_elementwise_merges_pass_gradcheck_and_agree_with_onnxruntime_and_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from dlc.engine.gradcheck import check_gradients
    from dlc.engine.params import save_checkpoint
    from dlc.engine.run import forward
    from dlc.onnx.export import check_export, to_onnx
    from dlc.torch.trainer import network

    graph = compile_spec(ELEMENTWISE)
    assert all(t.worst < 1e-6 for r in check_gradients(graph, loss="mse") for t in r.tensors)
    net = _net(ELEMENTWISE)
    model = to_onnx(net)
    check_export(model, net)
    assert {"Max", "Min", "Sub", "Div", "Pow"} <= {n.op_type for n in model.graph.node}
    rng = np.random.default_rng(4)
    x = {"a": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
         "b": rng.standard_normal((2, 3, 1, 4)).astype(np.float32)}
    want = forward(net, x)[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    save_checkpoint(tmp_path / "w.npz", net.params, net.state)
    module = network(net.graph)["Net"].load_dlc(tmp_path / "w.npz").eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x["a"]), torch.from_numpy(x["b"])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _two_input_model(nodes, shapes=((2, 3), (2, 3))):
    from onnx import TensorProto, helper

    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(("p", "q"), shapes)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", x, [y]), opset_imports=[helper.make_opsetid("", 13)])


def test_import_writes_a_commutative_merge_of_the_later_input_first_by_label(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    # Max(q, Relu(p)): the merge's first operand is the later input, so the spec reads it by label last
    model = _two_input_model([helper.make_node("Relu", ["p"], ["r"]), helper.make_node("Max", ["q", "r"], ["y"])])
    onnx.save(model, tmp_path / "m.onnx")
    r = _cli("import", tmp_path / "m.onnx", "-o", tmp_path / "m.dlc")
    assert r.exit_code == 0, r.output
    lines = [t.split("#")[0].strip() for t in (tmp_path / "m.dlc").read_text().splitlines()]
    assert [t for t in lines if t] == ["input 3 as q", "input 3 as p", "relu", "maximum q"]
    rng = np.random.default_rng(5)
    p, q = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    np.savez(tmp_path / "pq.npz", p=p, q=q)
    r = _cli("infer", tmp_path / "m.dlc", "--weights", tmp_path / "m.npz", "--engine", "numpy", "--input",
             tmp_path / "pq.npz", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.maximum(q, np.maximum(p, 0)))


def test_import_writes_a_later_inputs_layers_on_its_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from dlc.engine.run import forward
    from dlc.onnx.importing.importer import import_onnx

    # Sub(p, Relu(q)): the later input q feeds a relu before the merge, written on q's line (as BERT's token
    # types and their embedding are)
    model = _two_input_model([helper.make_node("Relu", ["q"], ["r"]), helper.make_node("Sub", ["p", "r"], ["y"])])
    onnx.save(model, tmp_path / "s.onnx")
    net, _ = import_onnx(str(tmp_path / "s.onnx"))
    assert "input 3 as q -> relu as q_out" in net.graph.source and "sub q_out" in net.graph.source
    p, q = np.array([[1.0, -2.0, 3.0]] * 2), np.array([[-1.0, 2.0, 0.5]] * 2)
    np.testing.assert_allclose(forward(net, {"p": p, "q": q})[0], p - np.maximum(q, 0))


def test_import_puts_first_the_input_that_opens_a_merges_first_branch(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from dlc.engine.run import forward
    from dlc.onnx.importing.importer import import_onnx

    # Sub(Relu(q), p): q opens the merge's first branch, which a spec writes only from the main line, so q's
    # chain becomes the main line and p is read by label: relu(q) - p
    model = _two_input_model([helper.make_node("Relu", ["q"], ["r"]), helper.make_node("Sub", ["r", "p"], ["y"])])
    onnx.save(model, tmp_path / "s.onnx")
    net, _ = import_onnx(str(tmp_path / "s.onnx"))
    assert "sub p" in net.graph.source
    p, q = np.array([[1.0, -2.0, 3.0]] * 2), np.array([[-1.0, 2.0, 0.5]] * 2)
    np.testing.assert_allclose(forward(net, {"p": p, "q": q})[0], np.maximum(q, 0) - p)


# a decoder layer reading a padded encoder output (docs/language.md, "Sequences and transformers")
CROSS = """input seq 6 of 12 as encoded
input seq 6 as pad
input seq 4 of 8 as text
attention 2 causal
add( layernorm -> attention 2 from=encoded mask=pad kv=1 | identity )
attention 4 mask=text_pad from=encoded
"""
CROSS_FEEDS = {"pad": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}


def _cross_feeds(graph, dtype=np.float32) -> dict:
    rng = np.random.default_rng(6)
    return {n.name: CROSS_FEEDS[n.name] if n.dtype == "int64" else rng.standard_normal((2, *n.out_shape)).astype(dtype)
            for n in graph.inputs}


def test_cross_attention_with_a_padding_mask_on_every_engine(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from dlc.engine.gradcheck import check_gradients
    from dlc.engine.params import init_params
    from dlc.engine.run import forward
    from dlc.onnx.export import check_export, to_onnx
    from dlc.torch.trainer import network

    spec = CROSS.replace("mask=text_pad ", "mask=pad ")
    graph = compile_spec(spec)
    assert all(t.worst < 1e-6 for r in check_gradients(graph, loss="mse") for t in r.tensors)
    # the padded encoder steps change nothing: the same outputs with other values there
    net = _net(spec)
    x = _cross_feeds(graph)
    moved = dict(x, encoded=x["encoded"].copy())
    moved["encoded"][0, 4:] += 10
    want = forward(net, x)[0]
    np.testing.assert_allclose(forward(net, moved)[0][0], want[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(forward(net, dict(x, pad=np.ones_like(x["pad"])))[0][0], want[0])
    model = to_onnx(net)
    check_export(model, net)
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input] == [
        ("encoded", 1), ("pad", 7), ("text", 1)]  # float, int64, float
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # torch in float64 against the NumPy engine in float64
    params, state = init_params(graph, seed=1, dtype=np.float64)
    module = network(graph)["Net"]().double()
    module.from_dlc({k: torch.from_numpy(v) for k, v in {**params, **state}.items()})
    x64 = _cross_feeds(graph, np.float64)
    with torch.no_grad():
        got = module.eval()(torch.from_numpy(x64["encoded"]), pad=torch.from_numpy(x64["pad"]),
                            text=torch.from_numpy(x64["text"])).numpy()
    np.testing.assert_allclose(got, forward(Network(graph, params, state), x64)[0], rtol=1e-10, atol=1e-12)


def test_a_mask_or_source_label_that_names_no_step_is_located():
    with pytest.raises(DlcError) as e:
        compile_spec(CROSS)
    assert e.value.pos.line == 6 and "text_pad" in e.value.message


def test_an_inputs_label_is_seen_inside_a_block_body_and_a_bodys_labels_are_not_outside():
    spec = ("input seq 4 as pad\ninput seq 4 of 8 as words\n"
            "block layer(h) {\n  add( attention h mask=pad | identity ) as out\n}\nlayer(2) x2\n")
    g = compile_spec(spec)
    assert [n.inputs for n in g.nodes if n.kind == "attention"] == [["words", "pad"], ["layer1.add1", "pad"]]
    with pytest.raises(DlcError, match="unknown label `out`"):
        compile_spec(spec + "add out\n")
