"""The compiler's expansion rules: defaults, blocks, repeats, suffixes, labels, merges, shortcuts, names.

Shapes are worked out by hand from conventions.md: out = floor((in + pads - dil*(k-1) - 1)/stride) + 1,
and pad=same gives ceil(in/stride).
"""

from __future__ import annotations

import subprocess
import sys

from dlc.compile import compile_spec


def graph(text: str):
    return compile_spec(text, "test.dlc")


def names(text: str) -> list[str]:
    return [n.name for n in graph(text).nodes]


def test_node_names_count_per_kind_and_aliases_share_a_counter():
    assert names("input 3@8x8\nconv 4@3x3 relu\nconv2d 4@3x3 relu\nmaxpool 2\nbatchnorm -> bn") == [
        "input", "conv1", "relu1", "conv2", "relu2", "maxpool1", "bn1", "bn2"]


def test_repeat_expands_the_whole_step_with_its_suffixes():
    g = graph("input 3@8x8\nconv 4@3x3 pad=same relu x3 as top")
    assert [n.name for n in g.nodes] == ["input", "conv1", "relu1", "conv2", "relu2", "conv3", "relu3"]
    assert [n.row for n in g.nodes[1:]] == ["conv1", "conv1", "conv2", "conv2", "conv3", "conv3"]
    assert g.node("conv2").inputs == ["relu1"]
    assert g.node("relu3").label == "top" and g.node("relu1").label is None


def test_group_repeat_and_x_n_with_a_parameter():
    g = graph("input 1@32x32\nblock f(n) {\n  (conv 2@3x3 pad=1 -> maxpool 2) x n\n}\nf(3)")
    # 32 -> 16 -> 8 -> 4
    assert [n.name for n in g.nodes if n.kind == "maxpool"] == ["f1.maxpool1", "f1.maxpool2", "f1.maxpool3"]
    assert g.output.out_shape == (2, 4, 4)


def test_block_calls_scope_names_and_nest():
    text = """input 4@16x16
block inner(c) { conv c@3x3 pad=1 relu }
block outer(c) {
    inner(c)
    inner(c)
    conv c@1x1
}
outer(4) -> outer(8)
conv 2@1x1
"""
    assert names(text) == [
        "input",
        "outer1.inner1.conv1", "outer1.inner1.relu1", "outer1.inner2.conv1", "outer1.inner2.relu1", "outer1.conv1",
        "outer2.inner1.conv1", "outer2.inner1.relu1", "outer2.inner2.conv1", "outer2.inner2.relu1", "outer2.conv1",
        "conv1"]


def test_block_arguments_positional_keyword_and_default():
    g = graph("input 3@16x16\nblock b(c, k=3, s=1, p=same) { conv c@k/s pad=p }\n"
              "b(4) -> b(5, s=2) -> b(6, 1, p=0)")
    c1, c2, c3 = (g.node(f"b{i}.conv1") for i in (1, 2, 3))
    assert (c1.attrs["channels"], c1.attrs["kernel"], c1.attrs["stride"], c1.out_shape) == (4, (3, 3), (1, 1),
                                                                                           (4, 16, 16))
    # pad=same with stride 2: ceil(16/2) = 8
    assert c2.out_shape == (5, 8, 8)
    # 1x1 window, no pad: 8 -> 8
    assert c3.attrs["kernel"] == (1, 1) and c3.out_shape == (6, 8, 8)


def test_block_arguments_can_pass_the_callers_parameters_on():
    g = graph("input 3@8x8\nblock a(c) { conv c@1x1 }\nblock b(c) { a(c) }\nb(7)")
    assert g.node("b1.a1.conv1").out_shape == (7, 8, 8)


