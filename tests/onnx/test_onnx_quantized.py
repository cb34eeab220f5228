"""Quantized and precision-converted ONNX files, made by onnxruntime's own tools from dlc's float exports,
are counted as the network they hold (issue 28): the float twin's params and MACs, the stored bytes, and
each product's precision.

The files are made once per session in a temporary folder: `quant_pre_process` first, as onnxruntime's
quantization guide asks (it folds the Transposes dlc's export puts before MatMul weights, which the
quantizers otherwise skip), then each quantizer on that float twin.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.zoo import zoo_path

ort = pytest.importorskip("onnxruntime")

GPT = "input seq 16 -> embed 64 vocab=256 -> attention 4 causal -> layernorm -> fc 256 relu -> fc 64 -> fc 256"
SPECS = {"lenet5": str(zoo_path("lenet5")), "gpt": GPT, "resnet18": str(zoo_path("resnet18"))}
# The float twins' figures by hand. LeNet-5: docs/conventions.md. The GPT: embed 256*64; attention 4 projections
# of 64*64 + 64; layernorm 2*64; fc 64*256 + 256, 256*64 + 64, 64*256 + 256. MACs at T=16: the four projections
# 16*4*64*64, scores and weighted sum 2*4*16*16*16, the fcs 16*(64*256 + 256*64 + 64*256).
TWINS = {"lenet5": (61_706, 416_520),
         "gpt": (256 * 64 + 4 * (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64) + (64 * 256 + 256),
                 16 * 4 * 64 * 64 + 2 * 4 * 16 * 16 * 16 + 16 * 3 * 64 * 256)}
FORMATS = ("dynamic", "dynamic-uint8", "dynamic-per-channel", "qdq", "qoperator", "nbits", "nbits-gather",
           "int4-qdq", "fp16", "fp16-weights")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Calibration:
    """onnxruntime's CalibrationDataReader protocol: a few random batches of the model's one input."""

    def __init__(self, path: Path):
        feed = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
        shape = [d if isinstance(d, int) else 2 for d in feed.shape]
        rng = np.random.default_rng(0)
        make = (lambda: rng.integers(0, 256, shape)) if "int" in feed.type else \
            (lambda: rng.standard_normal(shape).astype(np.float32))
        self.batches = iter([{feed.name: make()} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@lru_cache(maxsize=None)
def _float_twin(folder: Path, name: str) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    exported, twin = folder / f"{name}.onnx", folder / f"{name}.float.onnx"
    spec = SPECS[name]
    result = run("export", *(["-e", spec] if spec.startswith("input") else [spec]), "-o", exported)
    assert result.exit_code == 0, result.output
    quant_pre_process(str(exported), str(twin), skip_symbolic_shape=True)
    return twin


@lru_cache(maxsize=None)
def _quantized(folder: Path, name: str, fmt: str) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    twin, out = _float_twin(folder, name), folder / f"{name}.{fmt}.onnx"
    if fmt.startswith("dynamic"):
        quantize_dynamic(twin, out, per_channel=fmt.endswith("per-channel"),
                         weight_type=QuantType.QUInt8 if fmt.endswith("uint8") else QuantType.QInt8)
    elif fmt in ("qdq", "qoperator"):
        quantize_static(twin, out, Calibration(twin),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator)
    elif fmt.startswith("nbits") or fmt == "int4-qdq":
        gather = dict(op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer = MatMulNBitsQuantizer(onnx.load(twin), block_size=32, is_symmetric=fmt != "int4-qdq",
                                         quant_format=QuantFormat.QDQ if fmt == "int4-qdq" else QuantFormat.QOperator,
                                         **(gather if fmt == "nbits-gather" else {}))
        quantizer.process()
        quantizer.model.save_model_to_file(str(out))
    elif fmt == "fp16":  # every operator in float16, the inputs and outputs cast
        onnx.save(convert_float_to_float16(onnx.load(twin), keep_io_types=True), out)
    else:  # fp16-weights: float16 weights, each cast to float32 before its use, as a file stored half-size
        onnx.save(with_float16_weights(onnx.load(twin)), out)
    return out


def with_float16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    casts = []
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and t.dims:
            name = t.name
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16), f"{name}.fp16"))
            casts.append(onnx.helper.make_node("Cast", [t.name], [name], to=onnx.TensorProto.FLOAT))
    nodes = [*casts, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    return model


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """quantized(name, fmt): the float twin of SPECS[name] written by onnxruntime's tool for `fmt` ("float":
    the twin itself), made once per session."""
    folder = tmp_path_factory.mktemp("quantized")
    return lambda name, fmt: _float_twin(folder, name) if fmt == "float" else _quantized(folder, name, fmt)


def figures(path: Path, *args) -> dict:
    result = run("summary", path, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def cases(names=("lenet5", "gpt", "resnet18"), formats=FORMATS):
    """Every (model, format) onnxruntime writes; ResNet-18's are slow (a 47 MB model per format). The GPT's
    QOperator file is not made (onnxruntime's quantize_static refuses the graph: "unknown
    initializers/tensors" for the attention's scaled scores), and the 4-bit formats quantize MatMul and
    Gather only: LeNet-5 and ResNet-18 have none (their fcs are Gemm), so theirs are the float twin."""
    return [pytest.param(n, f, marks=[pytest.mark.slow] if n == "resnet18" else [])
            for n in names for f in formats if (n, f) != ("gpt", "qoperator")
            and not (n != "gpt" and f.startswith(("nbits", "int4")))]


@pytest.mark.parametrize("name, fmt", cases())
def test_a_quantized_file_counts_its_float_twins_macs_and_nothing_is_left_uncounted(name, fmt, quantized):
    twin = figures(quantized(name, "float"))["totals"]
    if name in TWINS:
        assert (twin["params"], twin["macs"]) == TWINS[name]
    doc = figures(quantized(name, fmt))
    assert doc["totals"]["not_counted"] == 0, doc["onnx"]["not_counted"]
    assert doc["totals"]["macs"] == twin["macs"]


@pytest.mark.parametrize("name, fmt", cases())
def test_a_quantized_file_has_its_float_twins_params(name, fmt, quantized):
    twin = figures(quantized(name, "float"))["totals"]
    assert figures(quantized(name, fmt))["totals"]["params"] == twin["params"]


# LeNet-5's weights are 61,470 values and its biases 236 (6 + 16 + 120 + 84 + 10).
LENET_WEIGHTS, LENET_BIASES = 6 * 25 + 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10, 236


@pytest.mark.parametrize("fmt", ["qdq", "qoperator", "dynamic"])
def test_int8_weights_take_a_byte_each_and_int32_biases_four(fmt, quantized):
    # static quantization stores the biases as int32 (4 bytes); dynamic leaves them float32 (4 bytes too)
    data = figures(quantized("lenet5", fmt))["totals"]["param_bytes"]
    assert data - figures(quantized("lenet5", fmt))["totals"].get("quantization_bytes", 0) == \
        LENET_WEIGHTS + 4 * LENET_BIASES


@pytest.mark.parametrize("fmt", ["dynamic", "qdq", "qoperator"])
def test_a_quantized_file_has_its_float_twins_rows(fmt, quantized):
    # LeNet-5's rows: conv, pool, conv, pool, flatten, three fcs, the softmax. The quantizing, dequantizing
    # and rescaling nodes join the rows they serve; the metadata dlc's export wrote is no longer trusted
    # for rows once the quantizer added nodes.
    layers = [layer for layer in figures(quantized("lenet5", fmt))["layers"] if layer["kind"] != "input"]
    rows = list(dict.fromkeys(layer["row"] for layer in layers))
    weighted = [sum(layer["params"] for layer in layers if layer["row"] == row) for row in rows]
    assert [w for w in weighted if w] == [156, 2_416, 48_120, 10_164, 850]
    assert len(rows) == 9, rows


# Each format's products in the table's words, and the precision they compute in. The GPT's attention
# products (scores and weighted sum, between two activations) stay float where only weights are quantized;
# quantize_static quantizes their operands too.
PRECISIONS = {
    "dynamic": {"int8 w / uint8 a": "int8"}, "dynamic-uint8": {"uint8 w / uint8 a": "int8"},
    "dynamic-per-channel": {"int8 w / uint8 a": "int8"}, "qdq": {"int8 w / int8 a": "int8"},
    "qoperator": {"int8 w / int8 a": "int8"}, "nbits": {"int4 w, block 32": "fp32"},
    "nbits-gather": {"int4 w, block 32": "fp32"}, "int4-qdq": {"uint4 w, block 32": "fp32"},
    "fp16": {"fp16": "fp16"}, "fp16-weights": {"fp16 w / fp32 a": "fp32"}}


@pytest.mark.parametrize("name, fmt", cases())
def test_macs_are_split_by_the_precision_of_their_products(name, fmt, quantized):
    doc = figures(quantized(name, fmt))
    split = doc["totals"]["macs_by_precision"]
    expected = PRECISIONS[fmt]
    if name == "gpt" and fmt != "fp16":
        # the scores and the weighted sum, 2 * 4 heads * 16 * 16 * 16 MACs between two activations: float32,
        # or int8 where quantize_static quantized them
        between = "int8 a / int8 a" if fmt == "qdq" else "fp32"
        expected = {**expected, between: between.split()[0]}
        assert split[between]["macs"] == 2 * 4 * 16 * 16 * 16
    assert {p: e["compute"] for p, e in split.items()} == expected
    assert sum(e["macs"] for e in split.values()) == doc["totals"]["macs"]
    assert {layer["precision"] for layer in doc["layers"] if layer.get("precision")} == set(expected)
    text = run("summary", quantized(name, fmt)).output
    assert "MACs by precision: " in text and all(f" {p} " in text for p in expected)


def test_a_float32_file_shows_no_precision_column(quantized):
    text = run("summary", quantized("lenet5", "float")).output
    assert "precision" not in text.splitlines()[2]
    assert "MACs by precision" not in text


def test_int4_weights_take_half_a_byte_and_their_block_scales_are_overhead(quantized):
    # The GPT's 7 MatMul weights, 4*64*64 + 3*64*256 = 65,536 values: 32,768 bytes at 4 bits, and one float32
    # scale per block of 32 (symmetric: no zero points), 2,048 scales = 8,192 bytes. The rest stays float32:
    # the embedding 256*64, the biases 4*64 + 256 + 64 + 256 and layernorm's 2*64.
    values = 4 * 64 * 64 + 3 * 64 * 256
    rest = 4 * (256 * 64 + 4 * 64 + 256 + 64 + 256 + 2 * 64)
    totals = figures(quantized("gpt", "nbits"))["totals"]
    assert totals["quantization_bytes"] == 4 * values // 32
    assert totals["param_bytes"] == values // 2 + 4 * values // 32 + rest
    # GatherBlockQuantized: the embedding in int4 too, 256*64 / 2 bytes and 256*64 / 32 float32 scales
    totals = figures(quantized("gpt", "nbits-gather"))["totals"]
    table = 256 * 64
    assert totals["param_bytes"] == (values + table) // 2 + 4 * (values + table) // 32 + rest - 4 * table
    # int4 in QDQ form, asymmetric: the same scales and a uint4 zero point per block, 2,048 / 2 bytes
    totals = figures(quantized("gpt", "int4-qdq"))["totals"]
    assert totals["quantization_bytes"] == 4 * values // 32 + values // 32 // 2
    assert totals["param_bytes"] == values // 2 + totals["quantization_bytes"] + rest
    text = run("params", quantized("gpt", "nbits")).output
    assert f"of which {8192 / 1024:.2f} KiB quantization scales and zero points" in text


def test_float16_weights_behind_a_cast_take_two_bytes(quantized):
    doc = figures(quantized("lenet5", "fp16-weights"))
    assert (doc["totals"]["params"], doc["totals"]["param_bytes"]) == (61_706, 2 * 61_706)
    assert doc["dtype"]["weights"] == "fp16"


def _save(nodes, inputs, outputs, initializers, path) -> Path:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_each_activation_takes_its_own_tensors_type(tmp_path):
    # Issue 20 left every activation in the weights' single type. A float16 input of 4 values cast to
    # float32 for a float32 Gemm of 3 outputs: the input 4 x 2 bytes, the cast 4 x 4, the output 3 x 4 = 36
    # (all in the weights' float32 it was 44).
    from onnx import TensorProto, helper, numpy_helper

    path = _save([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
                  helper.make_node("Gemm", ["c", "W", "b"], ["y"], transB=1)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                 [numpy_helper.from_array(np.ones((3, 4), np.float32), "W"),
                  numpy_helper.from_array(np.ones(3, np.float32), "b")], tmp_path / "cast.onnx")
    doc = figures(path)
    assert doc["totals"]["activation_bytes"] == 4 * 2 + 4 * 4 + 3 * 4
    assert doc["dtype"]["activations"] == "mixed" and doc["dtype"]["bytes_per_value"]["activations"] is None
    assert "(11 values, each in its tensor's stored type)" in run("summary", path).output


def test_constants_are_priced_in_their_stored_type(tmp_path):
    # Issue 20 priced constants at 4 bytes whatever their type: attention's 4x4 float16 mask added to the
    # scores of queries and keys is 16 values, 32 bytes.
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones((8, 8), np.float16), name) for name in ("Wq", "Wk")]
    mask = numpy_helper.from_array(np.triu(np.full((4, 4), -1e4, np.float16), 1), "mask")
    path = _save([helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("MatMul", ["x", "Wk"], ["k"]),
                  helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Add", ["s", "mask"], ["m"]),
                  helper.make_node("Softmax", ["m"], ["p"], axis=-1)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4, 8])],
                 [helper.make_tensor_value_info("p", TensorProto.FLOAT16, ["N", 4, 4])],
                 [*weights, mask], tmp_path / "mask.onnx")
    doc = figures(path)
    assert doc["totals"]["constants"] == {"values": 16, "bytes": 32}
    assert doc["totals"]["params"] == 2 * 64
    assert "constants: 16 values (32 B as stored)" in run("params", path).output


def test_dlcs_shape_rules_for_contrib_operators():
    # by hand from onnxruntime's ContribOperators.md
    from onnx import TensorProto as T

    from dlc.onnx.shapes import rule_shapes

    def contrib_shapes(op_type, ins, attrs):
        return rule_shapes(onnx.helper.make_node(op_type, [], [], domain="com.microsoft"), attrs, ins)

    u8, f32 = T.UINT8, T.FLOAT
    scale = (f32, ())
    x = (u8, (1, 3, 8, 8))
    # AveragePool's sizes: floor((8 + 1 + 1 - 3) / 2) + 1 = 4, with ceil_mode 5
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    assert contrib_shapes("QLinearAveragePool", [x, scale, x, scale, x], pool) == [(u8, (1, 3, 4, 4))]
    assert contrib_shapes("QLinearAveragePool", [x, scale, x, scale, x], {**pool, "ceil_mode": 1}) == \
        [(u8, (1, 3, 5, 5))]
    assert contrib_shapes("QLinearGlobalAveragePool", [x], {"channels_last": 0}) == [(u8, (1, 3, 1, 1))]
    assert contrib_shapes("QLinearMul", [x, scale, scale, (u8, (1, 3, 1, 1))], {}) == [(u8, (1, 3, 8, 8))]
    parts = [(u8, (1, 2, 4)), scale, scale, (u8, (1, 3, 4)), scale, scale]
    assert contrib_shapes("QLinearConcat", [scale, (u8, ()), *parts], {"axis": 1}) == [(u8, (1, 5, 4))]
    # a 4-bit table packed two values a byte: 32 bytes a row hold 64 values
    table = [(u8, (256, 32)), (T.INT64, (1, 16)), (f32, (256, 2))]
    assert contrib_shapes("GatherBlockQuantized", table, {"bits": 4, "block_size": 32}) == [(f32, (1, 16, 64))]
    assert contrib_shapes("MatMulNBits", [(f32, (1, 16, 64))], {"K": 64, "N": 96}) == [(f32, (1, 16, 96))]
    # QGemm without y_scale gives floats; an input still unknown gives no shape yet
    assert contrib_shapes("QGemm", [(u8, (1, 400)), scale, x, (u8, (120, 400))], {"transB": 1}) == [(f32, (1, 120))]
    assert contrib_shapes("QLinearSoftmax", [None, scale], {}) is None
