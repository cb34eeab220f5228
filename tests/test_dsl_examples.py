"""Every example of the language contract (docs/language.md), copied verbatim, compiles to the shapes
its comments state.

The examples are copied here rather than read from docs/language.md so that this test pins the
contract as it was agreed. Shapes are written the way the comments write them (C@HxW, N, TxD); the
published parameter counts (torchvision's ResNet-50 and VGG-16) check the expanded attributes too.
"""

from __future__ import annotations

import re
from math import prod
from pathlib import Path

import pytest

from dlc.compile import compile_spec
from dlc.layers import KINDS, param_count

LENET5 = """\
# LeNet-5 as in the course table
input 1@32x32
conv 6@5x5 tanh -> avgpool 2/2       # 6@28x28 -> 6@14x14
conv 16@5x5 tanh -> avgpool 2/2      # 16@10x10 -> 16@5x5
flatten                              # 400
fc 120 tanh -> fc 84 tanh -> fc 10 softmax
"""

ALEXNET = """\
# AlexNet, single tower, as in the course notes
input 3@227x227
conv 96@11x11/4 relu -> maxpool 3/2      # 96@55x55 -> 96@27x27
conv 256@5x5 pad=2 relu -> maxpool 3/2   # 256@27x27 -> 256@13x13
conv 384@3x3 pad=1 relu
conv 384@3x3 pad=1 relu
conv 256@3x3 pad=1 relu -> maxpool 3/2   # 256@6x6
fc 4096 relu -> dropout 0.5              # implicit flatten: 9216
fc 4096 relu -> dropout 0.5
fc 1000 softmax
"""

VGG16 = """\
# VGG-16
input 3@224x224
default conv pad=same
block stage(c, n) {
    conv c@3x3 relu x n
    maxpool 2
}
stage(64, 2) -> stage(128, 2) -> stage(256, 3) -> stage(512, 3) -> stage(512, 3)   # 512@7x7
fc 4096 relu -> dropout 0.5 -> fc 4096 relu -> dropout 0.5 -> fc 1000 softmax
"""

RESNET50 = """\
# ResNet-50 (stride on the 3x3, as torchvision)
input 3@224x224
default conv bias=off
block bottleneck(mid, out, s=1) {
    add(
        conv mid@1x1 bn relu
        conv mid@3x3/s pad=1 bn relu
        conv out@1x1 bn
      | shortcut
    )
    relu
}
conv 64@7x7/2 pad=3 bn relu -> maxpool 3/2 pad=1      # 64@56x56
bottleneck(64, 256) x3                                # 256@56x56
bottleneck(128, 512, s=2) -> bottleneck(128, 512) x3  # 512@28x28
bottleneck(256, 1024, s=2) -> bottleneck(256, 1024) x5
bottleneck(512, 2048, s=2) -> bottleneck(512, 2048) x2   # 2048@7x7
gap -> fc 1000 softmax
"""

INCEPTION = """\
# an Inception module
input 192@28x28
block inception(a, b1, b2, c1, c2, d) {
    concat(
        conv a@1x1 relu
      | conv b1@1x1 relu -> conv b2@3x3 pad=1 relu
      | conv c1@1x1 relu -> conv c2@5x5 pad=2 relu
      | maxpool 3/1 pad=1 -> conv d@1x1 relu
    )
}
inception(64, 96, 128, 16, 32, 32)     # 256@28x28
inception(128, 128, 192, 32, 96, 64)   # 480@28x28
maxpool 3/2 ceil                       # 480@14x14 (13x13 without ceil)
"""

MOBILENET = """\
# depthwise separable (MobileNet)
input 3@224x224
default conv pad=same bias=off
default dwconv pad=same bias=off
block dwsep(c, s=1) {
    dwconv 3x3/s bn relu
    conv c@1x1 bn relu
}
conv 32@3x3/2 bn relu                  # 32@112x112
dwsep(64) -> dwsep(128, s=2)           # 128@56x56
"""

UNET = """\
# U-Net skips
input 1@64x64
default conv pad=same
conv 16@3x3 relu as e1 -> maxpool 2   # 16@32x32
conv 32@3x3 relu                       # 32@32x32
upconv 16@2x2/2 -> concat e1           # 32@64x64
conv 2@1x1                             # 2@64x64
"""

LSTM_TEXT = """\
# an LSTM text classifier
input seq 200
embed 128 vocab=20000                  # 200x128
lstm 256                               # 256
dropout 0.5 -> fc 2 softmax
"""

XOR = """\
# XOR, the function a single perceptron cannot represent
input 2 -> fc 2 sigmoid -> fc 1 sigmoid
train loss=mse optimizer=sgd lr=0.5 epochs=2000 batch=4
"""

