"""`dlc infer` and `dlc bench` on ONNX models dlc did not write: free dimensions, several inputs and
outputs, token ids, external data, a fixed batch, float16, and the models dlc cannot feed."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dlc.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def save(path, nodes, inputs, outputs, initializers=(), **kwargs):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path),
                    **kwargs)
    return path


def value(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def pooled_conv(path, dims, **kwargs):
    """x -> Conv 2@1x1 (weights all 1) -> GlobalAveragePool -> Flatten: y = 2 copies of the mean of
    x's channel sum."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    return save(path, [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["y"])],
                [value("x", dims)], [value("y", [dims[0], 2])], [w], **kwargs)


def test_free_dimensions_need_shape(tmp_path):
    path = pooled_conv(tmp_path / "free.onnx", ["N", 3, "H", "W"])
    r = run("infer", path, "--random", 2)
    assert r.exit_code == 2 and "free: H, W" in r.stderr and "Traceback" not in r.stderr
    r = run("infer", path, "--random", 2, "--shape", "3@5x7", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input_shape"] == [2, 3, 5, 7]
    r = run("bench", path, "--shape", "3@5x7", "--batch", "1,2", "--runs", 2, "--warmup", 0, "--json")
    assert [row["batch"] for row in json.loads(r.stdout)["results"]] == [1, 2]
    assert run("bench", path, "--runs", 1).exit_code == 2


def test_a_static_batch_one_model_benches_at_its_batch(tmp_path):
    path = pooled_conv(tmp_path / "one.onnx", [1, 3, 4, 4])
    r = run("bench", path, "--runs", 2, "--warmup", 0, "--json")
    assert r.exit_code == 0, r.output
    assert [row["batch"] for row in json.loads(r.stdout)["results"]] == [1]
    r = run("bench", path, "--batch", 8, "--runs", 1)
    assert r.exit_code == 2 and "exported for batch 1" in r.stderr


def test_external_data_is_passed_to_onnxruntime_by_path(tmp_path, monkeypatch):
    path = pooled_conv(tmp_path / "ext.onnx", ["N", 3, 4, 4], save_as_external_data=True,
                       location="ext.onnx.data", size_threshold=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.chdir(tmp_path.parent)  # the data file is found beside the model, not in the working folder
    r = run("infer", path, "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    expected = np.repeat(x.sum(axis=1).mean(axis=(1, 2))[:, None], 2, axis=1)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5)


def two_in_two_out(path):
    """y = a + b and z = sigmoid(a), with T free."""
    return save(path, [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Sigmoid", ["a"], ["z"])],
                [value("a", ["N", "T", 3]), value("b", ["N", "T", 3])], [value("y", ["N", "T", 3]),
                                                                         value("z", ["N", "T", 3])])


def test_several_inputs_from_an_npz_and_every_output_shown(tmp_path):
    path = two_in_two_out(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 4, 3)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    r = run("infer", path, "--input", tmp_path / "ab.npz", "--json", "--out", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [o["name"] for o in doc["outputs"]] == ["y", "z"]
    with np.load(tmp_path / "y.npz") as saved:
        np.testing.assert_allclose(saved["y"], a + b, rtol=1e-6)
        np.testing.assert_allclose(saved["z"], 1 / (1 + np.exp(-a)), rtol=1e-5)
    text = run("infer", path, "--input", tmp_path / "ab.npz").stdout
    assert "output y (2, 4, 3)" in text and "output z (2, 4, 3)" in text
    np.savez(tmp_path / "a.npz", a=a)
    r = run("infer", path, "--input", tmp_path / "a.npz")
    assert r.exit_code == 2 and "no array named b" in r.stderr
    np.save(tmp_path / "a.npy", a)
    assert "one array per input name" in run("infer", path, "--input", tmp_path / "a.npy").stderr
    assert "Y.npz" in run("infer", path, "--input", tmp_path / "ab.npz", "--out", tmp_path / "y.npy").stderr


def test_several_inputs_drawn_at_random_and_benched(tmp_path):
    path = two_in_two_out(tmp_path / "two.onnx")
    assert "NAME=SHAPE" in run("infer", path, "--random", 2).stderr
    r = run("infer", path, "--random", 2, "--shape", "a=4x3", "--shape", "b=4x3", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"] == {"a": [2, 4, 3], "b": [2, 4, 3]}
    r = run("bench", path, "--shape", "a=4x3", "--shape", "b=4x3", "--batch", 3, "--runs", 2, "--warmup", 0)
    assert r.exit_code == 0, r.output


def test_token_ids_are_drawn_inside_the_embeddings_vocabulary(tmp_path):
    table = numpy_helper.from_array(np.arange(7, dtype=np.float32)[:, None].repeat(4, axis=1), "table")
    path = save(tmp_path / "embed.onnx", [helper.make_node("Gather", ["table", "ids"], ["e"])],
                [value("ids", ["N", 5], TensorProto.INT64)], [value("e", ["N", 5, 4])], [table])
    r = run("infer", path, "--random", 40, "--json")
    assert r.exit_code == 0, r.output
    rows = np.array(json.loads(r.stdout)["output"])  # each row of the table holds its own index
    assert rows.min() >= 0 and rows.max() <= 6 and len(np.unique(rows)) > 2
    np.savez(tmp_path / "ids.npz", x=np.array([[0, 1, 2, 3, 9]]))
    r = run("infer", path, "--input", tmp_path / "ids.npz")
    assert r.exit_code == 2 and "0..6" in r.stderr


def test_a_float16_model_is_fed_float16(tmp_path):
    path = save(tmp_path / "half.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                [value("x", ["N", 6], TensorProto.FLOAT16)], [value("y", ["N", 6], TensorProto.FLOAT16)])
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 6)
    np.save(tmp_path / "x.npy", x)
    r = run("infer", path, "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float16 and np.array_equal(y, np.maximum(x.astype(np.float16), 0))
    assert run("bench", path, "--runs", 1, "--warmup", 0, "--batch", 2).exit_code == 0


def test_models_dlc_cannot_feed_are_refused(tmp_path):
    const = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    cases = {
        "no inputs": save(tmp_path / "none.onnx", [const], [], [value("y", [2])]),
        "a scalar (rank 0)": save(tmp_path / "scalar.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                                  [value("x", [])], [value("y", [])]),
        "no known rank": save(tmp_path / "rankless.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        "tensor(string)": save(tmp_path / "text.onnx", [helper.make_node("Identity", ["x"], ["y"])],
                               [value("x", ["N", 2], TensorProto.STRING)], [value("y", ["N", 2], TensorProto.STRING)]),
    }
    for message, path in cases.items():
        for command in (("infer", path, "--random", 1), ("bench", path, "--runs", 1)):
            r = run(*command)
            assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr, (command, r.output)
