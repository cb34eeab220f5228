"""Every network dlc can write exports to valid ONNX that onnxruntime runs to the NumPy engine's numbers.

The reference for each comparison is the NumPy engine's inference forward with the same weights; the
error is max |onnxruntime - numpy| / max |numpy| over the output (an output-wide relative error, so
values near zero do not blow it up), and must stay below 1e-4. Weights are not the trivial initial ones:
biases, bn's shift and scale and its running statistics are random, so a lowering that dropped or
misread any of them would fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import test_dsl_examples as dsl

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import activations
from dlc.errors import DlcError
from dlc.graph import Network
from dlc.layers.dense import token_vocab
from dlc.onnx.export import check_export, spec_of, to_onnx, weights_of
from dlc.onnx.lower import lowest_opset
from dlc.zoo import zoo_path
from zoo_weights import zoo_names_with_weights

TOL = 1e-4
BIG = 50_000_000  # params above which a zoo network runs at batch 1

# The examples of the language contract, verbatim, as the language tests pin them. Those that compile
# node for node to a zoo network are exported and compared once, by the zoo test (ZOO_TWINS checks
# the claim); the others here.
DSL_EXAMPLES = {"inception": dsl.INCEPTION, "mobilenet": dsl.MOBILENET, "unet": dsl.UNET}
ZOO_TWINS = {"lenet5": dsl.LENET5, "alexnet": dsl.ALEXNET, "vgg16": dsl.VGG16, "resnet50": dsl.RESNET50,
             "lstm_text": dsl.LSTM_TEXT, "xor": dsl.XOR,
             "gpt2_small": dsl.GPT2, "vit_b16": dsl.VIT, "swin_t": dsl.SWIN_T}


def exercised_weights(graph, seed=0):
    """Initial weights with every constant-initialised tensor (biases, bn) made random as well."""
    params, state = init_params(graph, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, a in params.items():
        if name.endswith((".b", ".B", ".beta", ".bq", ".bk", ".bv", ".bo", ".cls")):
            params[name] = rng.normal(0, 0.1, a.shape).astype(np.float32)
        elif name.endswith(".gamma"):
            params[name] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    for name, a in state.items():
        if name.endswith(".mean"):
            state[name] = rng.normal(0, 0.2, a.shape).astype(np.float32)
        elif name.endswith(".var"):
            state[name] = rng.uniform(0.5, 2.0, a.shape).astype(np.float32)
    return params, state


def sample_batch(graph, n, seed=0) -> dict:
    """A batch of each input by name: token ids below their vocabulary (a mask's below 2), else N(0, 1)."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.integers(0, token_vocab(graph, i.name), (n, *i.out_shape)) if i.dtype == "int64"
            else rng.standard_normal((n, *i.out_shape)).astype(np.float32) for i in graph.inputs}


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The model with an intermediate tensor as an extra graph output."""
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def assert_matches_engine(text: str, batch: int = 2, opset: int | None = None, file: str = "<test>"):
    """Export, check, run in onnxruntime and in the NumPy engine; compare the output and, before a final
    softmax or sigmoid that could saturate and hide differences, its input too."""
    graph = compile_spec(text, file=file)
    params, state = exercised_weights(graph)
    model = to_onnx(Network(graph, params, state), opset=opset)
    check_export(model, Network(graph, params, state))
    x = sample_batch(graph, batch)
    # every output, by its ONNX name (its label where the spec names several) and its node's
    pairs = list(zip(graph.output_names, (node.name for node in graph.outputs)))
    if graph.output.kind in ("softmax", "sigmoid"):
        pairs.append((graph.output.inputs[0],) * 2)
        model = with_output(model, graph.output.inputs[0])
    # one session and one run give every compared tensor
    got = session(model).run([onnx_name for onnx_name, _ in pairs], x)
    feeds = x if len(x) > 1 else x[graph.input.name]
    names = {name for _, name in pairs}
    wanted = {node.name: y for node, y in activations(Network(graph, params, state), feeds) if node.name in names}
    for (_, name), y in zip(pairs, got):
        want = wanted[name]
        assert y.shape == want.shape == (batch, *graph.node(name).out_shape)
        err = relative_error(y, want)
        assert err < TOL, f"{name}: onnxruntime and the NumPy engine differ by {err:.2e} (relative)"
    return graph, model


def structure(graph) -> list:
    return [(n.name, n.kind, sorted(n.attrs.items(), key=str), n.inputs, n.out_shape, n.dtype) for n in graph.nodes]


def batch_for(graph) -> int:
    return 1 if analyse(graph).totals.params > BIG else 2


@pytest.mark.parametrize("name", sorted(DSL_EXAMPLES))
def test_dsl_example_exports_and_matches_numpy(name):
    assert_matches_engine(DSL_EXAMPLES[name], batch=batch_for(compile_spec(DSL_EXAMPLES[name])))


@pytest.mark.parametrize("name", sorted(ZOO_TWINS))
def test_dsl_example_left_to_the_zoo_test_is_that_zoo_network(name, zoo_graph):
    assert structure(compile_spec(ZOO_TWINS[name])) == structure(zoo_graph(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names_with_weights())
def test_zoo_spec_exports_and_matches_numpy(name, zoo_graph):
    path = zoo_path(name)
    assert_matches_engine(path.read_text(), batch=batch_for(zoo_graph(name)), file=str(path))


# Per-kind lowering, mode by mode: (spec, what the mode exercises).
KIND_CASES = {
    "conv": "input 3@9x9 -> conv 4@3x3",
    "conv stride 2 pad=same, odd input: pads (1,1,2,2)": "input 3@9x9 -> conv 4@4x4/2 pad=same",
    "conv pad=same with an odd kernel on an even input": "input 3@8x7 -> conv 4@3x3/2 pad=same",
    "conv rectangular kernel": "input 3@9x9 -> conv 4@3x5 pad=1",
    "conv dilation 2": "input 3@11x11 -> conv 4@3x3 dil=2 pad=2",
    "conv groups=2 without bias": "input 4@7x7 -> conv 6@3x3 groups=2 bias=off",
    "dwconv stride 2 pad=same": "input 3@8x8 -> dwconv 3x3/2 pad=same",
    "dwconv channel multiplier": "input 3@6x6 -> dwconv 3x3 mult=2 pad=1",
    "upconv 2x2/2": "input 3@5x5 -> upconv 4@2x2/2",
    "upconv 3x3/2 pad=1": "input 3@5x5 -> upconv 4@3x3/2 pad=1",
    "upconv without bias": "input 3@4x4 -> upconv 2@4x4/2 pad=1 bias=off",
    "maxpool": "input 3@8x8 -> maxpool 2",
    "maxpool ceil": "input 3@8x8 -> maxpool 3/2 ceil",
    "maxpool ceil drops a window in the padding": "input 3@6x6 -> maxpool 2/2 pad=1 ceil",
    "maxpool pad=same": "input 3@7x7 -> maxpool 2/2 pad=same",
    "maxpool 3/1 pad=1": "input 3@7x7 -> maxpool 3/1 pad=1",
    "avgpool": "input 3@8x8 -> avgpool 2",
    "avgpool ceil (partial windows divide by their cells)": "input 3@8x8 -> avgpool 3/2 ceil",
    "avgpool pad excluded from the count": "input 3@7x7 -> avgpool 3/2 pad=1",
    "avgpool pad=same": "input 3@7x7 -> avgpool 2/2 pad=same",
    "gap": "input 3@5x5 -> gap",
    "gmp": "input 3@5x4 -> gmp",
    "fc": "input 7 -> fc 3",
    "fc without bias after an image (flatten in C,H,W order)": "input 2@3x3 -> fc 4 bias=off",
    "flatten": "input 2@3x4 -> flatten",
    "dropout": "input 5 -> dropout 0.5",
    "noise": "input 5 -> noise 0.3",
    "bn on an image": "input 3@4x4 -> bn",
    "bn on a vector": "input 6 -> bn eps=0.001",
    "lrn 5": "input 7@4x4 -> lrn 5 alpha=0.1 beta=0.75 k=2",
    "lrn 4 (even: onnxruntime refuses LRN, lowered to a window average)": "input 7@3x3 -> lrn 4 alpha=0.1 k=2",
    "lrn 2": "input 7@3x3 -> lrn 2 alpha=0.2 beta=0.5",
    "relu": "input 3@4x4 -> relu",
    "relu6": "input 3@4x4 -> conv 3@1x1 -> relu6",
    "sigmoid": "input 6 -> sigmoid",
    "tanh": "input 6 -> tanh",
    "softmax over features": "input 6 -> softmax",
    "softmax over channels": "input 4@2x3 -> softmax",
    "softmax over a sequence's last axis": "input seq 5 of 4 -> softmax",
    "elu": "input 6 -> elu alpha=0.5",
    "selu": "input 6 -> selu",
    "gelu": "input 6 -> gelu",
    "leaky": "input 6 -> leaky alpha=0.2",
    "silu": "input 3@4x4 -> silu",
    "swish as a suffix on each step": "input seq 5 of 4 -> fc 6 swish",
    "identity": "input 6 -> identity",
    "upsample 2": "input 2@3x3 -> upsample 2",
    "upsample 3": "input 2@2x3 -> upsample 3",
    "embed": "input seq 6 -> embed 4 vocab=11",
    "add of two branches": "input 3@4x4 -> add( conv 3@3x3 pad=1 | identity )",
    "add of three branches": "input 3@4x4 -> add( conv 3@1x1 | conv 3@3x3 pad=1 | identity )",
    "add with a projection shortcut": "input 3@8x8 -> add( conv 6@3x3/2 pad=1 bn | shortcut )",
    "mul of two branches": "input 3@4x4 -> mul( conv 3@3x3 pad=1 | identity )",
    "mul of three branches": "input 6 -> mul( fc 6 | fc 6 tanh | identity )",
    "mul, SwiGLU": "input seq 5 of 4 -> mul( fc 6 silu bias=off | fc 6 bias=off ) -> fc 4 bias=off",
    "mul of a vector over an image (squeeze-and-excite)": "input 3@4x4 -> mul( identity | gap -> fc 3 sigmoid )",
    "mul of a vector over a sequence, first": "input seq 5 of 4 -> mul( seqpool -> fc 4 | identity )",
    "concat of images": "input 3@4x4 -> concat( conv 2@1x1 | identity )",
    "concat of vectors": "input 5 -> concat( fc 2 | fc 3 )",
    "concat of sequences along features": "input seq 4 of 3 -> concat( lstm 2 sequences | identity )",
}
for _k in ("rnn", "lstm", "gru"):
    KIND_CASES[f"{_k}, last step"] = f"input seq 5 of 3 -> {_k} 4"
    KIND_CASES[f"{_k}, sequences"] = f"input seq 5 of 3 -> {_k} 4 sequences"
    KIND_CASES[f"{_k}, bidirectional, last step"] = f"input seq 5 of 3 -> {_k} 4 bidirectional"
    KIND_CASES[f"{_k}, bidirectional with sequences"] = f"input seq 5 of 3 -> {_k} 4 bidirectional sequences"
KIND_CASES.update({
    "fc on each step of a sequence": "input seq 5 of 4 -> fc 3",
    "fc on each step without bias": "input seq 5 of 4 -> fc 3 bias=off",
    "fc tied to an embedding, on each step": "input seq 5 -> embed 4 vocab=9 as tok -> fc 9 tied=tok",
    "fc tied to an embedding, on a vector": "input seq 5 -> embed 4 vocab=9 as tok -> seqpool -> fc 9 tied=tok",
    "layernorm on a sequence": "input seq 5 of 4 -> layernorm",
    "layernorm on a vector": "input 6 -> ln eps=1e-6",
    "rmsnorm on a sequence": "input seq 5 of 4 -> rmsnorm",
    "rmsnorm on a vector": "input 6 -> rmsnorm eps=1e-6",
    "attention": "input seq 5 of 6 -> attention 3",
    "attention, causal": "input seq 5 of 6 -> attention 2 causal",
    "attention without bias, one head, dropout (identity at inference)": "input seq 4 of 6 -> mha 1 bias=off dropout=0.2",
    "attention, grouped kv heads": "input seq 5 of 8 -> attention 4 kv=2",
    "attention without the keys' bias (Whisper)": "input seq 5 of 8 -> attention 2 kv=1 keybias=off",
    "attention without the keys' bias, windows": "input 4@4x6 -> tokens -> attention 2 window=2x3 keybias=off",
    "attention, multi-query": "input seq 5 of 8 -> attention 4 kv=1 causal bias=off",
    "attention, rope (RotaryEmbedding, opset 23)": "input seq 5 of 8 -> attention 2 rope",
    "attention, sliding window": "input seq 6 of 8 -> attention 2 causal window=2",
    "attention, Llama-style (kv, rope=500000, window, no bias)":
        "input seq 6 of 16 -> attention 4 kv=2 rope=500000 causal window=3 bias=off",
    "posembed": "input seq 5 of 4 -> posembed",
    "posembed, the first T rows of a longer table (Gather)": "input seq 5 of 4 -> posembed 9",
    "posembed fixed (a constant of sinusoids)": "input seq 5 of 4 -> posembed fixed",
    "tokens of a signal": "input 3@7 -> conv 4@3 pad=1 -> tokens -> fc 2",
    "clstoken": "input seq 5 of 4 -> clstoken",
    "tokens": "input 3@2x4 -> tokens",
    "seqpool first": "input seq 5 of 4 -> seqpool first",
    "seqpool last": "input seq 5 of 4 -> seqpool last",
    "seqpool mean": "input seq 5 of 4 -> seqpool mean",
})
KIND_CASES.update({  # Swin: windows of a token grid, shifted and not, and patchmerge
    "attention, windows of a token grid": "input 4@4x6 -> tokens -> attention 2 window=2x3",
    "attention, shifted windows": "input 4@6x6 -> tokens -> attention 2 window=3x3 shift=1",
    "attention, shifted windows, a window as tall as the grid": "input 4@2x4 -> tokens -> attention 2 window=2x2 shift=1",
    "patchmerge": "input 3@4x6 -> tokens -> patchmerge",
    "image, the way back from tokens": "input 3@4x6 -> tokens -> fc 5 -> image -> conv 2@3x3",
    "image of a sequence without a grid": "input seq 6 of 4 -> image 2x3",
})
KIND_CASES.update({
    "experts on a sequence, top 2 of 4": "input seq 5 of 6 -> experts 4 top=2 { fc 8 relu -> fc 6 } -> fc 3",
    "experts on a vector, top 1 of 3, balance (training only)": "input 6 -> experts 3 top=1 balance=0.1 { fc 6 tanh }",
})
KIND_CASES.update({  # the math kinds of issue 28
    "softmax over an image's width": "input 3@4x5 -> softmax axis=-1",
    "softmax over a sequence's steps": "input seq 5 of 4 -> softmax axis=0",
    "logsoftmax over features": "input 6 -> fc 5 logsoftmax",
    "logsoftmax over an image's height": "input 3@4x5 -> logsoftmax axis=1",
    "softplus, softsign, exp, abs, neg": "input 3@4x4 -> softplus -> softsign -> exp -> neg -> abs",
    "sqrt of a softplus (positive)": "input 6 -> softplus -> sqrt",
    "clip with both bounds": "input 3@4x4 -> clip min=-0.5 max=0.5",
    "clip with one bound": "input 6 -> clip max=0.2",
    "prelu, one slope": "input 3@4x4 -> conv 4@3x3 prelu",
    "prelu per channel": "input 3@4x4 -> conv 4@3x3 prelu channels",
    "prelu per feature of a sequence": "input seq 5 of 4 -> prelu channels",
    "shift, one value": "input 6 -> shift",
    "shift per channel": "input 3@4x4 -> shift channels",
    "glu over features": "input 6 -> fc 8 -> glu",
    "glu over an image's channels": "input 4@3x3 -> glu",
    "glu over a sequence's steps": "input seq 6 of 4 -> glu axis=0",
    "reduce mean over the height": "input 2@3x4 -> reduce axis=1",
    "reduce sum over the width, kept": "input 2@3x4 -> reduce sum axis=2 keep",
    "reduce mean over a sequence's features": "input seq 5 of 4 -> reduce",
})
KIND_CASES.update({  # the kinds of today's vision networks (issue 21)
    "hardsigmoid and hardswish": "input 3@4x4 -> conv 3@1x1 hardswish -> hardsigmoid",
    "layernorm over an image's channels": "input 4@3x5 -> layernorm channels eps=1e-6",
    "layernorm over a signal's channels": "input 4@7 -> layernorm channels",
    "scale per channel, per feature of each step": "input 3@4x4 -> scale init=0.5 -> flatten -> fc 6 -> scale",
    "scale on a sequence": "input seq 5 of 4 -> layerscale init=2",
    "droppath (identity at inference)": "input 3@4x4 -> add( conv 3@3x3 pad=1 -> droppath 0.2 | identity )",
    "gap and gmp keep (squeeze-and-excite with 1x1 convs)":
        "input 4@5x5 -> mul( identity | gap keep -> conv 2@1x1 silu -> conv 4@1x1 sigmoid ) -> gmp keep",
})
KIND_CASES.update({  # padding and resampling kinds (issue 28)
    "pad, zeros": "input 2@3x4 -> pad 1",
    "pad constant 2.5, uneven sides": "input 2@3x4 -> pad 3 left=1 bottom=4 right=2 value=2.5",
    "pad reflect": "input 2@4x5 -> pad 1 top=3 right=2 mode=reflect -> conv 2@3x3",
    "pad replicate": "input 2@3x4 -> pad 2 mode=replicate",
    "instancenorm": "input 3@4x5 -> instancenorm eps=1e-3",
    "groupnorm on an image": "input 6@4x5 -> groupnorm 3 eps=1e-3",
    "groupnorm on a signal, one group": "input 4@9 -> groupnorm 1",
    "pixelshuffle": "input 8@3x2 -> pixelshuffle 2",
    "slice channels": "input 4@3x2 -> slice 2 start=1",
    "slice the last step": "input seq 4 of 3 -> slice 1 start=-1 axis=steps",
    "slice width": "input 2@3x5 -> slice 3 start=2 axis=width",
    "reshape a vector into an image": "input 6 -> reshape 2@1x3 -> conv 2@1x1",
    "reshape an image into a sequence": "input 2@3x4 -> reshape 6x4",
    "tile an image": "input 2@3x2 -> tile 2@1x3",
    "tile a sequence's steps": "input seq 4 of 3 -> tile 2x1",
    "tile a vector": "input 3 -> tile 2",
    "maxpool dilated": "input 3@9x9 -> maxpool 3/2 pad=1 dil=2",
    "maxpool dilated, ceil, pad per axis": "input 3@9x8 -> maxpool 3/2 pad=1x0 dil=2 ceil",
    "conv and avgpool pad per axis": "input 3@7x8 -> conv 4@3x3 pad=1x2 -> avgpool 3/2 pad=0x1",
    "upconv outpad": "input 3@4x5 -> upconv 4@3x3/2 pad=1 outpad=1",
    "upconv outpad past the pads": "input 3@4x5 -> upconv 2@3x3/3 pad=1 outpad=2 bias=off",
})
# issue 28: signals C@L and volumes C@DxHxW, through the same ONNX operators at rank 3 and 5
KIND_CASES.update({
    "signal: conv, bn, maxpool with pad, dwconv, avgpool ceil, gap": (
        "input 2@20 -> conv 4@5/2 pad=same bn relu -> maxpool 3/2 pad=1 -> dwconv 3 mult=2 -> avgpool 2 ceil -> gap"),
    "signal: softmax over its channels, concat of channels, fc after a flatten": (
        "input 3@10 -> conv 4@3 pad=1 as a -> conv 2@1 -> concat a -> softmax -> fc 3"),
    "volume: r3d stem, maxpool 1x2x2, shortcut projection, avgpool ceil, gap": (
        "input 2@5x17x17 -> conv 4@3x5x5/1x2x2 pad=1x2x2 bn relu -> maxpool 1x2x2 -> "
        "add( conv 6@3/2 pad=1 bn | shortcut ) -> avgpool 2 ceil -> gap -> fc 3"),
    "volume: dwconv, dilation, groups, flatten": (
        "input 4@5x6x6 -> dwconv 3 pad=1 -> conv 4@2x3x3 dil=2 groups=2 -> flatten"),
})
KIND_CASES["stacked bidirectional lstm on embeddings"] = (
    "input seq 6 -> embed 5 vocab=9 -> lstm 3 bidirectional sequences -> gru 2")


def test_a_mixtures_router_ties_go_to_the_lower_expert_in_onnxruntime_as_in_the_engine():
    # a zero router: every logit ties, so each step takes experts 1 and 2 at 1/2 each
    graph = compile_spec("input seq 3 of 4 -> experts 4 top=2 { fc 4 }", "ties.dlc")
    params, state = exercised_weights(graph)
    params["experts1.router.W"] = np.zeros_like(params["experts1.router.W"])
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = session(to_onnx(Network(graph, params, state))).run(None, {"input": x})[0]
    experts = [x @ params[f"experts1.expert{e}.fc1.W"].T + params[f"experts1.expert{e}.fc1.b"] for e in (1, 2)]
    np.testing.assert_allclose(got, (experts[0] + experts[1]) / 2, rtol=1e-5, atol=1e-6)
    want = {n.name: y for n, y in activations(Network(graph, params, state), x)}["experts1"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(KIND_CASES))
def test_kind_lowering_matches_numpy(case):
    assert_matches_engine(KIND_CASES[case])


@pytest.mark.parametrize("opset", [13, 17, 20, 21])
def test_gelu_and_even_lrn_at_other_opsets(opset):
    """Below opset 20 gelu is its erf decomposition; the results agree either way."""
    _, model = assert_matches_engine("input 4@3x3 -> lrn 4 -> gelu", opset=opset)
    ops = {n.op_type for n in model.graph.node}
    assert ("Gelu" in ops) == (opset >= 20) and ("Erf" in ops) == (opset < 20)


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_layernorm_and_mean_pooling_at_other_opsets(opset):
    """LayerNormalization from opset 17, its decomposition below; ReduceMean's axes an input from 18."""
    _, model = assert_matches_engine("input seq 4 of 5 -> layernorm -> seqpool mean -> ln", opset=opset)
    ops = [n.op_type for n in model.graph.node]
    assert ("LayerNormalization" in ops) == (opset >= 17)
    assert ops.count("ReduceMean") == (1 if opset >= 17 else 5)