GPT2 = """\
# GPT-2 small, 124,439,808 parameters
input seq 1024
embed 768 vocab=50257 as tok           # 1024x768
posembed -> dropout 0.1
block decoder(d, h, f) {
    add( layernorm -> attention h causal -> dropout 0.1 | identity )
    add( layernorm -> fc f gelu -> fc d -> dropout 0.1 | identity )
}
decoder(768, 12, 3072) x12             # 1024x768
layernorm
fc 50257 tied=tok bias=off softmax     # 1024x50257
"""

VIT = """\
# ViT-B/16, 86,567,656 parameters
input 3@224x224
conv 768@16x16/16 -> tokens            # 768@14x14 -> 196x768
clstoken -> posembed                   # 197x768
default layernorm eps=1e-6
block encoder(d, h, f) {
    add( layernorm -> attention h | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
encoder(768, 12, 3072) x12
layernorm -> seqpool first             # 768
fc 1000 softmax
"""

SWIN_T = """\
# Swin-T, 28,288,354 parameters (the zoo's swin_t, its train line left out)
input 3@224x224
conv 96@4x4/4 -> tokens -> layernorm   # 3136x96, a 56x56 grid
block swin(d, h, f, s) {
    add( layernorm -> attention h window=7x7 shift=s | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
block stage(d, h, f) {
    swin(d, h, f, 0) -> swin(d, h, f, 3)
}
block merge(c) {
    patchmerge -> layernorm -> fc c bias=off
}
stage(96, 3, 384)                      # 3136x96
merge(192) -> stage(192, 6, 768)       # 784x192
merge(384) -> stage(384, 12, 1536) x3  # 196x384
merge(768) -> stage(768, 24, 3072)     # 49x768: 7x7 windows span the grid, no shift
layernorm -> seqpool                   # 768
fc 1000 softmax
"""


def shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {n.name: n.out_shape for n in compile_spec(text, "example.dlc").nodes}


def trainable(text: str) -> int:
    g = compile_spec(text, "example.dlc")
    total = 0
    for n in g.nodes:
        ins = [g.node(i).out_shape for i in n.inputs]
        total += param_count(KINDS[n.kind], n.attrs, ins)[0]
    return total


def test_lenet5_shapes_follow_the_course_table():
    s = shapes(LENET5)
    assert s["conv1"] == (6, 28, 28) and s["avgpool1"] == (6, 14, 14)
    assert s["conv2"] == (16, 10, 10) and s["avgpool2"] == (16, 5, 5)
    assert s["flatten1"] == (400,)
    assert (s["fc1"], s["fc2"], s["fc3"], s["softmax1"]) == ((120,), (84,), (10,), (10,))
    # the flatten is written, so no second one is put before fc 120
    assert "flatten2" not in s


