"""`dlc export` for other tools: the lowest opset by default, and models over 2 GB as external data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import predict
from dlc.graph import Network
from dlc.onnx import export
from dlc.onnx.model import read_model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_default_opset_is_the_lowest_that_gives_every_layer_its_operator():
    # opset 13 has every operator dlc lowers to but Gelu, which came in opset 20, RMSNormalization and
    # RotaryEmbedding (23); silu and mul are Sigmoid and Mul, in every opset
    for text, opset in (("input 4 -> fc 3 relu -> fc 2 softmax", 13), ("input 4 -> fc 3 gelu", 20),
                        ("input seq 5 -> embed 4 vocab=9 -> lstm 3", 13),
                        ("input 4 -> mul( fc 3 silu | fc 3 )", 13), ("input 4 -> rmsnorm -> fc 3 gelu", 23),
                        ("input seq 5 of 8 -> attention 2 kv=1 causal window=2", 13),
                        ("input seq 5 of 8 -> attention 2 rope -> fc 3 gelu", 23)):
        graph = compile_spec(text)
        params, state = init_params(graph)
        model = export.to_onnx(Network(graph, params, state))
        assert model.opset_import[0].version == opset, text
        assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)


def test_opset_range_is_stated_and_enforced(tmp_path):
    assert "ONNX opset, 13 to 23" in run("export", "--help").output
    r = run("export", "-e", "input 4 -> fc 2", "-o", tmp_path / "m.onnx", "--opset", 24)
    assert r.exit_code == 2 and "13 to 23" in r.output
    assert run("export", "-e", "input 4 -> fc 2", "-o", tmp_path / "m.onnx", "--opset", 18).exit_code == 0


def test_a_model_over_the_limit_is_saved_with_external_data(tmp_path):
    """The 2 GB limit lowered to 1 kB: the path a 2.3 GB fc 140000 takes, in milliseconds."""
    graph = compile_spec("input 16 -> fc 64 relu -> fc 8")
    params, state = init_params(graph, seed=1)
    model = export.to_onnx(Network(graph, params, state), data_file="big.onnx.data", limit=1024)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    export.check_export(model, Network(graph, params, state))  # the checker sees the graph without the weights
    path = tmp_path / "big.onnx"
    data = export.save_model(model, path, {**state, **params})
    assert data == str(tmp_path / "big.onnx.data") and os.path.getsize(data) >= 4 * (16 * 64 + 64 * 8)
    assert os.path.getsize(path) < 4096
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]  # no temporary left behind
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(y, predict(Network(graph, params, state), x), rtol=1e-5, atol=1e-6)
    loaded = read_model(str(path), weights=True)
    assert export.weights_of(loaded, graph)[0].keys() == params.keys()
    doc = run("params", path, "--json")
    assert doc.exit_code == 0 and '"params": 1608' in doc.output  # 16*64 + 64 + 64*8 + 8
