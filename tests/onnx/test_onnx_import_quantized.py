"""`dlc import` of quantized files, made here with onnxruntime's own quantizer (dynamic, static QDQ and
static QOperator) from float files dlc exports: the import writes the float network with the dequantized
weights, and its output on dlc's NumPy engine agrees with onnxruntime's on the quantized file within the
quantization error (the bounds below), and with the float file's within the weights' rounding.

Each model is its zoo spec with the last softmax left out: errors are measured on the logits, relative
to the largest of them, since near-one-hot probabilities hide or magnify them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dlc.cli import main
from dlc.onnx.importing.quantized import dequantize

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

SPECS = Path(__file__).resolve().parents[2] / "specs"

# onnxruntime's quantizer in each form it writes: (quantize(float_file, out, calibration), stored weight type)
QuantType, QuantFormat = quantization.QuantType, quantization.QuantFormat
FORMATS = {
    "dynamic": (lambda f, o, r: quantization.quantize_dynamic(f, o), "int8"),
    "QDQ": (lambda f, o, r: quantization.quantize_static(f, o, r, quant_format=QuantFormat.QDQ), "int8"),
    "QDQ per-channel uint8": (lambda f, o, r: quantization.quantize_static(
        f, o, r, quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8), "uint8"),
    "QDQ int4": (lambda f, o, r: quantization.quantize_static(
        f, o, r, quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt4, activation_type=QuantType.QUInt8),
        "int4"),
    "QOperator": (lambda f, o, r: quantization.quantize_static(f, o, r, quant_format=QuantFormat.QOperator),
                  "int8"),
    "QOperator per-channel uint8": (lambda f, o, r: quantization.quantize_static(
        f, o, r, quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8),
        "int8"),
}

# Bounds on the error relative to the largest logit, each twice the largest measured (README.md, import,
# gives the figures) and rounded up, so that no one seed's draw decides: measured over 5 weight seeds for
# LeNet-5, 3 for the transformer and 2 for ResNet-18, each calibrated on 16 standard normal inputs (token
# ids for the transformer) and run on those: the error a file shows on the inputs it was calibrated for.
# dlc's NumPy engine on the imported spec against onnxruntime on the quantized file (int8 weights, int4):
BOUND = {"lenet5": (0.07, 0.5), "transformer_reverse": (0.2, 0.2), "resnet18": (0.02, None)}
# ... and against onnxruntime on the float file the quantizer read (int8 weights: their rounding alone)
FLOAT_BOUND = {"lenet5": 0.05, "transformer_reverse": 0.05, "resnet18": 0.05}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def onnxruntime_output(path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def samples(path, n: int, seed: int) -> np.ndarray:
    """n inputs of the file's shape: token ids below 16 (the transformer's vocabulary), or standard normal."""
    v = onnx.load(str(path)).graph.input[0].type.tensor_type
    shape = [n] + [d.dim_value for d in v.shape.dim[1:]]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 16, shape) if v.elem_type == TensorProto.INT64 else \
        rng.standard_normal(shape).astype(np.float32)


class Calibration(quantization.CalibrationDataReader):
    """16 single inputs, the calibration onnxruntime's static quantizer runs the float model on."""

    def __init__(self, path):
        name = onnx.load(str(path)).graph.input[0].name
        self.feeds = iter({name: x[None]} for x in samples(path, 16, 0))

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """float_file(model) and quantized(model, form): each made once, in a temporary folder."""
    folder = tmp_path_factory.mktemp("quantized")
    made = {}

    def float_file(model: str) -> Path:
        path = folder / f"{model}.onnx"
        if path not in made:
            spec = (SPECS / f"{model}.dlc").read_text().replace(" softmax", "")  # the logits
            r = run("export", "-e", spec, "-o", path)
            assert r.exit_code == 0, r.output
            made[path] = True
        return path

    def quantized(model: str, form: str) -> Path:
        path = folder / f"{model}_{form.replace(' ', '_')}.onnx"
        if path not in made:
            logging.disable(logging.WARNING)  # the quantizer's advice to pre-process the model first
            try:
                FORMATS[form][0](str(float_file(model)), str(path), Calibration(float_file(model)))
            finally:
                logging.disable(logging.NOTSET)
            made[path] = True
        return path

    return float_file, quantized


def imported(path, out: Path):
    r = run("import", path, "-o", out)
    assert r.exit_code == 0, r.output
    return r.output, out, out.with_suffix(".npz")


