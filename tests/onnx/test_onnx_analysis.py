"""`dlc shapes|params|flops|summary|check MODEL.onnx`: dlc's figures for ONNX models.

dlc's own exports must give exactly their spec's figures; hand-built models pin the operator rules,
symbolic dimensions, several inputs, external data and the operators dlc cannot count.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dlc.analysis import analyse
from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import init_params, tensors
from dlc.graph import Network
from dlc.layers import KINDS
from dlc.onnx import export
from dlc.onnx.analysis import analyse_onnx
from dlc.onnx.model import from_model
from dlc.zoo import zoo_names, zoo_path

FIGURES = ("params", "non_trainable", "macs", "flops", "activations")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def weightless_export(graph, monkeypatch, opset: int | None = None) -> onnx.ModelProto:
    """dlc's export of `graph` with initializers that carry dims but no values: the analysis reads only
    dims, and VGG-16's 138 M weights would take seconds to serialise for nothing."""
    real = numpy_helper.from_array

    def dims_only(arr, name=None):
        if arr.ndim and not any(arr.strides):  # the zero-stride views below
            return onnx.TensorProto(name=name, dims=arr.shape, data_type=TensorProto.FLOAT)
        return real(arr, name)

    monkeypatch.setattr(numpy_helper, "from_array", dims_only)
    weights = {t.full_name: np.broadcast_to(np.float32(0), t.shape) for t in tensors(graph)}
    return export.to_onnx(Network(graph, weights, {}), opset=opset)


# The kinds the zoo leaves out, and the options that change what a kind's export writes or costs
# (stride 2 with pad=same, ceil, no bias, two directions, a causal mask, a tied output layer): each
# operator dlc's export writes must cost in ONNX (dlc.onnx.count.COUNT) what its kind's rule says
# (dlc.layers). A new kind gets a line here (docs/extending.md).
KIND_EXAMPLES = {
    "groupnorm": "input 4@9x9 -> groupnorm 2 -> conv 6@3x3 -> groupnorm 3 silu -> gap -> fc 2",
    "positions and cross-attention": "input seq 6 of 12 as encoded\ninput seq 6 as pad\ninput seq 4 of 8 as text\n"
                                     "posembed 10 -> posembed fixed -> attention 2 from=encoded mask=pad kv=1 "
                                     "-> attention 2 causal -> fc 3",
    "activations": "input 3@9x9 -> conv 4@3x3/2 pad=same elu -> conv 4@3x3 pad=same bias=off selu -> upsample 2 "
                   "-> leaky -> noise 0.1 -> identity -> gmp -> fc 3",
    "recurrent": "input seq 5 of 7 -> gru 4 bidirectional sequences -> rnn 3 sequences -> lstm 6 bidirectional "
                 "-> fc 2",
    "tokens": "input seq 8 -> embed 16 vocab=11 as tok -> posembed -> layernorm -> attention 2 causal bias=off "
              "-> fc 11 tied=tok softmax",
    "llama": "input seq 8 -> embed 16 vocab=11 -> rmsnorm -> mul( fc 24 silu bias=off | fc 24 bias=off ) "
             "-> fc 16 bias=off -> rmsnorm eps=1e-6 -> fc 11 bias=off",
    "squeeze-excite": "input 3@8x8 -> conv 4@3x3 pad=1 swish as feat -> gap -> fc 2 relu -> fc 4 sigmoid -> mul feat "
                      "-> gap -> fc 3",
    "mixture": "input seq 5 of 6 -> experts 4 top=2 { fc 8 relu -> fc 6 } -> seqpool -> experts 3 top=1 { fc 6 } "
               "-> fc 2",
    "llama attention": "input seq 8 -> embed 16 vocab=11 -> attention 4 kv=2 rope=500000 causal window=4 "
                       "bias=off -> attention 2 kv=1 bias=on -> fc 11",
    "math": "input 4@6x6 -> conv 8@3x3 prelu channels -> glu -> softplus -> clip min=-1 max=1 -> softsign "
            "-> abs -> sqrt -> neg -> exp -> prelu -> shift channels -> softmax axis=-1 -> reduce sum axis=1 keep "
            "-> reduce axis=1 -> shift -> logsoftmax",
    "windows": "input 3@11x11 -> maxpool 3/2 pad=same ceil -> avgpool 3/2 ceil -> dwconv 3x3 mult=2 "
               "-> upconv 2@3x3/2 pad=1 -> lrn 3",
    # padding and resampling kinds (issue 28): a CycleGAN generator's ends
    "resampling": "input 3@8x8 -> pad 3 mode=reflect -> conv 4@7x7 instancenorm relu -> pad 0 bottom=1 right=2 value=1 "
                  "-> pad 1 mode=replicate -> conv 2@3x3 -> upconv 3@3x3/2 pad=1 outpad=1 -> conv 8@1x1 -> pixelshuffle 2 -> maxpool 3/2 pad=1x0 dil=2 -> tile 2@2x1 -> slice 2 start=1 -> slice 3 start=-3 axis=height -> reshape 6x18",
    # Swin: windows of a token grid, shifted and not, the bias table read as parameters; patchmerge
    "swin": "input 3@16x16 -> conv 8@2x2/2 -> tokens -> layernorm -> attention 2 window=4x4 shift=2 -> patchmerge "
            "-> layernorm -> fc 16 bias=off -> attention 2 window=2x2 -> seqpool -> fc 3",
    # today's vision networks (issue 21): MobileNetV3's hard activations and squeeze-and-excite with 1x1 convs,
    # ConvNeXt's channel layernorm, layer scale and stochastic depth
    "vision": "input 4@8x8 -> conv 8@3x3 pad=1 hardswish -> mul( identity | gap keep -> conv 2@1x1 relu -> conv 8@1x1 hardsigmoid ) -> layernorm channels eps=1e-6 -> add( dwconv 3x3 pad=1 -> scale init=0.5 -> droppath 0.1 | identity ) -> gmp keep -> conv 3@1x1 -> gap -> layernorm -> fc 3",
    # several inputs and the elementwise merges (issue 22), broadcasting a size-1 height
    "several inputs": "input 3@4x4 as a\ninput 3@1x4 as b\nmaximum a\nsub a\nconv 2@3x3\npow( sigmoid | conv 2@1x1 )\n"
                      "div( identity | minimum( identity | conv 2@1x1 sigmoid ) ) -> add( identity | identity )",
    # inputs without a batch axis, matmul by one, and several outputs
    "shared inputs": "input 3x4 shared as w\ninput 1x4 shared as s\ninput seq 2 of 3 as v -> matmul w -> mul s as h\n"
                     "fc 2 as y\noutput h, y",
}
EXPORTED = {**{name: zoo_path(name) for name in zoo_names()}, **KIND_EXAMPLES}


