"""Weights a file holds without initializers (Constant, ConstantOfShape of a stored shape, Identity chains,
Casts of stored values) count as initializers do, and the old ONNX model zoo the onnx package ships in
light form (onnx/backend/test/data/light, read from the installed package, never copied: IR 3, opset 9,
every weight a ConstantOfShape of a stored shape) is counted and imported truly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dlc.cli import main  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def totals(path) -> dict:
    r = run("summary", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["totals"]


def conv_bn(weight_nodes: list, initializers: list) -> onnx.ModelProto:
    """x 1@3x8x8 -> Conv 4@3x3 (w, b) -> BatchNormalization (g, s, m, v) -> y; the weights made by
    `weight_nodes` from `initializers`."""
    nodes = [*weight_nodes,
             helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "g", "s", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def stored(name, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


FILL = 0.25
STORED_FORMS = {
    "initializers": ([], [stored(k, np.full(d, FILL, np.float32)) for k, d in
                          (("w", (4, 3, 3, 3)), ("b", (4,)), ("g", (4,)), ("s", (4,)), ("m", (4,)), ("v", (4,)))]),
    # the light zoo's form: every weight a fill of a stored shape
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", [f"{k}_shape"], [k],
                                          value=stored("", np.array([FILL], np.float32)))
                         for k in ("w", "b", "g", "s", "m", "v")],
                        [stored(f"{k}_shape", np.array(d, np.int64)) for k, d in
                         (("w", (4, 3, 3, 3)), ("b", (4,)), ("g", (4,)), ("s", (4,)), ("m", (4,)), ("v", (4,)))]),
    "Constant": ([helper.make_node("Constant", [], [k], value=stored("", np.full(d, FILL, np.float32))) for k, d in
                  (("w", (4, 3, 3, 3)), ("b", (4,)), ("g", (4,)), ("s", (4,)))] +
                 [helper.make_node("Constant", [], [k], value_floats=[FILL] * 4) for k in ("m", "v")], []),
    # an optimiser's Identity chains, and a mean and variance read through two of them
    "Identity": ([helper.make_node("Identity", [f"{k}0"], [f"{k}1"]) for k in "wbgsmv"] +
                 [helper.make_node("Identity", [f"{k}1"], [k]) for k in "wbgsmv"],
                 [stored(f"{k}0", np.full(d, FILL, np.float32)) for k, d in
                  (("w", (4, 3, 3, 3)), ("b", (4,)), ("g", (4,)), ("s", (4,)), ("m", (4,)), ("v", (4,)))]),
}
PARAMS, NON_TRAINABLE = 4 * 3 * 3 * 3 + 4 + 4 + 4, 4 + 4  # conv weight and bias, bn scale and shift; mean, var


@pytest.mark.parametrize("form", STORED_FORMS)
def test_stored_weights_count_as_initializers_do(form, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(conv_bn(*STORED_FORMS[form]), str(path))
    t = totals(path)
    assert (t["params"], t["non_trainable"], t["param_bytes"]) == (PARAMS, NON_TRAINABLE, 4 * (PARAMS + NON_TRAINABLE))


@pytest.mark.parametrize("form", STORED_FORMS)
def test_stored_weights_import_with_their_values(form, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(conv_bn(*STORED_FORMS[form]), str(path))
    r = run("import", path, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    arrays = {k: v for k, v in np.load(tmp_path / "net.npz").items() if "." in k}  # not the checkpoint's metadata
    assert sum(v.size for v in arrays.values()) == PARAMS + NON_TRAINABLE
    assert all(np.all(v == FILL) for v in arrays.values())


def test_a_float16_weight_behind_a_cast_is_one_weight_priced_as_stored(tmp_path):
    # the weight's float16 copy, cast for the Conv and read again by a second Cast: one weight of 108 values
    half = [stored(k, np.full(d, FILL, np.float16)) for k, d in
            (("w16", (4, 3, 3, 3)), ("b16", (4,)), ("g16", (4,)), ("s16", (4,)), ("m16", (4,)), ("v16", (4,)))]
    casts = [helper.make_node("Cast", [f"{k}16"], [k], to=TensorProto.FLOAT) for k in "wbgsmv"]
    path = tmp_path / "half.onnx"
    onnx.save_model(conv_bn(casts, half), str(path))
    t = totals(path)
    assert (t["params"], t["non_trainable"], t["param_bytes"]) == (PARAMS, NON_TRAINABLE, 2 * (PARAMS + NON_TRAINABLE))


def conv(c_out: int, c_in: int, k: int, bias: bool = True) -> int:
    return c_out * c_in * k * k + (c_out if bias else 0)


def densenet121() -> tuple[int, int]:
    """DenseNet-121's (conv and fc weights, bn channels): growth 32, bottleneck 128, blocks 6-12-24-16."""
    weights, bn, c = conv(64, 3, 7, bias=False), 64, 64
    for block, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            weights, bn, c = weights + conv(128, c, 1, False) + conv(32, 128, 3, False), bn + c + 128, c + 32
        if block < 3:  # the transition halves the channels
            weights, bn, c = weights + conv(c // 2, c, 1, False), bn + c, c // 2
    return weights + conv(1000, c, 1), bn + c  # the classifier is a 1x1 conv with bias


def resnet50_bn() -> int:
    """ResNet-50's bn channels: the stem's, each bottleneck's (w, w, 4w) and each stage's projection (4w)."""
    return 64 + sum(blocks * 6 * w + 4 * w for blocks, w in ((3, 64), (4, 128), (6, 256), (3, 512)))


DENSENET_WEIGHTS, DENSENET_BN = densenet121()
# (trainable, non-trainable) parameters of the files, from their sources' published figures
LIGHT_PARAMS = {
    # BVLC's two-tower AlexNet (conv2, 4, 5 in two groups), as the Caffe model zoo gives it
    "light_bvlc_alexnet": (conv(96, 3, 11) + conv(256, 48, 5) + conv(384, 256, 3) + conv(384, 192, 3)
                           + conv(256, 192, 3) + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000, 0),
    "light_vgg19": (143_667_240, 0),  # Simonyan and Zisserman's table 2 (144 M), exactly as torchvision counts it
    "light_squeezenet": (1_235_496, 0),  # SqueezeNet 1.1, as torchvision counts it
    "light_inception_v1": (6_998_552, 0),  # BVLC GoogLeNet without its auxiliary classifiers
    # Caffe2's ResNet-50: torchvision's 25,557,032 trainable, the bn running mean and variance beside them
    "light_resnet50": (25_557_032, 2 * resnet50_bn()),
    # Caffe's DenseNet-121 writes each bn as a BatchNormalization whose scale and shift are fixed at 1 and 0,
    # followed by a learned Scale layer (Mul and Add): the file holds 2 values per channel more than
    # torchvision's 7,978,856 (which has one learned scale and shift per channel)
    "light_densenet121": (DENSENET_WEIGHTS + 4 * DENSENET_BN, 2 * DENSENET_BN),
}
# AlexNet at the file's 3@224x224: conv1 gives 54x54, the pools 26 and 12 (the published 227 gives 55)
ALEXNET_MACS = (54 * 54 * 96 * 3 * 11 * 11 + 26 * 26 * 256 * 48 * 5 * 5 + 12 * 12 * 384 * 256 * 3 * 3
                + 12 * 12 * 384 * 192 * 3 * 3 + 12 * 12 * 256 * 192 * 3 * 3 + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)


def test_densenet_121_derivation_matches_torchvision():
    assert DENSENET_WEIGHTS + 2 * DENSENET_BN == 7_978_856


@pytest.mark.parametrize("model", LIGHT_PARAMS)
def test_the_light_zoo_counts_its_sources_parameters(model):
    t = totals(LIGHT / f"{model}.onnx")
    assert (t["params"], t["non_trainable"]) == LIGHT_PARAMS[model]


@pytest.mark.parametrize("model, spec", [("light_vgg19", "vgg19"), ("light_resnet50", "resnet50")])
def test_the_light_zoo_counts_the_macs_of_the_spec_zoo(model, spec):
    assert totals(LIGHT / f"{model}.onnx")["macs"] == totals(spec)["macs"]


def test_alexnet_macs_by_hand():
    assert totals(LIGHT / "light_bvlc_alexnet.onnx")["macs"] == ALEXNET_MACS == 654_560_384


ort = pytest.importorskip("onnxruntime")
TOLERANCE = 1e-4  # relative to the largest output, as tests/onnx/test_onnx_import.py allows


def onnxruntime_output(path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def imports_and_reproduces(path, tmp_path, x: np.ndarray, expected: np.ndarray | None = None) -> str:
    """Import the model at `path`, run the spec on dlc's NumPy engine, compare with onnxruntime on the file
    (and with `expected`); the spec's text."""
    r = run("import", path, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "x.npy", x)
    r = run("infer", tmp_path / "net.dlc", "--weights", tmp_path / "net.npz", "--engine", "numpy",
            "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "y.npy")
    for ref in (onnxruntime_output(path, x), *([] if expected is None else [expected])):
        assert y.shape == ref.shape and np.abs(y - ref).max() <= TOLERANCE * np.abs(ref).max()
    return (tmp_path / "net.dlc").read_text()


def small(nodes: list, initializers: dict, in_shape: tuple, opset: int = 9) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [stored(k, v) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def saved(m: onnx.ModelProto, tmp_path) -> Path:
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx"


RNG = np.random.default_rng(0)


def test_a_pool_padded_over_its_whole_input_imports_as_the_whole_window(tmp_path):
    # Caffe2's GoogLeNet ends so: a 7x7 average, padded 1 at the bottom and right, over a 6x6 input
    m = small([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[7, 7], pads=[0, 0, 1, 1])], {},
              (1, 8, 6, 6))
    spec = imports_and_reproduces(saved(m, tmp_path), tmp_path, RNG.standard_normal((1, 8, 6, 6)).astype(np.float32))
    assert "avgpool 6x6 " in spec


def test_a_global_pool_read_as_an_image_imports_as_gap_keep(tmp_path):
    # SqueezeNet's end: the global average of the class maps, then a softmax over its channels (opset 9)
    m = small([helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Softmax", ["p"], ["y"])], {},
              (1, 10, 5, 5))
    spec = imports_and_reproduces(saved(m, tmp_path), tmp_path, RNG.standard_normal((1, 10, 5, 5)).astype(np.float32))
    assert "gap keep softmax" in spec


def test_a_softmax_before_opset_13_over_channels_and_positions_is_refused(tmp_path):
    # opset 9's Softmax normalises the 4 channels and 2x2 positions as one of 16 values, dlc's the channels
    m = small([helper.make_node("Softmax", ["x"], ["y"])], {}, (1, 4, 2, 2))
    r = run("import", saved(m, tmp_path), "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and "Softmax" in r.output and "together" in r.output, r.output


def test_a_caffe_scale_after_batch_norm_folds_into_it(tmp_path):
    # DenseNet's and BN-Inception's form: a BatchNormalization of scale 1 and shift 0, then Caffe's Scale
    # layer as Mul and Add of stored (C,) vectors unsqueezed to (C, 1, 1)
    c = 6
    weights = {"one": np.ones(c, np.float32), "zero": np.zeros(c, np.float32),
               "mean": RNG.standard_normal(c).astype(np.float32), "var": RNG.uniform(0.5, 2, c).astype(np.float32),
               "s": RNG.standard_normal(c).astype(np.float32), "b": RNG.standard_normal(c).astype(np.float32)}
    m = small([helper.make_node("BatchNormalization", ["x", "one", "zero", "mean", "var"], ["n"]),
               helper.make_node("Unsqueeze", ["s"], ["s3"], axes=[1, 2]), helper.make_node("Mul", ["n", "s3"], ["m"]),
               helper.make_node("Unsqueeze", ["b"], ["b3"], axes=[1, 2]), helper.make_node("Add", ["m", "b3"], ["y"])],
              weights, (1, c, 4, 4))
    path = saved(m, tmp_path)
    spec = imports_and_reproduces(path, tmp_path, RNG.standard_normal((1, c, 4, 4)).astype(np.float32))
    assert [line.split("#")[0].strip() for line in spec.splitlines()[1:]] == ["input 6@4x4", "bn"]
    arrays = np.load(tmp_path / "net.npz")
    assert np.allclose(arrays["bn1.gamma"], weights["s"]) and np.allclose(arrays["bn1.beta"], weights["b"])
    # the file holds 4 learnable values per channel, the network they compute 2
    assert totals(path)["params"] == 4 * c


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light model with each ConstantOfShape fill made a random initializer of its shape, so that the
    classes differ (with every weight 0.02, every class scores the same): He's scale for kernels and
    matrices, 0.5 to 1.5 for vectors (bn variances must be positive). It ends at the logits: a softmax of
    random weights' logits is 1 for one class and 0 for the rest, and would hide any difference."""
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    fills = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    weights = []
    for n in fills:
        shape = shapes[n.input[0]].tolist()
        v = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:])) if len(shape) > 1 else \
            rng.uniform(0.5, 1.5, shape)
        weights.append(numpy_helper.from_array(v.astype(np.float32), n.output[0]))
    g = model.graph
    nodes = [n for n in g.node if n.op_type != "ConstantOfShape"]
    output = g.output
    if nodes[-1].op_type == "Softmax":
        logits = nodes.pop().input[0]
        output = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, g.name, g.input, output, [*g.initializer, *weights])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def shipped_input(model: onnx.ModelProto) -> np.ndarray:
    """The input onnx's backend runner feeds a light model to get its shipped output: 0, 1/n, 2/n, ..."""
    stored = {t.name for t in model.graph.initializer}  # IR 3 lists every initializer as an input too
    x = next(v for v in model.graph.input if v.name not in stored)
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    return (np.arange(np.prod(shape)).reshape(shape) / np.prod(shape)).astype(np.float32)


# SqueezeNet runs in seconds on the NumPy engine, in every test session; the rest run when slow tests do.
# ShuffleNet's channel shuffle (Reshape, Transpose, Reshape) has no dlc kind.
QUICK = ["light_squeezenet"]
SLOW = ["light_inception_v1", "light_bvlc_alexnet", "light_densenet121", "light_inception_v2", "light_resnet50",
        "light_zfnet512", "light_vgg19"]


@pytest.mark.parametrize("model", QUICK + [pytest.param(m, marks=pytest.mark.slow) for m in SLOW])
def test_the_light_zoo_imports_and_reproduces_onnxruntime(model, tmp_path):
    original = onnx.load(str(LIGHT / f"{model}.onnx"))
    x = shipped_input(original)
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"{model}_output_0.pb")))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    imports_and_reproduces(LIGHT / f"{model}.onnx", shipped, x, expected)
    imports_and_reproduces(saved(randomized(original), tmp_path), tmp_path, RNG.random(x.shape, np.float32))


def test_shufflenet_is_refused_naming_its_channel_shuffle(tmp_path):
    r = run("import", LIGHT / "light_shufflenet.onnx", "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "Reshape" in r.output, r.output


def test_a_reason_two_kinds_give_is_said_once(tmp_path):
    # conv and dwconv both decline a Conv whose weight the graph computes (a Relu of a stored tensor)
    m = small([helper.make_node("Relu", ["w0"], ["w"]),
               helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
              {"w0": np.ones((4, 3, 3, 3), np.float32)}, (1, 3, 8, 8))
    r = run("import", saved(m, tmp_path), "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and r.output.count("computed by the graph") == 1, r.output


def test_a_fill_of_terabytes_is_refused_before_it_is_made(tmp_path):
    # a few bytes of file ask ConstantOfShape for 4x3x3x3 x 10^12 floats
    m = small([helper.make_node("ConstantOfShape", ["s"], ["w"], value=stored("", np.array([0.5], np.float32))),
               helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
              {"s": np.array([4, 3, 3, 3, 10 ** 6, 10 ** 6], np.int64)}, (1, 3, 8, 8), opset=17)
    r = run("import", saved(m, tmp_path), "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "ConstantOfShape w" in r.output and "TiB" in r.output