def test_defaults_apply_to_later_steps_of_the_kind_and_its_aliases():
    g = graph("input 3@8x8\nconv 4@3x3\ndefault conv pad=same bias=off\nconv2d 4@3x3\nconv 4@3x3 pad=0 bias=on")
    c1, c2, c3 = g.node("conv1"), g.node("conv2"), g.node("conv3")
    assert c1.out_shape == (4, 6, 6) and c1.attrs["bias"] is True
    assert c2.out_shape == (4, 6, 6) and c2.attrs["bias"] is False  # same: 6 -> 6
    assert c3.out_shape == (4, 4, 4) and c3.attrs["bias"] is True


def test_defaults_are_lexically_scoped():
    text = """input 3@8x8
block b() {
    conv 4@3x3
    default conv pad=same
    conv 4@3x3
}
default conv bias=off
b()
(default conv pad=1 -> conv 4@3x3)
conv 4@3x3
"""
    g = graph(text)
    # the default before the call reaches into the body; the one inside the body stays there
    assert g.node("b1.conv1").attrs["bias"] is False and g.node("b1.conv1").out_shape == (4, 6, 6)
    assert g.node("b1.conv2").out_shape == (4, 6, 6)
    assert g.node("conv1").out_shape == (4, 6, 6)  # pad=1 inside the group: 6 -> 6
    assert g.node("conv2").out_shape == (4, 4, 4) and g.node("conv2").attrs["bias"] is False


def test_defaults_reach_suffix_layers_and_flags():
    g = graph("input 3@9x9\ndefault bn eps=0.001\ndefault maxpool ceil\nconv 4@3x3 bn -> maxpool 2")
    assert g.node("bn1").attrs["eps"] == 0.001
    # 7 with ceil: ceil((7-2)/2) + 1 = 4
    assert g.node("maxpool1").attrs["ceil"] is True and g.node("maxpool1").out_shape == (4, 4, 4)


def test_registry_defaults_and_flags_reach_resolve():
    g = graph("input 3@8x8\nconv 4@3x3 -> maxpool 2 -> lrn -> lrn 3 -> leaky")
    conv = g.node("conv1")
    assert (conv.attrs["pad"], conv.attrs["dil"], conv.attrs["groups"], conv.attrs["bias"]) == (0, 1, 1, True)
    # derived by the kind's resolve: explicit pads and the input channels
    assert conv.attrs["pads"] == (0, 0, 0, 0) and conv.attrs["in_channels"] == 3
    assert conv.attrs["stride"] == (1, 1)
    pool = g.node("maxpool1")
    assert pool.attrs["ceil"] is False and pool.attrs["stride"] == (2, 2)
    assert g.node("lrn1").attrs["size"] == 5 and g.node("lrn2").attrs["size"] == 3
    assert g.node("leaky1").attrs["alpha"] == 0.01


def test_options_after_a_suffix_go_to_the_latest_layer_that_takes_them():
    g = graph("input 3@8x8\nconv 4@3x3 leaky alpha=0.2 pad=1 bn momentum=0.01")
    assert g.node("leaky1").attrs["alpha"] == 0.2
    assert g.node("conv1").attrs["pad"] == 1 and g.node("conv1").out_shape == (4, 8, 8)
    assert g.node("bn1").attrs["momentum"] == 0.01
    assert [n.row for n in g.nodes[1:]] == ["conv1"] * 3
    assert g.node("bn1").pos.col == 34 and g.node("leaky1").pos.col == 12


def test_option_values_are_typed_by_the_registry_default():
    g = graph("input 3@8x8\nconv 4@3x3 bias=false pad=valid -> bn eps=1 -> conv 4@3x3 bias=true pad=same")
    assert g.node("conv1").attrs["bias"] is False and g.node("conv1").attrs["pad"] == "valid"
    assert g.node("bn1").attrs["eps"] == 1.0 and isinstance(g.node("bn1").attrs["eps"], float)
    assert g.node("conv2").attrs["bias"] is True and g.node("conv2").out_shape == (4, 6, 6)


def test_flags_set_attributes():
    g = graph("input seq 10 of 3\nlstm 5 sequences bidirectional -> gru 4")
    lstm = g.node("lstm1")
    assert lstm.attrs["sequences"] is True and lstm.attrs["bidirectional"] is True
    assert lstm.out_shape == (10, 10)
    assert g.node("gru1").attrs["sequences"] is False and g.output.out_shape == (4,)


