"""`dlc export --dtype fp16|bf16`: the model in half precision agrees with the float32 model within what
the type's rounding allows, stores 2 bytes a weight, and the analysis reports the halved size.

The bound: float16 keeps 10 mantissa bits, so each rounding errs by at most u = 2^-11 (about 4.9e-4) of
the value; bfloat16 keeps 7, u = 2^-8 (3.9e-3). LeNet-5 rounds its input, its weights and each of its
layers' outputs once; errors of independent roundings mostly cancel, and the measured difference is
below u (3.1e-4 and 3.1e-3 of the largest output). The tests allow 4u: a systematic error (a layer left
in float32 and cast twice, a weight rounded twice) would not stay within it on every seed.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from model_outputs import outputs, run

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
MNIST = REPO.parent / "shared" / "data" / "mnist.pkl.gz"
UNIT_ROUNDOFF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
STORED = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
LENET_PARAMS = 61_706  # conventions.md's LeNet-5


@pytest.fixture(scope="module")
def lenets(tmp_path_factory):
    """LeNet-5 from the zoo with the same fresh weights, exported in each precision."""
    folder = tmp_path_factory.mktemp("lenet")
    paths = {}
    for dtype in ("fp32", "fp16", "bf16"):
        paths[dtype] = folder / f"lenet5.{dtype}.onnx"
        r = run("export", "lenet5", "--dtype", dtype, "-o", paths[dtype])
        assert r.exit_code == 0, r.output
    return paths


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_lenet5_in_half_precision_agrees_with_float32_within_the_types_rounding(lenets, dtype):
    x = np.random.default_rng(7).standard_normal((32, 1, 32, 32)).astype(np.float32)
    ref, low = outputs(lenets["fp32"], x), outputs(lenets[dtype], x)
    assert low.dtype == np.float32 and low.shape == (32, 10)  # float32 output through the last Cast
    rel = np.abs(low - ref).max() / np.abs(ref).max()
    assert 0 < rel <= 4 * UNIT_ROUNDOFF[dtype], rel  # 0 would mean nothing was rounded
    assert (low.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_weights_are_stored_in_two_bytes_and_summary_reports_half_the_size(lenets, dtype):
    model = onnx.load(lenets[dtype])
    assert {t.data_type for t in model.graph.initializer} == {STORED[dtype]}
    assert sum(len(t.raw_data) for t in model.graph.initializer) == 2 * LENET_PARAMS
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 in, float32 out
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    sizes = {}
    for d in ("fp32", dtype):
        r = run("params", lenets[d], "--json")
        assert r.exit_code == 0, r.output
        sizes[d] = json.loads(r.output)["totals"]["param_bytes"]
    assert sizes == {"fp32": 4 * LENET_PARAMS, dtype: 2 * LENET_PARAMS}
    r = run("summary", lenets[dtype])
    assert f"(120.52 KiB as {dtype})" in r.output  # 123,412 bytes / 1024


def test_export_says_which_operators_stay_float32_and_how_far_the_output_moved(tmp_path):
    r = run("export", "lenet5", "--dtype", "bf16", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    # ONNX's Conv takes bfloat16 only from opset 22, so at LeNet's opset 13 it cannot compute in it
    kept = r.output.split("bfloat16: weights, and computation but for ")[1].split(" (in float32: ")[0]
    assert "Conv" in kept.split(", ")
    assert "(in float32: no bfloat16 kernel in onnxruntime's CPU provider)" in r.output
    assert "against the float32 model on 8 random samples" in r.output


def test_a_token_model_in_float16_keeps_its_integer_input(tmp_path):
    paths = {d: tmp_path / f"t.{d}.onnx" for d in ("fp32", "fp16")}
    for d, p in paths.items():
        r = run("export", "transformer_reverse", "--dtype", d, "-o", p)
        assert r.exit_code == 0, r.output
    x = np.random.default_rng(0).integers(0, 16, (16, 12))
    ref, low = outputs(paths["fp32"], x), outputs(paths["fp16"], x)
    assert onnx.load(paths["fp16"]).graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    # two blocks of attention and MLP: more roundings in a row than LeNet's, still within 8u
    assert np.abs(low - ref).max() / np.abs(ref).max() <= 8 * UNIT_ROUNDOFF["fp16"]


@pytest.mark.parametrize("args, message", [
    (["--dtype", "fp8"], "'fp8' is not one of 'fp32', 'fp16', 'bf16'"),
    (["--dtype", "int8"], "'int8' is not one of"),
    (["--dtype", "fp16", "--format", "pytorch"], "--dtype fp16 goes with --format onnx"),
])
def test_a_bad_dtype_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / ("m.py" if "pytorch" in args else "m.onnx")
    r = run("export", "lenet5", *args, "-o", out)
    assert r.exit_code == 2 and message in r.output, r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output and not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="needs ../shared/data/mnist.pkl.gz")
def test_a_lenet5_trained_on_mnist_predicts_the_same_digits_in_half_precision(tmp_path):
    with gzip.open(MNIST) as f:
        (xtr, ytr), _, (xte, _) = pickle.load(f, encoding="latin1")
    pad = lambda x: np.pad(x.reshape(-1, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2)))  # noqa: E731 --reshape's centring
    np.savez(tmp_path / "train.npz", x=pad(xtr[:6000]), y=ytr[:6000])
    r = run("train", "lenet5", "--data", tmp_path / "train.npz", "--epochs", 2, "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    x = pad(xte).astype(np.float32)
    ys = {}
    for d in ("fp32", "fp16", "bf16"):
        path = tmp_path / f"{d}.onnx"
        r = run("export", "lenet5", "--weights", tmp_path / "run" / "best.npz", "--dtype", d, "-o", path)
        assert r.exit_code == 0, r.output
        ys[d] = outputs(path, x)
    # A digit changes only where its two best classes are closer than the rounding: on 10,000 test
    # digits of a net at ~95% accuracy, measured 9,999 of 10,000 in both types.
    assert (ys["fp16"].argmax(1) == ys["fp32"].argmax(1)).mean() >= 0.999
    assert (ys["bf16"].argmax(1) == ys["fp32"].argmax(1)).mean() >= 0.995


@pytest.mark.parametrize("dtype, casts", [
    # every operator computes in float16: the input's Cast down and the output's Cast up, nothing else
    ("fp16", 2),
    # bfloat16 on the CPU (onnxruntime 1.31): only Flatten computes in it; its 10 weights are cast up for the float32
    # operators that read them, and Flatten's input down and output up: one Cast per crossing, so the
    # float32 run from the input to the second pooling passes float32 along without a Cast
    ("bf16", 10 + 2),
])
def test_a_cast_stands_only_where_a_reader_needs_the_other_precision(lenets, dtype, casts):
    nodes = onnx.load(lenets[dtype]).graph.node
    assert sum(n.op_type == "Cast" for n in nodes) == casts