def numpy_output(folder: Path, spec, weights, x: np.ndarray) -> np.ndarray:
    np.save(folder / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", folder / "x.npy",
            "--out", folder / "y.npy")
    assert r.exit_code == 0, r.output
    return np.load(folder / "y.npy")


def body(spec: Path) -> list[str]:
    """The spec's steps, without the header comments that name the file."""
    return [line for line in spec.read_text().splitlines() if not line.startswith("#")]


def check_import(tmp_path, files, model: str, form: str):
    float_file, quantized = files
    path = quantized(model, form)
    said, spec, weights = imported(path, tmp_path / "net.dlc")
    _, float_spec, float_weights = imported(float_file(model), tmp_path / "float.dlc")

    # one line says what was dequantized from which type; the network is the float file's, layer for layer
    lines = [line for line in said.splitlines() if line.startswith("weights dequantized from")]
    assert len(lines) == 1 and FORMATS[form][1] in lines[0], said
    assert body(spec) == body(float_spec)

    # each weight is the float one rounded to its grid: within half a step, at most max|w| / (2^bits - 2)
    # for a b-bit grid that spans [min(w, 0), max(w, 0)] (symmetric: 2 max|w| over 2^bits - 2 steps)
    bits = 4 if FORMATS[form][1] == "int4" else 8
    with np.load(weights) as w, np.load(float_weights) as f:
        assert sorted(w.files) == sorted(f.files)
        for key in f.files:
            if f[key].dtype.kind == "f" and f[key].size:
                assert np.abs(w[key] - f[key]).max() <= np.abs(f[key]).max() / (2 ** bits - 2) * 1.001 + 1e-7, key

    x = samples(path, 16, 0)  # the calibration inputs: within the ranges the file was calibrated to
    y = numpy_output(tmp_path, spec, weights, x)
    assert relative_error(y, onnxruntime_output(path, x)) <= BOUND[model][bits == 4]
    if bits == 8:
        assert relative_error(y, onnxruntime_output(float_file(model), x)) <= FLOAT_BOUND[model]
    return y, x


@pytest.mark.parametrize("form", FORMATS)
def test_lenet5_quantized_imports_as_its_float_network(tmp_path, files, form):
    y, x = check_import(tmp_path, files, "lenet5", form)
    # exactly the float network with the dequantized weights: the float file run by onnxruntime with its
    # initializers (named as dlc names them) replaced by the imported checkpoint's
    model = onnx.load(str(files[0]("lenet5")))
    with np.load(tmp_path / "net.npz") as w:
        for t in model.graph.initializer:
            if t.name in w.files:
                t.CopyFrom(numpy_helper.from_array(w[t.name].reshape(tuple(t.dims)), t.name))
    onnx.save(model, str(tmp_path / "dequantized.onnx"))
    assert relative_error(y, onnxruntime_output(tmp_path / "dequantized.onnx", x)) <= 1e-5


@pytest.mark.parametrize("form", ["dynamic", "QDQ", "QDQ int4", "QOperator"])
def test_transformer_quantized_imports_as_its_float_network(tmp_path, files, form):
    check_import(tmp_path, files, "transformer_reverse", form)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["dynamic", "QDQ", "QOperator"])
def test_resnet18_quantized_imports_as_its_float_network(tmp_path, files, form):
    # ResNet-18's Relus are gone from onnxruntime's static files (each output quantized to start at 0 does
    # their work): the spec equals the float one only if the import reads them back
    check_import(tmp_path, files, "resnet18", form)


def test_dequantize_per_tensor_per_axis_and_in_blocks():
    q = np.array([[-8, 7, 0, 1], [2, -2, 4, 6]], np.int8)
    assert dequantize(q, np.array(0.5), np.array(1, np.int8)).tolist() == [[-4.5, 3, -0.5, 0], [0.5, -1.5, 1.5, 2.5]]
    # a scale and zero point per row (axis 0)
    assert dequantize(q, np.array([1.0, 2.0]), np.array([0, 2], np.int8), axis=0).tolist() == \
        [[-8, 7, 0, 1], [0, -8, 4, 8]]
    # blocks of 2 along axis 1: scale[i, j] covers q[i, 2j:2j+2]
    assert dequantize(q, np.array([[1.0, 10.0], [0.5, 2.0]]), None, axis=1, block=2).tolist() == \
        [[-8, 7, 0, 10], [1, -1, 8, 12]]


def tiny(tmp_path, nodes, initializers, opsets=(("", 13), ("com.microsoft", 1))) -> Path:
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    return path