def test_alexnet_shapes_and_the_implicit_flatten():
    g = compile_spec(ALEXNET, "alexnet.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["conv1"] == (96, 55, 55) and s["maxpool1"] == (96, 27, 27)
    assert s["conv2"] == (256, 27, 27) and s["maxpool2"] == (256, 13, 13)
    assert s["conv3"] == s["conv4"] == (384, 13, 13)
    assert s["maxpool3"] == (256, 6, 6)
    flatten = g.node("flatten1")
    assert flatten.out_shape == (9216,) and flatten.inputs == ["maxpool3"] and flatten.row == "flatten1"
    assert g.node("fc1").inputs == ["flatten1"]
    assert g.output.name == "softmax1" and g.output.out_shape == (1000,)


def test_alexnet_suffix_layers_fold_into_their_step_row():
    g = compile_spec(ALEXNET, "alexnet.dlc")
    relu1 = g.node("relu1")
    assert relu1.row == "conv1" and relu1.inputs == ["conv1"]
    assert relu1.text == g.node("conv1").text == "conv 96@11x11/4 relu"
    assert g.node("maxpool1").row == "maxpool1" and g.node("maxpool1").text == "maxpool 3/2"
    assert g.node("softmax1").row == "fc3"
    # the suffix's position is its own word: line 3, column 17
    assert (relu1.pos.line, relu1.pos.col) == (3, 17) and (g.node("conv1").pos.line, g.node("conv1").pos.col) == (3, 1)


def test_vgg16_stages_and_published_parameter_count():
    s = shapes(VGG16)
    assert s["stage1.conv2"] == (64, 224, 224) and "stage1.conv3" not in s
    assert s["stage3.conv3"] == (256, 56, 56)
    assert s["stage5.maxpool1"] == (512, 7, 7)
    assert s["flatten1"] == (512 * 7 * 7,)
    # torchvision's vgg16: 138,357,544 parameters
    assert trainable(VGG16) == 138_357_544


def test_resnet50_shapes_names_and_published_parameter_count():
    g = compile_spec(RESNET50, "resnet50.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["maxpool1"] == (64, 56, 56)
    assert s["bottleneck3.relu3"] == (256, 56, 56)
    assert s["bottleneck7.relu3"] == (512, 28, 28)
    assert s["bottleneck13.relu3"] == (1024, 14, 14)
    assert s["bottleneck16.relu3"] == (2048, 7, 7)
    assert g.output.out_shape == (1000,)
    assert "bottleneck1.conv1" in s and "bottleneck17.conv1" not in s
    # a projection where the channels change (64 -> 256, stride 1) and at each stride-2 block
    assert [n for n in s if n.endswith("shortcut.conv")] == [
        "bottleneck1.shortcut.conv", "bottleneck4.shortcut.conv", "bottleneck8.shortcut.conv",
        "bottleneck14.shortcut.conv"]
    proj = g.node("bottleneck4.shortcut.conv")
    assert proj.attrs["stride"] == (2, 2) and proj.attrs["kernel"] == (1, 1) and proj.attrs["bias"] is False
    assert proj.out_shape == (512, 28, 28) and proj.inputs == ["bottleneck3.relu3"]
    assert g.node("bottleneck4.shortcut.bn").row == "bottleneck4.shortcut.conv"
    assert g.node("bottleneck4.add1").inputs == ["bottleneck4.bn3", "bottleneck4.shortcut.bn"]
    # identity shortcuts add the block's input itself
    assert g.node("bottleneck2.add1").inputs == ["bottleneck2.bn3", "bottleneck1.relu3"]
    # `default conv bias=off` reaches into every block call
    assert all(not n.attrs["bias"] for n in g.nodes if n.kind == "conv")
    # torchvision's resnet50: 25,557,032 parameters
    assert trainable(RESNET50) == 25_557_032


def test_inception_module_shapes_with_and_without_ceil():
    s = shapes(INCEPTION)
    assert s["inception1.concat1"] == (64 + 128 + 32 + 32, 28, 28) == (256, 28, 28)
    assert s["inception2.concat1"] == (480, 28, 28)
    assert s["maxpool1"] == (480, 14, 14)
    floor = shapes(INCEPTION.replace("maxpool 3/2 ceil", "maxpool 3/2"))
    assert floor["maxpool1"] == (480, 13, 13)


def test_inception_branches_read_the_module_input():
    g = compile_spec(INCEPTION, "inception.dlc")
    firsts = [n for n in g.nodes if n.name.startswith("inception1.") and n.inputs == ["input"]]
    assert [n.name for n in firsts] == ["inception1.conv1", "inception1.conv2", "inception1.conv4",
                                        "inception1.maxpool1"]
    assert g.node("inception1.concat1").inputs == ["inception1.relu1", "inception1.relu3", "inception1.relu5",
                                                   "inception1.relu6"]


def test_mobilenet_depthwise_separable_shapes():
    g = compile_spec(MOBILENET, "mobilenet.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["relu1"] == (32, 112, 112)
    assert s["dwsep1.dwconv1"] == (32, 112, 112) and g.node("dwsep1.dwconv1").attrs["groups"] == 32
    assert s["dwsep2.dwconv1"] == (64, 56, 56)
    assert g.output.name == "dwsep2.relu2" and g.output.out_shape == (128, 56, 56)
    assert not g.node("dwsep2.dwconv1").attrs["bias"]


def test_unet_skip_concatenates_the_labelled_tensor():
    g = compile_spec(UNET, "unet.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["maxpool1"] == (16, 32, 32) and s["conv2"] == (32, 32, 32)
    assert s["upconv1"] == (16, 64, 64)
    assert s["concat1"] == (32, 64, 64) and g.node("concat1").inputs == ["upconv1", "relu1"]
    assert g.node("relu1").label == "e1"
    assert s["conv3"] == (2, 64, 64)


def test_lstm_text_classifier_reads_token_ids():
    g = compile_spec(LSTM_TEXT, "lstm.dlc")
    assert g.input.out_shape == (200,) and g.input.dtype == "int64" and g.input.attrs["tokens"] is True
    assert g.node("embed1").out_shape == (200, 128) and g.node("embed1").dtype == "float32"
    assert g.node("lstm1").out_shape == (256,)
    assert g.output.out_shape == (2,)


def test_xor_network_and_its_train_statement():
    g = compile_spec(XOR, "xor.dlc")
    assert [n.name for n in g.nodes] == ["input", "fc1", "sigmoid1", "fc2", "sigmoid2"]
    assert g.output.out_shape == (1,)
    assert g.train == {"loss": "mse", "optimizer": "sgd", "lr": 0.5, "epochs": 2000, "batch": 4}
    assert isinstance(g.train["epochs"], int) and isinstance(g.train["lr"], float)


def test_gpt2_small_shapes_tied_output_and_stated_parameter_count():
    g = compile_spec(GPT2, "gpt2.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["embed1"] == (1024, 768) and g.node("embed1").label == "tok"
    assert s["posembed1"] == s["dropout1"] == (1024, 768)
    assert s["decoder1.attention1"] == (1024, 768) and g.node("decoder1.attention1").attrs["causal"]
    assert s["decoder1.fc1"] == (1024, 3072) and s["decoder1.fc2"] == (1024, 768)  # fc on each step
    assert s["decoder12.add2"] == (1024, 768) and "decoder13.add1" not in s
    out = g.node("fc1")
    assert s["fc1"] == s["softmax1"] == (1024, 50257) and g.output.name == "softmax1"
    assert out.attrs["tied"].node == "embed1" and not out.attrs["bias"]
    # the tied output layer owns no weight: the 50257x768 table counts once, with the embedding
    assert trainable(GPT2) == 124_439_808


def test_vit_b16_shapes_class_token_and_stated_parameter_count():
    g = compile_spec(VIT, "vit.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    assert s["conv1"] == (768, 14, 14) and s["tokens1"] == (196, 768)
    assert s["clstoken1"] == s["posembed1"] == (197, 768)
    assert s["encoder12.add2"] == (197, 768)
    assert all(n.attrs["eps"] == 1e-6 for n in g.nodes if n.kind == "layernorm")  # the default reaches the blocks
    assert not any(n.attrs["causal"] for n in g.nodes if n.kind == "attention")
    assert s["seqpool1"] == (768,) and g.node("seqpool1").attrs["mode"] == "first"
    assert g.output.out_shape == (1000,)
    assert trainable(VIT) == 86_567_656


def test_swin_t_keeps_its_grid_through_the_stages_and_states_its_parameter_count():
    g = compile_spec(SWIN_T, "swin.dlc")
    s = {n.name: n.out_shape for n in g.nodes}
    # Liu et al. 2021, Figure 3: 4x4 patches of C = 96, then merges to 2C, 4C and 8C on grids of H/8, H/16, H/32
    assert s["conv1"] == (96, 56, 56) and s["tokens1"] == s["stage1.swin2.add2"] == (3136, 96)
    assert [s[f"merge{i}.patchmerge1"] for i in (1, 2, 3)] == [(784, 384), (196, 768), (49, 1536)]
    assert [s[f"merge{i}.fc1"] for i in (1, 2, 3)] == [(784, 192), (196, 384), (49, 768)]
    assert g.node("stage6.swin2.attention1").attrs["grid"] == (7, 7) and s["seqpool1"] == (768,)
    assert g.output.out_shape == (1000,)
    assert trainable(SWIN_T) == 28_288_354  # torchvision's Swin_T_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("text", [LENET5, ALEXNET, VGG16, RESNET50, INCEPTION, MOBILENET, UNET, LSTM_TEXT, XOR,
                                  GPT2, VIT, SWIN_T])
def test_every_example_gives_a_well_formed_graph(text):
    g = compile_spec(text, "example.dlc")
    seen = set()
    for n in g.nodes:
        assert n.name not in seen, n.name
        assert all(i in seen for i in n.inputs), n.name  # topological order
        assert prod(n.out_shape) >= 1 and n.pos is not None and n.text
        seen.add(n.name)
    assert g.nodes[0].name == "input" and g.source


def test_the_language_guide_examples_compile_to_the_shapes_they_state():
    guide = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text()
    blocks = re.findall(r"```dlc\n(.*?)```", guide, re.S)
    assert len(blocks) >= 5
    for text in blocks:
        compile_spec(text, "language.md")
        # a comment ending in C@HxW states the shape of the network up to that line
        lines = text.splitlines()
        for line_no, line in enumerate(lines, start=1):
            m = re.search(r"#.*?(\d+)@(\d+)x(\d+)\s*$", line)
            if m:
                upto = compile_spec("\n".join(lines[:line_no]), "language.md")
                assert upto.output.out_shape == tuple(int(x) for x in m.groups()), line


def test_the_language_guide_names_every_kind_alias_and_option():
    guide = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text()
    for kind in KINDS.values():
        if kind.name == "input":
            continue
        for word in (kind.name, *kind.aliases, *kind.flags):
            assert f"`{word}`" in guide, word
        for option in kind.options:
            assert f"`{option}=" in guide, (kind.name, option)
