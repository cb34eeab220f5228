"""`dlc import`: models PyTorch exported (both exporters) become a spec and a checkpoint that reproduce
onnxruntime's outputs on the original file, through dlc's NumPy engine and through dlc's own export.

The expectation is onnxruntime's output on the file PyTorch wrote, never dlc's own figures.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.graph import Network

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

import torch_models  # noqa: E402
from test_onnx_torch import EXPORTERS, with_distinct_bn  # noqa: E402

TOLERANCE = 1e-4  # relative to the largest output


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def onnxruntime_output(path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def assert_runs_as_onnxruntime(tmp_path, spec, weights, path, x: np.ndarray) -> None:
    """The imported spec and weights, run by `dlc infer` on the NumPy engine, give the original's outputs."""
    np.save(tmp_path / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert relative_error(np.load(tmp_path / "y.npy"), onnxruntime_output(path, x)) <= TOLERANCE


def imported(tmp, path):
    r = run("import", path, "-o", tmp / "net.dlc")
    assert r.exit_code == 0, r.output
    return tmp / "net.dlc", tmp / "net.npz"


@pytest.fixture(scope="session", params=[(n, e) for n in ("resnet18", "mobilenet_v2", "googlenet")
                                         for e in EXPORTERS], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    """Each model exported once per session, with random bn statistics so folded biases are not zero; its
    folder (up to 135 MB of files) goes when the tests of that model and exporter are done."""
    name, exporter = request.param
    net = with_distinct_bn(getattr(torch_models, name)())
    folder = tmp_path_factory.mktemp(f"import_{name}_{exporter}")
    torch_models.export(net, folder / f"{name}.onnx", (torch.randn(1, 3, 224, 224),), dynamo=EXPORTERS[exporter])
    yield folder, folder / f"{name}.onnx"
    shutil.rmtree(folder)


def test_googlenet_fixture_has_torchvisions_parameter_count():
    assert sum(p.numel() for p in torch_models.googlenet().parameters()) == 6_624_904


def test_round_trip_reproduces_onnxruntime_on_the_original(exported):
    folder, path = exported
    spec, weights = imported(folder, path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_reproduces(folder, spec, weights, x, onnxruntime_output(path, x))


def assert_reproduces(folder, spec, weights, x: np.ndarray, ref: np.ndarray) -> None:
    """The imported spec and weights give `ref` on x through dlc's NumPy engine and through dlc's export."""
    np.save(folder / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", folder / "x.npy",
            "--out", folder / "y_numpy.npy")
    assert r.exit_code == 0, r.output
    assert relative_error(np.load(folder / "y_numpy.npy"), ref) <= TOLERANCE

    r = run("export", spec, "--weights", weights, "-o", folder / "back.onnx")
    assert r.exit_code == 0, r.output
    assert relative_error(onnxruntime_output(folder / "back.onnx", x), ref) <= TOLERANCE


# Every kind an ONNX pattern imports, through dlc's own lowerings (the TorchScript-style Erf form of
# gelu at opset 13, the Gelu operator at 20).
KIND_SPECS = {
    "image": "input 3@16x16 -> conv 8@3x3 pad=1 bn relu -> dwconv 3x3/2 pad=same mult=2 bias=off bn relu6 "
             "-> lrn 5 -> conv 8@3x3 dil=2 pad=2 groups=2 elu alpha=0.5 -> add( conv 8@1x1 leaky alpha=0.2 "
             "| identity ) -> concat( maxpool 3/1 pad=1 ceil | avgpool 3/1 pad=1 ) -> upconv 4@2x2/2 selu "
             "-> upsample 2 -> maxpool 2 -> conv 4@3x3 pad=1 gelu sigmoid tanh -> gap -> dropout 0.3 "
             "-> fc 10 softmax",
    "vector": "input 2@4x4 -> conv 4@3x3 -> gmp -> bn -> fc 3 bias=off -> flatten -> fc 2",
    # issue 28: rank-3 and rank-5 Conv, pools and BatchNormalization, and per-axis pads
    "signal": "input 2@60 -> conv 4@5/2 pad=same bn relu -> maxpool 3/2 pad=1 ceil -> dwconv 3 pad=1 mult=2 "
              "-> avgpool 2 -> conv 4@3 dil=2 -> gmp -> fc 3",
    "volume": "input 2@5x12x12 -> conv 4@3x5x5/1x2x2 pad=1x2x2 bias=off bn relu -> maxpool 1x2x2 "
              "-> dwconv 3 pad=1 -> avgpool 2 ceil -> conv 6@1 groups=2 -> gap -> fc 3",
    "flatten": "input 2@4x4 -> flatten -> fc 3",
    "sequence": "input seq 6 -> embed 4 vocab=9 -> rnn 3 bidirectional sequences -> gru 3 sequences "
                "-> lstm 5 bidirectional -> fc 2 softmax",
    # layernorm from its operator at opset 20, from its ReduceMean/Sub/Mul/Sqrt/Div form at 13
    "transformer": "input seq 6 of 8 -> posembed -> layernorm -> fc 16 gelu -> fc 8 -> clstoken "
                   "-> layernorm eps=1e-6 -> seqpool first -> fc 3 softmax",
    "attention": "input seq 5 of 8 -> add( layernorm -> attention 2 causal | identity ) -> attention 4 bias=off "
                 "-> layernorm -> attention 1 -> seqpool mean -> fc 3",
    # kv heads, rope (its cos/sin tables below opset 23) and a window, as Llama and Mistral have them
    "llama attention": "input seq 6 of 16 -> attention 4 kv=2 rope=500000 causal window=3 bias=off -> layernorm "
                       "-> attention 2 kv=1 rope causal -> seqpool mean -> fc 3",
    # Whisper's keys without a bias: read as keybias=off, not as a bias of zeros
    "keys without bias": "input 4@4x4 -> tokens -> attention 2 window=2x2 keybias=off -> attention 2 keybias=off "
                         "-> attention 2 kv=1 keybias=off -> seqpool mean -> fc 3",
    "patches": "input 3@8x8 -> conv 8@2x2/2 -> tokens -> clstoken -> posembed -> seqpool mean -> fc 4",
    "last step": "input seq 5 of 4 -> fc 6 relu -> seqpool last",
    # rmsnorm from its Mul/ReduceMean/Add/Sqrt/Div form (below 23) and RMSNormalization (23); silu from
    # Sigmoid times x; mul of equal shapes and of a feature vector (through its Unsqueeze)
    "llama": "input seq 6 of 8 -> add( rmsnorm -> mul( fc 12 silu bias=off | fc 12 bias=off ) -> fc 8 bias=off "
             "| identity ) -> rmsnorm eps=1e-6 -> mul( seqpool -> fc 8 | identity ) -> fc 3",
    "squeeze-excite": "input 4@6x6 -> conv 4@3x3 pad=1 swish -> mul( identity | gap -> fc 2 relu -> fc 4 sigmoid ) "
                      "-> gap -> fc 3",
    # the math kinds of issue 28; glu from its Split, whose sizes are an input from opset 13
    "math": "input 4@6x6 -> conv 8@3x3 prelu channels -> glu -> softplus -> sqrt -> clip min=-1 max=1.2 -> softsign "
            "-> neg -> abs -> exp -> clip max=2 -> prelu -> shift channels -> softmax axis=-1 "
            "-> reduce sum axis=1 keep -> reduce axis=1 -> logsoftmax axis=0 -> glu axis=1 -> prelu channels -> shift "
            "-> reduce axis=0 -> fc 3 logsoftmax",
    # group norm on an image and a signal, its gamma and beta non-trivial (issue 22)
    "groupnorm": "input 4@6x6 -> conv 8@3x3 pad=1 -> groupnorm 4 eps=1e-6 silu -> conv 6@3x3 -> groupnorm 3 -> gap "
                 "-> fc 3",
    # today's vision networks (issue 21): hardswish from HardSigmoid times x, hardsigmoid, gap keep and the
    # broadcast mul of squeeze-and-excite with 1x1 convs, layernorm channels between Transposes (its operator at
    # 20, its decomposed form at 13), scale from a Mul by a stored (C, 1, 1); droppath exports as no operator
    "vision": "input 4@8x8 -> conv 8@3x3 pad=1 hardswish -> mul( identity | gap keep -> conv 2@1x1 relu -> conv 8@1x1 hardsigmoid ) -> layernorm channels eps=1e-6 -> add( dwconv 3x3 pad=1 -> scale init=0.5 -> droppath 0.1 | identity ) -> gmp keep -> conv 3@1x1 -> gap -> layernorm -> fc 3",
    # padding and resampling (issue 28)
    "resampling": "input 3@8x8 -> pad 3 mode=reflect -> conv 4@7x7 instancenorm relu -> pad 0 bottom=1 right=2 value=1.5 "
                  "-> pad 1 mode=replicate -> conv 2@3x3 -> upconv 3@3x3/2 pad=1 outpad=1 -> conv 8@1x1 -> pixelshuffle 2 -> maxpool 3/2 pad=1x0 dil=2 -> tile 2@2x1 -> slice 2 start=1 -> slice 3 start=-3 axis=height -> reshape 6@3x6 -> gap -> fc 3",
    # Swin: windows of a token grid, shifted, and a window as large as the grid; patchmerge
    "swin": "input 3@16x16 -> conv 8@2x2/2 -> tokens -> layernorm -> attention 2 window=4x4 shift=2 -> patchmerge "
            "-> layernorm -> fc 16 bias=off -> attention 2 window=4x4 bias=off -> seqpool -> fc 3",
    # tokens and back to an image (Stable Diffusion's spatial transformer), then a grid written
    "back_to_an_image": "input 4@4x6 -> conv 6@1x1 -> tokens -> layernorm -> attention 2 -> fc 6 -> image -> conv 4@3x3 "
             "-> tokens -> image 2x4 -> gap -> fc 3",
}


@pytest.mark.parametrize("opset", [13, 20, 23])
@pytest.mark.parametrize("name", KIND_SPECS)
def test_dlc_exports_import_back_to_the_same_outputs(tmp_path, name, opset):
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params
    from dlc.onnx.export import save_model, to_onnx

    graph = compile_spec(KIND_SPECS[name])
    params, state = init_params(graph, seed=1)
    rng = np.random.default_rng(2)
    for k in state:  # bn statistics away from (0, 1), so import mixing them up would show
        state[k] = rng.uniform(0.5, 1.5, state[k].shape).astype(np.float32)
    for k in params:
        if k.endswith((".b", ".B", ".beta")):
            params[k] = rng.uniform(-0.5, 0.5, params[k].shape).astype(np.float32)
    save_model(to_onnx(Network(graph, params, state), opset=opset), tmp_path / "m.onnx")
    spec, weights = imported(tmp_path, tmp_path / "m.onnx")
    shape = (2, *graph.input.out_shape)
    x = rng.integers(0, 9, shape) if name == "sequence" else rng.standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert relative_error(np.load(tmp_path / "y.npy"), onnxruntime_output(tmp_path / "m.onnx", x)) <= TOLERANCE
    if name == "keys without bias":
        assert spec.read_text().count("keybias=off") == 3, spec.read_text()


# The padding and resampling layers of CycleGAN's and pix2pix's generators and of ESPCN, from each of PyTorch's
# exporters: TorchScript computes Pad's amounts in a ConstantOfShape/Concat/Slice chain, dynamo stores them.
RESAMPLING_MODULES = {
    "reflect, uneven": (lambda: nn.Sequential(nn.ReflectionPad2d((1, 2, 3, 1)), nn.Conv2d(3, 4, 3)), "mode=reflect"),
    "replicate": (lambda: nn.Sequential(nn.ReplicationPad2d(2), nn.Conv2d(3, 4, 3)), "mode=replicate"),
    "constant 2.5": (lambda: nn.Sequential(nn.ConstantPad2d((0, 1, 0, 2), 2.5), nn.Conv2d(3, 4, 3)), "value=2.5"),
    "instancenorm": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True)), "instancenorm"),
    "instancenorm without affine": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4)), "instancenorm"),
    "pixelshuffle (ESPCN)": (lambda: nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)),
                             "pixelshuffle 2"),
    "maxpool dilated": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=(1, 2)), nn.MaxPool2d(3, 2, 1, dilation=2)),
                        "maxpool 3x3/2 pad=1 dil=2"),
    "tile": (lambda: torch_models.Repeat((1, 2, 1, 3)), "tile 2@1x3"),
    "slice (narrow)": (lambda: torch_models.Narrow(2, 1, 3), "slice 3 start=1 axis=height"),
    "reshape": (lambda: torch_models.Reshape((3, 8, 8), (24, 8)), "reshape 24x8"),
    # group norm: Reshape, InstanceNormalization, Reshape, Mul, Add from both exporters (issue 22)
    "groupnorm": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8, eps=1e-6), nn.SiLU()), "groupnorm 4"),
    "upconv outpad": (lambda: nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)),
                      "upconv 4@3x3/2 pad=1 outpad=1"),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", RESAMPLING_MODULES)