def test_size_forms():
    g = graph("input 3@20x20\nconv 4@5 -> conv 4@3x5/2 -> maxpool 3x3/1 -> avgpool 2 -> dropout 0.25")
    assert g.node("conv1").attrs["kernel"] == (5, 5) and g.node("conv1").out_shape == (4, 16, 16)
    # (16-3)//2+1 = 7 high, (16-5)//2+1 = 6 wide
    assert g.node("conv2").attrs["stride"] == (2, 2) and g.node("conv2").out_shape == (4, 7, 6)
    assert g.node("maxpool1").out_shape == (4, 5, 4)
    assert g.node("avgpool1").attrs["stride"] == (2, 2) and g.node("avgpool1").out_shape == (4, 2, 2)
    assert g.node("dropout1").attrs["p"] == 0.25


def test_implicit_flatten_before_fc_on_images_only():
    g = graph("input 2@3x4\nfc 5 -> fc 3")
    assert [n.name for n in g.nodes] == ["input", "flatten1", "fc1", "fc2"]
    flat = g.node("flatten1")
    assert flat.out_shape == (24,) and flat.row == "flatten1" and flat.pos == g.node("fc1").pos
    # docs/language.md: on a sequence fc acts on each step (50x64 -> 50x10); `flatten` still flattens
    g = graph("input seq 6 of 4\nfc 2")
    assert [n.kind for n in g.nodes] == ["input", "fc"] and g.output.out_shape == (6, 2)
    assert graph("input seq 6 of 4\nflatten -> fc 2").node("flatten1").out_shape == (24,)


def test_flatten_counter_is_shared_with_written_flattens():
    g = graph("input 2@2x2\nconv 2@1x1 as a -> flatten -> fc 3\nconcat(identity | identity)\n")
    assert [n.name for n in g.nodes if n.kind == "flatten"] == ["flatten1"]
    g = graph("input 2@2x2\nadd(flatten -> fc 3 | fc 3)")
    assert [n.name for n in g.nodes if n.kind == "flatten"] == ["flatten1", "flatten2"]


def test_branches_start_from_the_current_tensor_and_merge_in_order():
    g = graph("input 4@8x8\nconv 4@1x1\nconcat(conv 2@1x1 | conv 3@3x3 pad=1 -> relu | identity)")
    assert g.node("conv2").inputs == ["conv1"] and g.node("conv3").inputs == ["conv1"]
    cat = g.node("concat1")
    assert cat.inputs == ["conv2", "relu1", "conv1"] and cat.out_shape == (2 + 3 + 4, 8, 8)
    assert cat.attrs["axis"] == 0


def test_concat_of_vectors_and_sequences():
    assert graph("input 6\nconcat(fc 2 | fc 3)").output.out_shape == (5,)
    assert graph("input seq 7 of 3\nconcat(lstm 2 sequences | lstm 4 sequences)").output.out_shape == (7, 6)


def test_add_and_concat_with_labels():
    g = graph("input 4@8x8\nconv 4@3x3 pad=1 as a\nconv 4@3x3 pad=1 as b\nconv 4@3x3 pad=1\nadd a b\nconcat a")
    assert g.node("add1").inputs == ["conv3", "conv1", "conv2"]
    assert g.node("concat1").inputs == ["add1", "conv1"] and g.output.out_shape == (8, 8, 8)


def test_labels_are_local_to_a_block_call_and_a_repeated_group_sets_its_own_again():
    text = "input 2@4x4\nblock r() { conv 2@1x1 as a -> relu -> add a }\nr() -> r()\nconv 2@1x1 as a\nrelu\nadd a"
    g = graph(text)
    assert g.node("r2.add1").inputs == ["r2.relu1", "r2.conv1"]
    assert g.node("add1").inputs == ["relu1", "conv1"]
    g = graph("input 2\n(relu as a -> tanh -> add a) x2")
    assert g.node("add2").inputs == ["tanh2", "relu2"]