@pytest.mark.parametrize("opset", [13, 17, 18, 22, 23])
def test_rmsnorm_at_other_opsets(opset):
    """RMSNormalization from opset 23, below it its definition: Mul, ReduceMean, Add, Sqrt, Div, Mul."""
    _, model = assert_matches_engine("input seq 4 of 5 -> rmsnorm -> fc 3 -> rmsnorm eps=1e-6", opset=opset)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("RMSNormalization") == (2 if opset >= 23 else 0)
    assert ops.count("ReduceMean") == (0 if opset >= 23 else 2) and ("Sqrt" in ops) == (opset < 23)


@pytest.mark.parametrize("opset", [13, 18, 21, 23])
def test_rope_is_rotary_embedding_from_opset_23_and_cos_sin_tables_below(opset):
    """RotaryEmbedding from opset 23 (the default for a spec with rope), below it x·cos + swap(x)·sin with
    constant tables; grouped kv heads repeated by Expand; the results agree either way."""
    text = "input seq 6 of 16 -> attention 4 kv=2 rope causal window=4"
    _, model = assert_matches_engine(text, opset=opset)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("RotaryEmbedding") == (2 if opset >= 23 else 0)  # queries and keys
    assert ops.count("Split") == (0 if opset >= 23 else 2) and ops.count("Expand") >= 2
    assert [t.name for t in model.graph.initializer] == [f"attention1.W{w}" for w in "qkvo"] + [
        f"attention1.b{w}" for w in "qkvo"]  # tables and masks are constants, not parameters
    assert lowest_opset(compile_spec(text.replace(" -> ", "\n"), file="<t>")) == 23
    assert lowest_opset(compile_spec("input seq 6 of 16\nattention 4 kv=2 causal window=4", file="<t>")) == 13


