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