def test_resampling_layers_from_pytorch(tmp_path, case, exporter):
    build, written = RESAMPLING_MODULES[case]
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch_models.export(build(), path, (torch.randn(1, 3, 8, 8),), dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    assert written in spec.read_text(), spec.read_text()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))


def test_fine_tuning_an_imported_network_trains_only_its_head(tmp_path):
    """Transfer learning as the course notes describe it: import, freeze the features, train a new head."""
    from dlc.compile import compile_spec
    from dlc.engine.params import load_checkpoint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 10), nn.Softmax(dim=1))
    with torch.no_grad():  # running statistics of its own (not PyTorch's fresh 0 and 1) for the freeze to keep
        net.train()
        for _ in range(20):
            net(torch.rand(64, 1, 16, 16))
    # PRESERVE keeps BatchNormalization as an operator, so the import has running statistics to freeze
    torch_models.export(net, tmp_path / "small.onnx", (torch.randn(1, 1, 16, 16),), dynamo=False,
                        training=torch.onnx.TrainingMode.PRESERVE)
    spec, weights = imported(tmp_path, tmp_path / "small.onnx")
    graph = compile_spec(spec.read_text())
    head = [n for n in graph.nodes if n.kind == "fc"][-1]
    assert [n.kind for n in graph.nodes] == ["input", "conv", "bn", "relu", "maxpool", "flatten", "fc", "softmax"]
    # the spec's own train statement names the freeze point, as `train freeze=LABEL` does
    spec.write_text(spec.read_text() + f"train freeze={head.inputs[0]} optimizer=adam lr=0.01\n")
    before, before_state, _ = load_checkpoint(weights)
    r = run("train", spec, "--weights", weights, "--data", "glyphs", "--n-train", 256, "--n-val", 0, "--n-test", 0,
            "--batch", 32, "--epochs", 3, "--out", tmp_path / "run", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    after, after_state, meta = load_checkpoint(tmp_path / "run" / "last.npz")
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == name.startswith(head.name + "."), name
    for name in before_state:  # the frozen bn's statistics are those of the import, bit for bit
        assert np.array_equal(before_state[name], after_state[name]), name
    losses = [json_line["train_loss"] for json_line in meta_history(tmp_path / "run")]
    assert losses[-1] < losses[0]


def meta_history(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def test_freeze_names_a_label_or_layer_the_spec_has(tmp_path):
    r = run("train", "-e", "input 2 -> fc 4 relu as features -> fc 1 sigmoid", "--freeze", "featurs",
            "--epochs", 1, "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 2
    assert "freeze=featurs" in r.output and "features" in r.output


def tiny_model(tmp_path, nodes, initializers, out_shape, in_shape=(1, 3, 8, 8), outputs=("y",)):
    """An ONNX file from nodes over input `x`, for the importer's refusals."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                        else np.int64), k) for k, v in initializers.items()])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def conv_node(pads=(1, 1, 1, 1), out="c"):
    from onnx import helper

    return helper.make_node("Conv", ["x", "w"], [out], name="stem", kernel_shape=[3, 3], pads=list(pads))


WEIGHT = {"w": np.ones((4, 3, 3, 3))}


def refusal(tmp_path, path) -> str:
    r = run("import", path, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "net.dlc").exists() and not (tmp_path / "net.npz").exists()
    return r.output


def test_an_operator_without_a_kind_is_refused_naming_it_and_its_node(tmp_path):
    from onnx import helper

    # (Celu: HardSwish stood here until issue 21 gave it a kind)
    path = tiny_model(tmp_path, [conv_node(), helper.make_node("Celu", ["c"], ["y"], name="act7")], WEIGHT,
                      None)
    out = refusal(tmp_path, path)
    assert "Celu" in out and "act7" in out and "no layer kind" in out


def test_pads_neither_equal_nor_same_are_refused(tmp_path):
    out = refusal(tmp_path, tiny_model(tmp_path, [conv_node(pads=(0, 0, 2, 2), out="y")], WEIGHT, None))
    assert "Conv" in out and "stem" in out and "[0, 0, 2, 2]" in out


def test_asymmetric_pads_that_are_same_become_pad_same(tmp_path):
    # 8 pixels, kernel 2: `same` pads 0 before and 1 after (the odd pixel at the end, as TF and ONNX)
    from onnx import helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[2, 2], pads=[0, 0, 1, 1])
    path = tiny_model(tmp_path, [node], {"w": np.ones((4, 3, 2, 2))}, None)
    spec, _ = imported(tmp_path, path)
    assert "conv 4@2x2 pad=same " in spec.read_text()


def test_a_squeeze_and_excitation_product_of_an_image_and_its_pool_imports_as_gap_keep_and_mul(tmp_path):
    # the pool's output is C@1x1 (gap keep), and the product repeats it over the image, as dlc's mul broadcasts
    # a size-1 axis (refused before issue 21)
    from onnx import helper

    nodes = [conv_node(), helper.make_node("GlobalAveragePool", ["c"], ["p"], name="squeeze"),
             helper.make_node("Mul", ["c", "p"], ["y"], name="excite")]
    path = tiny_model(tmp_path, nodes, WEIGHT, None)
    spec, weights = imported(tmp_path, path)
    assert "gap keep" in spec.read_text() and "mul" in spec.read_text()
    assert_runs_as_onnxruntime(tmp_path, spec, weights, path,
                               np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("factor", [0.5, [0.5, -1.0, 2.0, 3.0]], ids=["one value", "per channel"])
def test_a_product_by_a_stored_value_or_channel_vector_imports_as_scale(tmp_path, factor):
    # layer scale as PyTorch writes it, x * gamma (C, 1, 1); one value for all is that value per channel
    from onnx import helper

    path = tiny_model(tmp_path, [conv_node(), helper.make_node("Mul", ["c", "g"], ["y"], name="layer_scale")],
                      {**WEIGHT, "g": np.reshape(factor, (-1, 1, 1))}, None)
    spec, weights = imported(tmp_path, path)
    assert "conv 4@3x3 pad=1 scale" in spec.read_text(), spec.read_text()
    assert np.load(weights)["scale1.gamma"].shape == (4, 1, 1)
    assert_runs_as_onnxruntime(tmp_path, spec, weights, path,
                               np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32))


def test_import_never_writes_over_its_model(tmp_path):
    path = tiny_model(tmp_path, [conv_node(out="y")], WEIGHT, None)
    data = path.read_bytes()
    r = run("import", path, "-o", path)
    assert r.exit_code == 2 and "NET.dlc" in r.output
    assert path.read_bytes() == data


def test_outputs_branching_apart_from_one_trunk_are_refused(tmp_path):
    from onnx import helper

    nodes = [conv_node(), helper.make_node("Relu", ["c"], ["y"], name="r"),
             helper.make_node("Sigmoid", ["c"], ["z"], name="s")]
    out = refusal(tmp_path, tiny_model(tmp_path, nodes, WEIGHT, None, outputs=("y", "z")))
    # two heads on one trunk: a spec's chain starts only at an input (outputs along one chain import)
    assert "the output y branches off the chain to the output z" in out


class LastStep(nn.Module):
    """An embedding, a recurrent layer read at its last step (`out[:, -1]`), a linear head."""

    def __init__(self, cell=nn.LSTM, **kwargs):
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(20, 8), cell(8, 6, batch_first=True, **kwargs), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0][:, -1])


class Sequences(nn.Module):
    """A bidirectional GRU that keeps every step."""

    def __init__(self):
        super().__init__()
        self.emb, self.rnn = nn.Embedding(20, 8), nn.GRU(8, 5, batch_first=True, bidirectional=True)

    def forward(self, ids):
        return self.rnn(self.emb(ids))[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("module,layer", [(LastStep, "lstm 6  "), (Sequences, "gru 5 bidirectional sequences")],
                         ids=["lstm-last-step", "bigru-sequences"])
def test_recurrent_layers_from_pytorch(tmp_path, exporter, module, layer):
    torch.manual_seed(0)
    path = tmp_path / "rnn.onnx"
    torch_models.export(module(), path, (torch.randint(0, 20, (1, 7)),), dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    assert f"\n{layer}" in spec.read_text()
    x = np.random.default_rng(0).integers(0, 20, (1, 7))
    np.save(tmp_path / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert relative_error(np.load(tmp_path / "y.npy"), onnxruntime_output(path, x)) <= TOLERANCE


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name,shape,words", [
    ("signal_net", (2, 40), ["input 2@40", "conv 6@5/2 pad=2 relu", "bn", "maxpool 3/2 pad=1", "avgpool 2 ceil",
                             "dwconv 3 pad=1", "conv 4@3 dil=2", "gap"]),
    ("volume_net", (2, 5, 17, 17), ["input 2@5x17x17", "conv 4@3x5x5/1x2x2 pad=1x2x2", "bn", "maxpool 1x2x2",
                                    "avgpool 2x2x2 ceil", "conv 6@2x2x2 pad=1 groups=2", "gap"])])
def test_signals_and_volumes_from_pytorch(tmp_path, exporter, name, shape, words):
    # issue 28: Conv1d/3d, their pools, BatchNorm1d/3d and the adaptive pools, from either exporter
    path = tmp_path / f"{name}.onnx"
    torch_models.export(with_distinct_bn(getattr(torch_models, name)()), path, (torch.randn(1, *shape),),
                        dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    text = spec.read_text()
    assert all(w in text for w in words), text
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    assert_runs_as_onnxruntime(tmp_path, spec, weights, path, x)


def test_a_1d_transposed_conv_is_refused_naming_its_signal(tmp_path):
    # upconv stays 2-D: the refusal names the input as the language writes it, once
    path = tmp_path / "up.onnx"
    torch_models.export(nn.Sequential(nn.ConvTranspose1d(2, 3, 2, stride=2)), path, (torch.randn(1, 2, 10),),
                        dynamo=False)
    r = run("import", path, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "dlc's upconv works on images C@HxW; this one's input is 2@10" in r.output


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 20)], ids=["erf-form", "gelu-op"])
def test_gelu_in_both_forms(tmp_path, exporter, opset):
    torch.manual_seed(0)
    path = tmp_path / "mlp.onnx"
    net = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 2))
    torch_models.export(net, path, (torch.randn(1, 5),), dynamo=EXPORTERS[exporter], opset_version=opset)
    spec, weights = imported(tmp_path, path)
    assert "\nfc 7 gelu" in spec.read_text()
    x = np.random.default_rng(0).standard_normal((1, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert relative_error(np.load(tmp_path / "y.npy"), onnxruntime_output(path, x)) <= TOLERANCE


# Llama's feed-forward from both PyTorch exporters: RMSNorm written out (Pow, ReduceMean, Add, Sqrt, then
# Div of 1 under TorchScript, Reciprocal under dynamo, times x, times the weight) or torch's nn.RMSNorm as
# dynamo's RMSNormalization at opset 23; SiLU as nn.SiLU or x * sigmoid(x), both Sigmoid and Mul.
LLAMA_FF = {"torchscript": ("torchscript", False, 17), "torchscript, x*sigmoid(x)": ("torchscript", True, 17),
            "dynamo": ("dynamo", False, None), "dynamo, x*sigmoid(x)": ("dynamo", True, None),
            "dynamo, nn.RMSNorm at opset 23": ("dynamo", False, 23)}


@pytest.mark.parametrize("case", LLAMA_FF)
def test_rmsnorm_silu_and_the_swiglu_product_from_pytorch(tmp_path, case):
    import json

    exporter, written_out, opset = LLAMA_FF[case]
    if opset == 23 and not hasattr(nn, "RMSNorm"):
        pytest.skip("nn.RMSNorm came in torch 2.4")
    torch.manual_seed(0)
    t, d, f = 5, 8, 12
    norm = nn.RMSNorm(d, eps=1e-6) if opset == 23 else torch_models.RMSNorm(d, eps=1e-6)
    net = torch_models.SwiGLUBlock(d, f, written_out, norm)
    path = tmp_path / "ff.onnx"
    torch_models.export(net, path, (torch.randn(1, t, d),), dynamo=EXPORTERS[exporter],
                        **({"opset_version": opset} if opset else {}))
    spec, weights = imported(tmp_path, path)
    text = spec.read_text()
    assert "rmsnorm eps=1e-06" in text and "fc 12 bias=off silu" in text and "mul(" in text, text
    x = np.random.default_rng(0).standard_normal((1, t, d)).astype(np.float32)  # the exports fix the batch at 1
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))
    # `dlc summary` of the PyTorch file counts the spec's figures: params d + 3·d·f, MACs 3·T·d·f; the
    # written-out norm computes one reciprocal per step beside rmsnorm's rule (rsqrt as 1/sqrt)
    torch_doc = json.loads(run("summary", path, "--json").stdout)["totals"]
    spec_doc = json.loads(run("summary", spec, "--json").stdout)["totals"]
    assert torch_doc["params"] == spec_doc["params"] == d + 3 * d * f
    assert torch_doc["macs"] == spec_doc["macs"] == 3 * t * d * f
    assert torch_doc["flops"] == spec_doc["flops"] + (0 if opset == 23 else t)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_swish_of_opset_24_imports_as_silu_and_counts_as_its_rule(tmp_path, alpha):
    import json

    import onnx
    from onnx import helper

    path = tiny_model(tmp_path, [conv_node(), helper.make_node("Swish", ["c"], ["y"], name="act", alpha=alpha)],
                      WEIGHT, None)
    model = onnx.load(path)
    model.opset_import[0].version, model.ir_version = 24, 11
    onnx.save(model, path)
    if alpha != 1.0:
        assert "Swish" in refusal(tmp_path, path) and "alpha 1" in refusal(tmp_path, path)
        return
    spec, weights = imported(tmp_path, path)
    assert "conv 4@3x3 pad=1 silu" in spec.read_text()
    doc = json.loads(run("summary", path, "--json").stdout)
    conv_flops = 2 * 4 * 8 * 8 * 27  # the convolution alone, without a bias
    assert doc["totals"]["flops"] == conv_flops + 2 * 4 * 8 * 8  # the sigmoid and the product per element


def test_a_zero_pad_before_a_conv_becomes_its_pad(tmp_path):
    # TensorFlow's exporters write `same` as an explicit Pad: 1 pixel each side around a 3x3 conv
    from onnx import helper

    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="c", kernel_shape=[3, 3])]
    path = tiny_model(tmp_path, nodes, {**WEIGHT, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, None)
    spec, weights = imported(tmp_path, path)
    assert "conv 4@3x3 pad=1 " in spec.read_text()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_runs_as_onnxruntime(tmp_path, spec, weights, path, x)


def test_a_mixture_of_experts_is_refused_naming_its_topk_node(tmp_path):
    spec = tmp_path / "moe.dlc"
    spec.write_text("input seq 4 of 6\nexperts 4 top=2 { fc 8 relu -> fc 6 }\nfc 3\n")
    model = tmp_path / "moe.onnx"
    assert run("export", spec, "-o", model).exit_code == 0
    r = run("import", model, "-o", tmp_path / "back.dlc")
    assert r.exit_code == 2
    assert "cannot import operator TopK (node `experts1/topk`)" in r.output
    assert "mixture of experts" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "back.dlc").exists()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_small_swin_from_pytorch_imports_as_windows_on_a_token_grid(tmp_path, dynamo):
    # tests/torch_models.py's Swin (torchvision's, layer for layer) on a 1@16x16 image: the grid kept
    # (N, H, W, C), rolls as Slices and Concats, the bias tables expanded to 1 x heads x 16 x 16 constants.
    # It imports as tokens, windowed attention (the tables read back from the expansions), fc, patchmerge
    # and the grid's mean, with every one of PyTorch's 35,238 parameters, and reproduces the original.
    from test_onnx_torch import small_swin

    net = small_swin()
    path = tmp_path / "swin.onnx"
    torch_models.export(net, path, (torch.randn(1, 1, 16, 16),), dynamo=dynamo)
    spec, weights = imported(tmp_path, path)
    text = spec.read_text()
    assert "tokens" in text and "attention 2 window=4x4 shift=2" in text and "patchmerge" in text
    assert re.search(r"^attention 4 window=4x4 +#", text, re.M)  # the 4x4 grid's windows span it: no shift
    assert sum(v.size for v in np.load(weights).values() if v.dtype.kind == "f") == 35_238
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))


@pytest.mark.slow  # a full-size export and import: about a minute for each exporter on 2 shared cores
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_swin_t_from_pytorch_round_trips(tmp_path, dynamo):
    net = torch_models.swin_t()
    torch.manual_seed(0)
    for p in net.parameters():  # fresh norms are identical tensors, which TorchScript stores once
        p.data.normal_(0, 0.02)
    path = tmp_path / "swin_t.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 224, 224),), dynamo=dynamo)
    spec, weights = imported(tmp_path, path)
    assert sum(v.size for v in np.load(weights).values() if v.dtype.kind == "f") == 28_288_354
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))
# ---- today's vision networks (issue 21): torchvision's EfficientNet, MobileNetV3 and ConvNeXt -------------
# Each in miniature, from both exporters, then each at full size: SiLU as Sigmoid and Mul, HardSwish and
# HardSigmoid, squeeze-and-excite's pooled C@1x1 and 1x1 convs, ConvNeXt's channels-last Transposes around
# LayerNorm and Linear, its layer scale, dynamo's ReduceMean pool and its as_strided view of the pooled image.
SMALL_VISION = {
    "efficientnet": (lambda: torch_models.EfficientNet([(1, 3, 1, 8, 8, 1), (6, 5, 2, 8, 16, 2)], last=32, classes=5),
                     ("gap keep", "conv 2@1x1", "conv 8@1x1", " silu ", " sigmoid ", "mul(")),
    "mobilenet_v3": (lambda: torch_models.MobileNetV3([(8, 3, 8, 8, True, nn.ReLU, 2),
                                                      (8, 3, 24, 8, False, nn.Hardswish, 1),
                                                      (8, 5, 32, 16, True, nn.Hardswish, 2)], last=32, classes=5),
                     ("gap keep", "hardsigmoid", "conv 24@1x1 hardswish", "fc 32 hardswish")),
    "convnext": (lambda: torch_models.ConvNeXt([(8, 1), (16, 2)], classes=5),
                 ("layernorm eps=1e-06 channels", "conv 32@1x1 gelu", "conv 8@1x1 scale", "conv 64@1x1 gelu")),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", SMALL_VISION)
def test_todays_vision_blocks_from_both_exporters_import_as_dlcs_kinds(tmp_path, name, exporter):
    build, words = SMALL_VISION[name]
    torch.manual_seed(0)
    net = with_distinct_bn(build())
    path = tmp_path / f"{name}.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 32, 32),), dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    text = spec.read_text()
    assert all(w in text for w in words), text
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))
    with torch.no_grad():  # and PyTorch's own output, which the file holds
        assert relative_error(np.load(tmp_path / "y_numpy.npy"), net(torch.from_numpy(x)).numpy()) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"])
def test_todays_vision_networks_at_full_size_round_trip(tmp_path, name, exporter):
    net = with_distinct_bn(getattr(torch_models, name)())
    path = tmp_path / f"{name}.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 224, 224),), dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))
    # the import has the zoo's parameters but bn's, which the exporters fold into the convs: one bias per
    # channel where the zoo's spec has gamma and beta
    zoo = run("params", name, "--json")
    got = run("params", spec, "--json")
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    import json
    assert json.loads(got.stdout)["totals"]["params"] == json.loads(zoo.stdout)["totals"]["params"] - bn_channels