def spec_text(source) -> str:
    return source.read_text() if isinstance(source, Path) else source


def test_the_exports_checked_below_write_every_kind():
    used = {n.kind for source in EXPORTED.values() for n in compile_spec(spec_text(source)).nodes}
    missing = sorted(set(KINDS) - used)
    assert not missing, (f"no spec in EXPORTED uses the kind(s) {', '.join(missing)}: add one to KIND_EXAMPLES "
                         "so that their ONNX operators' counted costs are checked against the kind's rules")


def exported_totals(spec):
    """The spec's totals as its ONNX export gives them: the same, but that each activation takes its own
    tensor's type, and the token ids are int64 there (8 bytes where the spec prices every value in its
    dtype's 4)."""
    t = spec.totals
    ids = sum(s.activations for s in spec.nodes if s.node.dtype == "int64")
    if not ids:
        return replace(t, columns_bytes=None)
    acts, train = t.activation_bytes + 4 * ids, t.train_bytes + t.batch * 4 * ids
    formula = t.train_formula.replace(f"activations {t.activation_bytes} = {t.train_bytes}",
                                      f"activations {acts} = {train}")
    return replace(t, columns_bytes=None, activation_bytes=acts, train_bytes=train, train_formula=formula,
                   act_dtype="mixed")


@pytest.mark.parametrize("name", EXPORTED)
def test_a_dlc_export_gives_exactly_its_specs_figures(name, monkeypatch):
    graph = compile_spec(spec_text(EXPORTED[name]), file=f"{name}.dlc")
    spec = analyse(graph)
    model, _ = analyse_onnx(from_model(weightless_export(graph, monkeypatch), f"{name}.onnx"))
    # every figure but the NumPy engine's workspace, which belongs to a spec the engine runs
    assert model.totals == exported_totals(spec)
    got = {s.node.name: s for s in model.nodes}
    assert not [s.node.name for s in model.nodes if s.uncounted]  # every operator the export writes has a rule
    # the layers in the spec's order; a model's inputs all come first, where a spec's later input may have
    # steps before the next (BERT's token types and their embedding)
    inputs = {n.name for n in graph.inputs}
    assert set(got) == {s.node.name for s in spec.nodes}
    assert [n for n in got if n not in inputs] == [s.node.name for s in spec.nodes if s.node.name not in inputs]
    for s in spec.nodes:
        o = got[s.node.name]
        assert [getattr(o, f) for f in FIGURES] == [getattr(s, f) for f in FIGURES], s.node.name
        assert (tuple(o.node.out_shape), o.rf, o.node.row) == (s.node.out_shape, s.rf, s.node.row), s.node.name