def test_a_window_is_a_band_mask():
    graph, model = assert_matches_engine("input seq 5 of 4 -> attention 2 causal window=2")
    band = onnx.numpy_helper.to_array(attr(node_of(model, "attention1/future"), "value"))
    # step i sees i-1 and i: hidden above the diagonal and two or more steps back
    want = np.triu(np.ones((5, 5), bool), 1) | np.tril(np.ones((5, 5), bool), -2)
    assert np.array_equal(band, want)


def test_tied_weights_are_one_initializer_read_twice():
    text = "input seq 5\nembed 4 vocab=9 as tok\nattention 2 causal\nfc 9 tied=tok bias=off softmax"
    graph, model = assert_matches_engine(text)
    assert [t.name for t in model.graph.initializer].count("embed1.W") == 1
    readers = [n for n in model.graph.node if "embed1.W" in n.input]
    assert sorted(n.op_type for n in readers) == ["Gather", "Transpose"]
    assert not any(t.name.startswith("fc1.") for t in model.graph.initializer)


def test_attention_lowers_to_matmul_and_softmax_with_a_constant_causal_mask():
    graph, model = assert_matches_engine("input seq 4 of 6 -> attention 3 causal")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 6 and ops.count("Softmax") == 1 and "Where" in ops
    mask = next(n for n in model.graph.node if n.name == "attention1/future")
    future = onnx.numpy_helper.to_array(attr(mask, "value"))
    # True above the diagonal: step i does not see step j > i
    assert future.dtype == np.bool_ and np.array_equal(future, np.triu(np.ones((4, 4), bool), 1))
    assert "Where" not in [n.op_type for n in assert_matches_engine("input seq 4 of 6 -> attention 3")[1].graph.node]