def test_shortcut_is_the_identity_when_the_shape_is_kept():
    g = graph("input 4@8x8\nadd(conv 4@3x3 pad=1 | shortcut)")
    assert [n.name for n in g.nodes] == ["input", "conv1", "add1"]
    assert g.node("add1").inputs == ["conv1", "input"]


def test_shortcut_projection_matches_channels_and_stride():
    g = graph("input 4@9x9\ndefault conv bias=on\nadd(shortcut | conv 8@3x3/2 pad=1)\n"
              "add(conv 16@1x1 | shortcut)")
    # 9 -> (9+2-3)//2+1 = 5; a 1x1 window at stride 2 gives (9-1)//2+1 = 5 too
    proj = g.node("shortcut.conv")
    assert proj.out_shape == (8, 5, 5) and proj.attrs["stride"] == (2, 2) and proj.attrs["bias"] is False
    assert proj.attrs["pads"] == (0, 0, 0, 0)
    assert g.node("shortcut.bn").row == "shortcut.conv" and g.node("shortcut.bn").kind == "bn"
    assert g.node("add1").inputs == ["shortcut.bn", "conv1"]
    assert g.node("shortcut2.conv").attrs["stride"] == (1, 1) and g.node("shortcut2.conv").out_shape == (16, 5, 5)
    assert g.node("add2").inputs == ["conv2", "shortcut2.bn"]


def test_inputs_images_vectors_and_sequences():
    image = graph("input 3@5x7 -> relu").input
    assert image.out_shape == (3, 5, 7) and image.attrs == {"shape": (3, 5, 7), "tokens": False}
    assert graph("input 10 -> relu").input.out_shape == (10,)
    tokens = graph("input seq 12 -> embed 4 vocab=9").input
    assert tokens.dtype == "int64" and tokens.attrs["tokens"] is True and tokens.out_shape == (12,)
    seq = graph("input seq 12 of 3 -> rnn 2").input
    assert seq.dtype == "float32" and seq.attrs["tokens"] is False and seq.out_shape == (12, 3)
    assert graph("input seq 12 -> embed 4 vocab=9").node("embed1").attrs["vocab"] == 9


def test_node_text_and_positions_come_from_the_step():
    g = graph("input 3@8x8\n\n  conv 4@3x3 relu x2   # two\nadd(relu |\n identity)")
    c2 = g.node("conv2")
    assert c2.text == "conv 4@3x3 relu x2" and (c2.pos.line, c2.pos.col) == (3, 3)
    assert g.node("relu2").pos.col == 14
    assert g.node("add1").text == "add(…)" and g.node("add1").pos.line == 4
    assert g.input.text == "input 3@8x8"


def test_train_settings_are_typed_as_written():
    g = graph("train loss=bce optimizer=adam lr=1 beta1=0.9 eps=1e-8 batch=8\ninput 2 -> fc 1")
    assert g.train == {"loss": "bce", "optimizer": "adam", "lr": 1, "beta1": 0.9, "eps": 1e-8, "batch": 8}
    assert [type(g.train[k]) for k in ("loss", "lr", "beta1", "eps")] == [str, int, float, float]


def test_graph_keeps_file_and_source():
    g = compile_spec("input 2 -> fc 1", file="xor.dlc")
    assert g.file == "xor.dlc" and g.source == "input 2 -> fc 1"


def test_compiling_imports_neither_numpy_nor_onnx():
    code = """
import sys
from dlc.compile import compile_spec
from dlc.errors import DlcError
compile_spec("input 3@8x8 -> conv 4@3x3 bn relu -> fc 2 softmax")
try:
    compile_spec("input 3@8x8 -> cnv 4@3x3")
except DlcError:
    pass
print([m for m in ("numpy", "onnx", "onnxruntime") if m in sys.modules])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