def test_rmsnorm_below_opset_23_counts_as_the_fused_operator():
    # Mul (x²), ReduceMean, Add, Sqrt, Div, Mul (gamma): 4 per element and 2 per step, rmsnorm's rule
    graph = compile_spec("input seq 6 of 8 -> rmsnorm -> fc 4")
    for opset in (17, 23):
        model, _ = analyse_onnx(from_model(export.to_onnx(Network(graph, init_params(graph)[0], {}), opset=opset), "m.onnx"))
        assert [s.flops for s in model.nodes][1] == 4 * 6 * 8 + 2 * 6, opset


def test_rope_below_opset_23_counts_as_rotary_embedding(monkeypatch):
    # the cos/sin form (Mul, Split, Concat, Mul, Add) costs what RotaryEmbedding and the kind's rule do
    graph = compile_spec(KIND_EXAMPLES["llama attention"], file="llama.dlc")
    spec = analyse(graph)
    model, _ = analyse_onnx(from_model(weightless_export(graph, monkeypatch, opset=13), "llama.onnx"))
    assert model.totals == exported_totals(spec)
    assert [(o.macs, o.flops) for o in model.nodes] == [(s.macs, s.flops) for s in spec.nodes]


def test_an_operator_counted_unlike_its_kind_fails_the_check(monkeypatch):
    # the check checks itself: an Elu costed at 2 FLOPs an element, where elu's rule says 1
    from dlc.onnx import count
    monkeypatch.setitem(count.COUNT, "Elu", count.per_element(2))
    with pytest.raises(AssertionError):
        test_a_dlc_export_gives_exactly_its_specs_figures("activations", monkeypatch)


def test_an_exported_signal_net_shows_its_shapes_as_c_at_l(tmp_path):
    # issue 28: the rank-3 tensors a Conv or pool reads or writes are signals (C@L), not sequences (TxD)
    path = tmp_path / "m5.onnx"
    assert run("export", "m5_audio", "-o", path).exit_code == 0
    table = run("shapes", path).stdout
    assert "1@8000" in table and "32@496" in table and "64@1" in table and "1x8000" not in table
    assert "inputs: input 1@8000" in table
    spec = run("shapes", "m5_audio").stdout
    assert [line.split()[-1] for line in table.splitlines()[3:8]] == [line.split()[-1] for line in spec.splitlines()[3:8]]


def test_the_cli_reads_an_exported_file_like_its_spec(tmp_path):
    path = tmp_path / "net.onnx"
    text = "input 3@32x32\nconv 8@3x3 bn relu\nmaxpool 2/2\nconv 16@3x3/2 relu x2\ngap\nfc 10 softmax\n"
    assert run("export", "-e", text, "-o", path).exit_code == 0
    spec = json.loads(run("summary", "-e", text, "--json").stdout)
    onnx_doc = json.loads(run("summary", path, "--json").stdout)
    assert onnx_doc["schema"] == "dlc.analysis/1"
    for key in ("params", "non_trainable", "macs", "flops", "activations", "train_bytes"):
        assert onnx_doc["totals"][key] == spec["totals"][key]
    assert [r["row"] for r in onnx_doc["layers"]] == [r["row"] for r in spec["layers"]]
    table = run("summary", path).stdout
    assert "conv 8@3x3 bn relu" in table and "conv 16@3x3/2 relu x2" in table


def model(nodes, inputs, outputs, initializers=(), opset=18) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def save(m: onnx.ModelProto, path, **kwargs):
    onnx.save_model(m, str(path), **kwargs)
    return path