def node_of(model, name):
    return next(n for n in model.graph.node if n.name == name)


def attr(node, key):
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == key))


def test_same_padding_is_asymmetric_with_the_extra_pixel_at_the_end():
    # 9 wide, k=4, s=2: out = ceil(9/2) = 5; total pad = (5-1)*2 + 4 - 9 = 3 -> 1 before, 2 after
    graph = compile_spec("input 3@9x9 -> conv 4@4x4/2 pad=same")
    model = to_onnx(Network(graph, *init_params(graph)))
    conv = node_of(model, graph.nodes[1].name)
    assert attr(conv, "pads") == [1, 1, 2, 2]
    assert attr(conv, "strides") == [2, 2]


def test_ceil_pooling_gives_the_caffe_shape():
    # 8 wide, 3/2: floor gives (8-3)//2 + 1 = 3; ceil gives 4 (the last window starts at 6 < 8)
    graph, model = assert_matches_engine("input 3@8x8 -> maxpool 3/2 ceil")
    assert graph.output.out_shape == (3, 4, 4)
    assert attr(node_of(model, graph.output.name), "ceil_mode") == 1


def test_model_metadata_names_and_versions():
    text = "input 1@8x8\nconv 2@3x3 relu\nfc 3\n"
    graph = compile_spec(text, file="tiny.dlc")
    params, state = init_params(graph)
    model = to_onnx(Network(graph, params, state))
    assert model.ir_version == 7 and model.opset_import[0].version == 13  # the lowest opset, and its IR
    conv = graph.nodes[1]
    proto = node_of(model, conv.name)
    assert proto.op_type == "Conv" and proto.doc_string == f"tiny.dlc:2: {conv.text}"
    assert {n.name for n in graph.nodes[1:]} <= {n.name for n in model.graph.node}
    assert sorted(t.name for t in model.graph.initializer) == sorted(params)
    dim = model.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "N" and [d.dim_value for d in dim[1:]] == [1, 8, 8]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dlc.spec"] == text and meta["dlc.version"]
    assert spec_of(model) == ("tiny.dlc", text)
    back, back_state = weights_of(model, graph)
    assert back.keys() == params.keys() and all(np.array_equal(back[k], params[k]) for k in params)
    assert back_state == {}