SCALE = {"s": np.array(0.1, np.float32), "z": np.array(0, np.int8)}


@pytest.mark.parametrize("middle, words", [
    # a contrib operator on quantized values with no float form dlc reads
    (helper.make_node("QLinearReduceMean", ["q", "s", "z", "s", "z"], ["r"], name="mean", domain="com.microsoft",
                      axes=[1], keepdims=1),
     "cannot import operator QLinearReduceMean (node `mean`): dlc reads no float form of this quantized operator"),
    # a float operator run on the int8 codes themselves
    (helper.make_node("Abs", ["q"], ["r"], name="abs"),
     "cannot import operator Abs (node `abs`): it computes on the quantized codes of q"),
    (helper.make_node("QLinearAveragePool", ["q", "s", "z", "s", "z"], ["r"], name="pool", domain="com.microsoft",
                      kernel_shape=[1], channels_last=1),
     "cannot import operator QLinearAveragePool (node `pool`): its channels come last"),
])
def test_a_quantized_operator_dlc_cannot_read_is_refused_in_one_line(tmp_path, middle, words):
    path = tiny(tmp_path, [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"), middle,
                           helper.make_node("DequantizeLinear", ["r", "s", "z"], ["y"], name="dequant")], SCALE)
    r = run("import", path, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert words in r.output
    assert not (tmp_path / "net.dlc").exists()


def test_a_model_whose_input_is_already_quantized_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"], name="dequant"),
                               helper.make_node("Relu", ["d"], ["y"])], "q",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(v, k) for k, v in SCALE.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "q.onnx"))
    r = run("import", tmp_path / "q.onnx", "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2, r.output
    assert "cannot import operator DequantizeLinear (node `dequant`): its input x is not quantized by the graph" \
        in r.output


def matmul_model(tmp_path, k: int = 64, n: int = 32) -> Path:
    """x (batch, k) times a stored weight plus a bias: the weight-only quantizers' MatMul."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])]
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
                              [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W"),
                               numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")])
    path = tmp_path / "fc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def test_int4_weights_in_blocks_import_as_onnxruntime_computes_them(tmp_path):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    float_path = matmul_model(tmp_path)
    config = DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False, quant_format=QuantFormat.QDQ)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(float_path)), algo_config=config)
    quantizer.process()
    path = tmp_path / "fc_int4.onnx"
    quantizer.model.save_model_to_file(str(path))
    assert any(a.name == "block_size" and a.i == 16 for n in onnx.load(str(path)).graph.node for a in n.attribute)

    said, spec, weights = imported(path, tmp_path / "net.dlc")
    assert "weights dequantized from uint4 (w = (q - zero_point) * scale, blocks of 16; 2,048 values in 1 tensor)" \
        in said
    # no activation is quantized: the float network with the dequantized weight is the file's computation as
    # ONNX defines it (its reference evaluator); onnxruntime's optimised run differs by 0.4%, since it fuses
    # the DequantizeLinear into its MatMulNBits kernel, which rounds the activations too
    x = samples(path, 8, 1)
    y = numpy_output(tmp_path, spec, weights, x)
    assert relative_error(y, ReferenceEvaluator(str(path)).run(None, {"x": x})[0]) <= 1e-5
    assert relative_error(y, onnxruntime_output(path, x)) <= 0.01
    with np.load(weights) as got:
        assert_on_block_grid(got["fc1.W"], float_path, 16, 4)


def assert_on_block_grid(got: np.ndarray, float_path: Path, block: int, bits: int) -> None:
    """Each imported weight (N, K) within half a step of its block's grid of 2^bits values over [min(w, 0),
    max(w, 0)] of the float weight (K, N) in that block of K."""
    w = numpy_helper.to_array(onnx.load(str(float_path)).graph.initializer[0])
    for start in range(0, w.shape[0], block):
        part = w[start:start + block]
        step = (np.maximum(part.max(0), 0) - np.minimum(part.min(0), 0)) / (2 ** bits - 1)
        assert (np.abs(got.T[start:start + block] - part) <= step / 2 * 1.001 + 1e-7).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_of_4_bit_language_models_imports_as_its_qdq_twin(tmp_path, bits):
    """com.microsoft's MatMulNBits packs what the QDQ form stores in blocks; the same quantizer writes both,
    so both import to the same weight (the QDQ one checked against ONNX's reference evaluator above). K = 40
    is not a whole number of blocks: the last block is padded in the packed form."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    float_path = matmul_model(tmp_path, k=40)
    outputs = {}
    for form in (QuantFormat.QOperator, QuantFormat.QDQ):
        config = DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False, bits=bits, quant_format=form)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(float_path)), algo_config=config)
        quantizer.process()
        path = tmp_path / f"fc_{form.name}.onnx"
        quantizer.model.save_model_to_file(str(path))
        outputs[form] = path, imported(path, tmp_path / f"{form.name}.dlc")
    nbits, (said, spec, weights) = outputs[QuantFormat.QOperator]
    assert [n.op_type for n in onnx.load(str(nbits)).graph.node] == ["MatMulNBits", "Add"]
    assert f"weights dequantized from uint{bits} (w = (q - zero_point) * scale, blocks of 16; 1,280 values" in said
    with np.load(weights) as got, np.load(outputs[QuantFormat.QDQ][1][2]) as qdq:
        assert_on_block_grid(got["fc1.W"], float_path, 16, bits)
        # onnxruntime writes no QDQ form of 8 bits (that file keeps the float weight)
        assert bits == 8 or np.array_equal(got["fc1.W"], qdq["fc1.W"])
    x = samples(nbits, 8, 1)
    assert relative_error(numpy_output(tmp_path, spec, weights, x), onnxruntime_output(nbits, x)) <= 0.01