def value(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def weight(name, *dims):
    return numpy_helper.from_array(np.ones(dims, np.float32), name)


def conv_net(c_in="C", h="H") -> onnx.ModelProto:
    """N@C_in x H x H -> Conv 4@3x3 (bias) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 5."""
    return model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                  helper.make_node("Flatten", ["p"], ["f"]),
                  helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)],
                 [value("x", ["N", c_in, h, h])], [value("y", ["N", 5])],
                 [weight("w", 4, 3, 3, 3), weight("b", 4), weight("fw", 5, 4), weight("fb", 5)])


def test_symbolic_dimensions_need_shape_and_the_batch_becomes_one(tmp_path):
    path = save(conv_net(), tmp_path / "free.onnx")
    r = run("summary", path)
    assert r.exit_code == 2 and "free: C, H" in r.stderr and "--shape" in r.stderr and "Traceback" not in r.stderr
    doc = json.loads(run("flops", path, "--shape", "3@8x8", "--json").stdout)
    # conv 4 x 8 x 8 outputs x 3*3*3 = 6,912 MACs; Gemm 4 x 5 = 20; per sample whatever the file's N
    assert doc["totals"]["macs"] == 6_912 + 20
    # 2 MACs + bias per conv output, relu 256, pool 256, 2*20 + 5 for the Gemm
    assert doc["totals"]["flops"] == 2 * 6_912 + 256 + 256 + 256 + 2 * 20 + 5
    assert [layer["out_shape"] for layer in doc["layers"]] == [[3, 8, 8], [4, 8, 8], [4, 8, 8], [4, 1, 1], [4], [5]]
    assert doc["totals"]["params"] == 4 * 27 + 4 + 20 + 5
    assert run("flops", path, "--shape", "x=3@8x8", "--batch", "4", "--json").exit_code == 0
    bad = run("flops", path, "--shape", "3x8")
    assert bad.exit_code == 2 and "3 dimensions" in bad.stderr
    assert run("flops", path, "--shape", "y=3@8x8").exit_code == 2
    assert run("flops", path, "--shape", "3@8@8").exit_code == 2


def test_rows_fold_bias_and_activations_and_all_shows_every_layer(tmp_path):
    path = save(conv_net(3, 8), tmp_path / "static.onnx")
    folded, every = run("shapes", path).stdout, run("shapes", path, "--all").stdout
    assert "Conv 4@3x3 Relu" in folded and len(every.splitlines()) == len(folded.splitlines()) + 1


def test_several_inputs_matmul_of_two_activations_and_shared_weights(tmp_path):
    # q (N, T, 6) @ k^T (N, 6, T) with T free: 2 inputs; the weight w is read by two MatMuls
    m = model([helper.make_node("MatMul", ["a", "w"], ["q"]), helper.make_node("MatMul", ["b", "w"], ["k"]),
               helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
               helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["y"])],
              [value("a", ["N", "T", 4]), value("b", ["N", "T", 4])], [value("y", ["N", "T", "T"])],
              [weight("w", 4, 6)])
    path = save(m, tmp_path / "two.onnx")
    assert "--shape NAME=SHAPE" in run("flops", path).stderr
    assert run("flops", path, "--shape", "5x4").exit_code == 2  # which input?
    doc = json.loads(run("summary", path, "--shape", "a=5x4", "--shape", "b=5x4", "--json").stdout)
    t = doc["totals"]
    assert t["params"] == 24  # counted once
    assert t["macs"] == 2 * (5 * 4 * 6) + 5 * 5 * 6
    assert t["flops"] == 2 * t["macs"] + 3 * 25
    assert doc["onnx"]["inputs"] == ["a", "b"] and doc["onnx"]["outputs"] == ["y"]
    assert "inputs: a 5x4, b 5x4" in run("summary", path, "--shape", "a=5x4", "--shape", "b=5x4").stdout