def test_fixed_batch():
    graph = compile_spec("input 5 -> fc 2")
    model = to_onnx(Network(graph, *init_params(graph)), batch=3)
    check_export(model, Network(graph, init_params(graph)[0], {}))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_resnet50_initializers_hold_kerass_total_params():
    """25,557,032 trainable (torchvision) + 53,120 bn statistics = 25,610,152 (Keras's "Total params")."""
    graph = compile_spec(ZOO_TWINS["resnet50"])
    params, state = init_params(graph)
    model = to_onnx(Network(graph, params, state))
    assert sum(a.size for a in params.values()) == 25_557_032
    assert sum(np.prod(t.dims) for t in model.graph.initializer) == 25_610_152


def test_check_export_catches_a_missing_initializer():
    graph = compile_spec("input 6 -> fc 3 -> bn")
    params, state = init_params(graph)
    model = to_onnx(Network(graph, params, state))
    del model.graph.initializer[-1]
    with pytest.raises(DlcError):  # the checker (an input with no producer) or the count
        check_export(model, Network(graph, params, state))


def test_check_export_catches_a_shape_that_disagrees_with_dlc():
    # gap hides the pool's spatial size from the declared output, so only dlc's own comparison sees it
    graph = compile_spec("input 3@8x8 -> maxpool 3/2 ceil -> gap")
    model = to_onnx(Network(graph, *init_params(graph)))
    pool = node_of(model, graph.nodes[1].name)
    for a in pool.attribute:
        if a.name == "ceil_mode":
            a.i = 0  # floor: 3x3 where dlc says 4x4
    with pytest.raises(DlcError, match=r"shape inference gives \['N', 3, 3, 3\]"):
        check_export(model, Network(graph, {}, {}))


def test_check_export_catches_changed_weights():
    graph = compile_spec("input 6 -> fc 3")
    params, state = init_params(graph)
    model = to_onnx(Network(graph, params, state))
    params = {k: v + 1 for k, v in params.items()}
    with pytest.raises(DlcError, match="differs"):
        check_export(model, Network(graph, params, state))


def test_unsupported_opset_and_missing_weights_are_errors():
    graph = compile_spec("input 6 -> fc 3")
    params, state = init_params(graph)
    with pytest.raises(DlcError, match="opset 12"):
        to_onnx(Network(graph, params, state), opset=12)
    with pytest.raises(DlcError, match="fc"):
        to_onnx(Network(graph, {}, state))
    bad = {k: v[:, :2] for k, v in params.items() if v.ndim == 2}
    with pytest.raises(DlcError, match=r"\(3, 2\)"):
        to_onnx(Network(graph, {**params, **bad}, state))