@pytest.mark.parametrize("form", ["QDQ", "QOperator"])
def test_a_relu6_the_quantizer_dropped_comes_back_when_its_range_ends_at_6(tmp_path, form):
    """onnxruntime drops relu6's Clip and quantizes its output over the calibrated range: starting at 0, and
    ending at 6 when calibration reached 6 (inputs ten times larger here, so that it does)."""
    spec = "input 3@8x8 -> conv 8@3x3 pad=1 relu6 -> conv 8@3x3 pad=1 relu6 -> gap -> fc 4"
    float_path = tmp_path / "float.onnx"
    assert run("export", "-e", spec, "-o", float_path).exit_code == 0
    calibration = Calibration(float_path)
    calibration.feeds = iter({"input": 10 * x[None]} for x in samples(float_path, 16, 0))
    path = tmp_path / "relu6.onnx"
    logging.disable(logging.WARNING)
    try:
        FORMATS[form][0](str(float_path), str(path), calibration)
    finally:
        logging.disable(logging.NOTSET)
    assert "Clip" not in [n.op_type for n in onnx.load(str(path)).graph.node]
    _, got, weights = imported(path, tmp_path / "net.dlc")
    _, want, _ = imported(float_path, tmp_path / "float.dlc")
    assert body(got) == body(want) and "relu6" in want.read_text()
    x = 10 * samples(path, 16, 0)
    assert relative_error(numpy_output(tmp_path, got, weights, x), onnxruntime_output(path, x)) <= BOUND["lenet5"][0]


@pytest.mark.parametrize("form", ["dynamic", "QDQ", "QOperator"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_quantized_pytorch_encoder_imports_as_its_float_network(tmp_path, exporter, form):
    """Two nn.TransformerEncoderLayers as each PyTorch exporter writes them: their weights stored as used,
    so the dynamic quantizer takes every MatMul (MatMulInteger), and TorchScript's Identity copies of the
    weights it stores once (the layernorms' ones) read as the weight they copy."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    import torch_models
    from test_onnx_torch import EXPORTERS

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # its fused operator has no TorchScript export
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    float_path = tmp_path / "encoder.onnx"
    torch_models.export(torch.nn.TransformerEncoder(layer, 2).eval(), float_path, (torch.randn(1, 10, 32),),
                        dynamo=EXPORTERS[exporter])
    path = tmp_path / "quantized.onnx"
    logging.disable(logging.WARNING)
    try:
        FORMATS[form][0](str(float_path), str(path), Calibration(float_path))
    finally:
        logging.disable(logging.NOTSET)
    said, spec, weights = imported(path, tmp_path / "net.dlc")
    _, float_spec, _ = imported(float_path, tmp_path / "float.dlc")
    assert "weights dequantized from int8" in said and body(spec) == body(float_spec)
    if form == "dynamic":
        assert "MatMulInteger" in [n.op_type for n in onnx.load(str(path)).graph.node]
    # one sample at a time: TorchScript fixes the batch at the example's
    x = samples(path, 16, 0)
    want = np.concatenate([onnxruntime_output(path, sample[None]) for sample in x])
    assert relative_error(numpy_output(tmp_path, spec, weights, x), want) <= BOUND["transformer_reverse"][0]