def test_an_operator_without_a_rule_is_shown_and_warned_never_a_silent_zero(tmp_path):
    m = model([helper.make_node("Relu", ["x"], ["r"]),
               helper.make_node("Hardmax", ["r"], ["h"]),
               helper.make_node("Mul", ["h", "x"], ["y"])],
              [value("x", ["N", 10])], [value("y", ["N", 10])])
    path = save(m, tmp_path / "odd.onnx")
    r = run("flops", path)
    assert r.exit_code == 0
    assert "warning: 1 Hardmax node not counted (Hardmax has no counting rule" in r.stderr
    row = next(line for line in r.stdout.splitlines() if "Hardmax" in line)
    assert "not counted" in row
    assert "not counted: 1 of 3 nodes (Hardmax)" in r.stdout
    doc = json.loads(run("flops", path, "--json").stdout)
    assert doc["totals"]["not_counted"] == 1 and doc["totals"]["flops"] == 20
    assert doc["onnx"]["not_counted"][0]["op"] == "Hardmax"


def test_external_data_is_found_beside_the_model(tmp_path, monkeypatch):
    path = save(conv_net(3, 8), tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="ext.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path.parent)
    doc = json.loads(run("params", path, "--json").stdout)
    assert doc["totals"]["params"] == 4 * 27 + 4 + 20 + 5


def test_batch_norm_statistics_are_non_trainable_and_rank0_initializers_are_constants(tmp_path):
    m = model([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"]),
               helper.make_node("Mul", ["n", "s"], ["y"])],
              [value("x", ["N", 3, 4, 4])], [value("y", ["N", 3, 4, 4])],
              [weight("g", 3), weight("b", 3), weight("m", 3), weight("v", 3),
               numpy_helper.from_array(np.float32(2.0), "s")])
    doc = json.loads(run("summary", save(m, tmp_path / "bn.onnx"), "--json").stdout)
    assert (doc["totals"]["params"], doc["totals"]["non_trainable"]) == (6, 6)
    assert doc["totals"]["flops"] == 2 * 48 + 48


def test_shape_inference_that_rejects_the_graph_warns_and_counts_what_it_can(tmp_path):
    # Add of (N, 4) and (N, 5) cannot broadcast: strict inference fails, the rest is inferred leniently
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["y"])],
              [value("x", ["N", 4]), value("z", ["N", 5])], [value("y", ["N", 4])])
    r = run("flops", save(m, tmp_path / "bad.onnx"), "--json")
    assert r.exit_code == 0, r.output
    assert "shape inference stopped early" in r.stderr
    assert json.loads(r.stdout)["totals"]["flops"] == 4


