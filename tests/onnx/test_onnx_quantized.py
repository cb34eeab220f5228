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
           "int4-qdq", "fp16", "fp16-cast")


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
    else:
        # fp16: every operator in float16; fp16-cast: float16 weights, each Cast to float32 before its use
        blocked = {n.op_type for n in onnx.load(twin).graph.node} if fmt == "fp16-cast" else None
        onnx.save(convert_float_to_float16(onnx.load(twin), keep_io_types=True, op_block_list=blocked), out)
    return out


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
    """Every (model, format) onnxruntime writes; ResNet-18's are slow (a 47 MB model per format), and the
    GPT's QOperator file is not made (onnxruntime's quantize_static refuses the graph: "unknown
    initializers/tensors" for the attention's scaled scores)."""
    return [pytest.param(n, f, marks=[pytest.mark.slow] if n == "resnet18" else [])
            for n in names for f in formats if (n, f) != ("gpt", "qoperator")]


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