def test_bad_files_exit_2(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    for path in (junk, tmp_path / "missing.onnx"):
        r = run("summary", path)
        assert r.exit_code == 2 and "Traceback" not in r.stderr


def test_shape_goes_with_onnx_models_only():
    r = run("shapes", "-e", "input 4 -> fc 2", "--shape", "4")
    assert r.exit_code == 2 and "--shape goes with an .onnx model" in r.stderr


def test_check_takes_onnx_models(tmp_path):
    r = run("check", save(conv_net(3, 8), tmp_path / "ok.onnx"))
    assert r.exit_code == 0 and "ok, 6 nodes, 137 params" in r.stdout


def test_an_operator_shape_inference_does_not_know_leaves_its_node_uncounted(tmp_path):
    """A contrib op: no rule for it, and no shape after it (the Sigmoid); the Relu before still counts."""
    m = model([helper.make_node("Relu", ["x"], ["r"]),
               helper.make_node("FusedThing", ["r"], ["f"], domain="com.example"),
               helper.make_node("Sigmoid", ["f"], ["y"])],
              [value("x", ["N", 10])], [value("y", ["N", 10])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    r = run("flops", save(m, tmp_path / "custom.onnx"), "--json")
    assert r.exit_code == 0, r.output
    assert "1 FusedThing node not counted" in r.stderr and "1 Sigmoid node not counted" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["totals"]["flops"] == 10  # the Relu; FusedThing has no rule, Sigmoid no shape
    assert {u["op"] for u in doc["onnx"]["not_counted"]} == {"FusedThing", "Sigmoid"}


def gemm_net(w_type, b_type) -> onnx.ModelProto:
    """x[N, 4] -> Gemm 3 -> y, its weight of 12 values and bias of 3 stored in the given numpy types."""
    act = TensorProto.FLOAT16 if w_type == np.float16 else TensorProto.FLOAT
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [value("x", ["N", 4], act)], [value("y", ["N", 3], act)],
                 [numpy_helper.from_array(np.ones((3, 4), w_type), "w"),
                  numpy_helper.from_array(np.ones(3, b_type), "b")])


def test_a_float16_model_is_reported_in_its_stored_types(tmp_path):
    # The issue: a float16 file was reported as float32. 15 params x 2 bytes = 30; activations: the
    # input's 4 and the output's 3 values, float16 like the weights, 14 bytes.
    path = save(gemm_net(np.float16, np.float16), tmp_path / "half.onnx")
    doc = json.loads(run("summary", path, "--json").stdout)
    assert doc["dtype"] == {"weights": "fp16", "activations": "fp16",
                            "bytes_per_value": {"weights": 2, "activations": 2}}
    assert (doc["totals"]["param_bytes"], doc["totals"]["activation_bytes"]) == (30, 14)
    text = run("summary", path).stdout
    assert "= 15 (30 B as fp16)" in text and "(7 fp16 values)" in text
    # --dtype overrides the stored type: 15 x 4 bytes
    assert json.loads(run("params", path, "--json", "--dtype", "fp32").stdout)["totals"]["param_bytes"] == 60


def test_mixed_stored_types_are_summed_per_tensor(tmp_path):
    # weight 12 x 2 bytes + bias 3 x 4 bytes = 36; activations in their tensors' float16, 7 x 2
    path = save(gemm_net(np.float16, np.float32), tmp_path / "mixed.onnx")
    doc = json.loads(run("summary", path, "--json").stdout)
    assert doc["dtype"]["weights"] == "mixed" and doc["dtype"]["bytes_per_value"]["weights"] is None
    assert (doc["totals"]["param_bytes"], doc["totals"]["activation_bytes"]) == (36, 14)
    # sgd: parameters + gradients, each as stored
    assert doc["totals"]["train_bytes"]["bytes"] == 36 + 36 + 14
    assert "(36 B as stored types)" in run("params", path).stdout


def contrib_model(op_type: str) -> onnx.ModelProto:
    """x (N, 16) -> MatMul 32 -> a com.microsoft operator -> MatMul 8 -> Relu -> y."""
    m = model([helper.make_node("MatMul", ["x", "w1"], ["h"]),
               helper.make_node(op_type, ["h"], ["g"], domain="com.microsoft"),
               helper.make_node("MatMul", ["g", "w2"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
              [value("x", ["N", 16])], [value("y", None)], [weight("w1", 16, 32), weight("w2", 32, 8)], opset=17)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def test_shapes_go_on_past_a_contrib_operator_by_dlcs_rules(tmp_path):
    # ONNX's inference stops at onnxruntime's fused Gelu; dlc's rule (its input's shape) lets it go on, so
    # only the Gelu, which has no counting rule, is left out
    r = run("summary", save(contrib_model("Gelu"), tmp_path / "gelu.onnx"), "--json")
    assert json.loads(r.stdout)["totals"]["macs"] == 16 * 32 + 32 * 8
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "1 Gelu node not counted" in warnings[0], r.stderr


def test_an_operator_without_a_shape_rule_still_stops_inference_and_says_so(tmp_path):
    r = run("summary", save(contrib_model("NoSuchOp"), tmp_path / "unknown.onnx"))
    assert r.exit_code == 0 and "gives no shape for g" in r.stderr and "omitted" not in r.stderr


@pytest.mark.parametrize("node, ins, out", [
    # 4-bit weights of a 768 -> 3072 projection, on (batch 1, 7 tokens, 768)
    (helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=768, N=3072, bits=4,
                      block_size=32), [(1, 7, 768), (3072, 24, 16), (3072 * 24,)], (1, 7, 3072)),
    # (2, 1, 5, 3)ᵀ (the last two axes) times (4, 3, 6), the batch axes broadcast
    (helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", transA=1),
     [(2, 1, 3, 5), (4, 3, 6)], (2, 4, 5, 6)),
    (helper.make_node("SkipLayerNormalization", ["a", "b", "g"], ["y"], domain="com.microsoft"),
     [(1, 7, 768), (1, 7, 768), (768,)], (1, 7, 768)),
])
def test_dlcs_shape_rules_for_contrib_operators(node, ins, out):
    from dlc.onnx.model import attributes
    from dlc.onnx.shapes import rule_shapes

    f32 = onnx.TensorProto.FLOAT
    assert rule_shapes(node, attributes(node), [(f32, s) for s in ins])[0] == (f32, out)
