"""`dlc draw`: the network as SVG, Mermaid and Graphviz text, checked on the files' structure."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.analysis import analyse
from dlc.draw.boxes import diagram
from dlc.draw.layout import structure
from dlc.zoo import zoo_path

SVG = "{http://www.w3.org/2000/svg}"

RESIDUAL = """input 4@8x8
conv 4@3x3 pad=1 relu
add( conv 4@3x3 pad=1 relu -> conv 4@3x3 pad=1 | shortcut )
relu
"""
PROJECTION = RESIDUAL.replace("add( conv 4@3x3 pad=1 relu", "add( conv 8@3x3/2 pad=1 relu").replace(
    "-> conv 4@3x3 pad=1 |", "-> conv 8@3x3 pad=1 |")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def draw_svg(tmp_path, *args) -> ET.Element:
    out = tmp_path / "net.svg"
    r = run("draw", *args, "-o", out)
    assert r.exit_code == 0, r.output
    return ET.parse(out).getroot()


def boxes(svg: ET.Element) -> dict[str, dict]:
    """Each box's first text line (its name) -> its rectangle and hover title."""
    found = {}
    for g in svg.iter(f"{SVG}g"):
        if g.get("class") != "box":
            continue
        rect = g.find(f"{SVG}rect")
        texts = [t.text for t in g.findall(f"{SVG}text")]
        found[texts[0]] = {"x": float(rect.get("x")), "y": float(rect.get("y")), "w": float(rect.get("width")),
                           "h": float(rect.get("height")), "title": g.find(f"{SVG}title").text, "lines": texts}
    return found


def zoo_graph(name: str):
    return compile_spec(zoo_path(name).read_text(), file=f"{name}.dlc")


def test_lenet5_is_a_column_of_the_course_table_rows(tmp_path):
    svg = draw_svg(tmp_path, "lenet5")
    b = boxes(svg)
    # LeNet-5 as the course table prints it: C1, S2, C3, S4, the flatten, C5, F6 and the output.
    assert list(b) == ["input", "conv1", "avgpool1", "conv2", "avgpool2", "flatten1", "fc1", "fc2", "fc3"]
    assert b["conv1"]["lines"] == ["conv1", "conv 6@5x5 tanh", "6@28x28 · 156 params"]  # 6*(5*5*1) + 6
    assert b["fc1"]["lines"][2] == "120 · 48,120 params"  # 400*120 + 120
    assert b["conv1"]["title"] == "conv1 + tanh1"  # the folded suffix layer, on hover
    ys = [v["y"] for v in b.values()]
    assert ys == sorted(ys) and len({round(v["x"] + v["w"] / 2) for v in b.values()}) == 1
    assert svg.find(f"{SVG}title").text == "lenet5"


def test_every_weighted_layer_of_resnet18_is_named(tmp_path):
    svg = draw_svg(tmp_path, "resnet18")
    text = " ".join(t.text or "" for t in svg.iter() if t.tag in (f"{SVG}text", f"{SVG}title"))
    weighted = [n.name for n in zoo_graph("resnet18").nodes if n.kind in ("conv", "bn", "fc")]
    assert len(weighted) == 20 + 20 + 1  # 17 convs + 3 projection convs, a bn after each, one fc
    for name in weighted:
        assert re.search(rf"(^|[ +]){re.escape(name)}($|[ +])", text), name


def test_a_projection_shortcut_is_a_branch_beside_the_main_path(tmp_path):
    b = boxes(draw_svg(tmp_path, "-e", PROJECTION))
    main_head, shortcut, merge = b["conv2"], b["shortcut.conv"], b["add1"]
    assert main_head["y"] == shortcut["y"]
    assert main_head["x"] + main_head["w"] <= shortcut["x"]  # side by side, not overlapping
    assert merge["y"] > b["conv3"]["y"] > main_head["y"]
    assert shortcut["lines"][2] == "8@4x4 · 48 params"  # conv 8@1x1/2 without bias: 4*8 = 32, bn: 2*8 = 16


def test_an_identity_shortcut_is_an_edge_beside_the_branch(tmp_path):
    svg = draw_svg(tmp_path, "-e", RESIDUAL)
    b = boxes(svg)
    assert [k for k in b] == ["input", "conv1", "conv2", "conv3", "add1", "relu3"]
    assert len({round(v["x"] + v["w"] / 2) for v in b.values()}) == 1  # the main path stays straight
    paths = [p.get("d") for p in svg.iter(f"{SVG}path") if p.get("marker-end")]
    assert len(paths) == 6  # five arrows down the column and the skip conv1 -> add1
    (skip,) = [d for d in paths if "C" in d]  # the others run straight down
    lane = float(re.search(r" ([\d.]+),[\d.]+ V", skip).group(1))  # where it runs down
    assert lane > max(b[n]["x"] + b[n]["w"] for n in ("conv2", "conv3"))  # beside the branch, not through it
    assert float(re.search(r"V([\d.]+)", skip).group(1)) < b["add1"]["y"]


def test_googlenet_draws_each_inception_module_as_four_branches(tmp_path):
    b = boxes(draw_svg(tmp_path, "googlenet"))
    assert sum(1 for name in b if name.endswith(".concat1")) == 9
    heads = [b[f"inception4.{n}"] for n in ("conv1", "conv2", "conv4", "maxpool1")]
    assert len({h["y"] for h in heads}) == 1
    assert all(a["x"] + a["w"] < c["x"] for a, c in zip(heads, heads[1:]))
    assert b["inception4.concat1"]["lines"][2] == "512@14x14"  # 4a: 192 + 208 + 48 + 64


def test_unet_skips_are_four_nested_lanes():
    d = diagram(analyse(zoo_graph("unet")))
    skips = []
    column = structure([b.name for b in d.boxes], {b.name: b.inputs for b in d.boxes})
    while True:
        split = next((i for i in column.items if not isinstance(i, str)), None)
        if split is None:
            break
        skips.extend(split.skips)
        (column,) = split.branches
    # Fig. 1 of the paper: each level's last conv is copied to the decoder's concat at its resolution.
    assert skips == [("double1.conv2", "concat4", False), ("double2.conv2", "concat3", False),
                     ("double3.conv2", "concat2", False), ("double4.conv2", "concat1", False)]


def test_collapse_draws_a_block_call_and_its_repeats_as_one_box(tmp_path):
    b = boxes(draw_svg(tmp_path, "resnet18", "--collapse"))
    assert list(b) == ["input", "conv1", "maxpool1", "basic1 … basic2", "basic3", "basic4", "basic5", "basic6",
                       "basic7", "basic8", "gap1", "fc1"]
    # two basic blocks of two 64->64 3x3 convs without bias, each with a bn: 2*2*(64*64*9 + 2*64)
    assert b["basic1 … basic2"]["lines"] == ["basic1 … basic2", "basic(64) x2", "64@56x56 · 147,968 params"]
    assert b["basic3"]["lines"][1] == "basic(128, s=2)"


def test_a_block_step_shows_the_layer_its_call_makes_and_keeps_the_template_on_hover(tmp_path):
    # resnet18's `block basic(c, s=1)` writes `conv c@3x3/s pad=1 bn relu`; basic(64) makes a 64-channel
    # stride-1 conv (no /1, as a step writes it), basic(128, s=2) a 128-channel stride-2 one
    b = boxes(draw_svg(tmp_path, "resnet18"))
    assert b["basic1.conv1"]["lines"][1] == "conv 64@3x3 pad=1 bn relu"
    assert b["basic3.conv1"]["lines"][1] == "conv 128@3x3/2 pad=1 bn relu"
    assert b["basic3.conv2"]["lines"][1] == "conv 128@3x3 pad=1 bn"
    assert b["basic1.conv1"]["title"].endswith("in its block: conv c@3x3/s pad=1 bn relu")
    assert "in its block" not in b["conv1"]["title"]  # a top-level step is written with values already
    for suffix, pattern in ((".mmd", r"%% n\d+ in its block: conv c@3x3/s pad=1 bn relu\n\s+n\d+\[\"<b>basic1\.conv1</b>"
                                     r"<br/>conv 64@3x3 pad=1 bn relu<br/>"),
                            (".dot", r'label="basic1\.conv1\\nconv 64@3x3 pad=1 bn relu\\n[^"]*", [^\]]*'
                                     r'tooltip="in its block: conv c@3x3/s pad=1 bn relu"')):
        out = tmp_path / f"net{suffix}"
        assert run("draw", "resnet18", "-o", out).exit_code == 0
        assert re.search(pattern, out.read_text()), suffix


def test_a_parameter_is_replaced_only_where_a_value_stands():
    g = compile_spec("input 3@8x8\nblock b(pad, n, s=1) {\n conv pad@3x3/s pad=pad relu x n\n}\nb(4, 2) -> b(8, 1, s=2)\n")
    shown = {n.name: n.resolved_text for n in g.nodes if n.kind == "conv"}
    assert shown == {"b1.conv1": "conv 4@3x3 pad=4 relu x 2", "b1.conv2": "conv 4@3x3 pad=4 relu x 2",
                     "b2.conv1": "conv 8@3x3/2 pad=8 relu x 1"}


def test_resnet152_collapsed_stays_short(tmp_path):
    b = boxes(draw_svg(tmp_path, "resnet152", "--collapse"))
    # input, conv1, maxpool, seven block-call statements (x3, /2, x7, /2, x35, /2, x2), gap, fc
    assert len(b) == 12
    assert b["bottleneck13 … bottleneck47"]["lines"][1] == "bottleneck(256, 1024) x35"


def test_block_calls_are_kept_in_the_graph_outermost_first():
    g = compile_spec("input 2\nblock inner(n) {\n fc n relu\n}\nblock outer(n) {\n inner(n) x2\n}\n"
                     "outer(3)\n(inner(4) -> inner(5)) x2\nfc 1\n")
    calls = {n.name: n.call for n in g.nodes}
    assert calls["outer1.inner1.fc1"] == calls["outer1.inner2.fc1"]
    assert calls["outer1.inner1.fc1"].text == "outer(3)" and calls["outer1.inner1.fc1"].name == "outer1"
    # a repeated group runs each call statement once per turn: four calls, four boxes when collapsed
    assert [calls[f"inner{i}.fc1"].text for i in (1, 2, 3, 4)] == ["inner(4)", "inner(5)", "inner(4)", "inner(5)"]
    assert calls["fc1"] is None and calls["input"] is None
    assert [b.name for b in diagram(analyse(g), collapse=True).boxes] == ["input", "outer1", "inner1", "inner2",
                                                                          "inner3", "inner4", "fc1"]


def test_all_draws_every_node(tmp_path):
    b = boxes(draw_svg(tmp_path, "-e", "input 2 -> fc 2 sigmoid -> fc 1 sigmoid", "--all"))
    assert list(b) == ["input", "fc1", "sigmoid1", "fc2", "sigmoid2"]


def test_mermaid_lists_every_box_and_edge(tmp_path):
    out = tmp_path / "net.mmd"
    assert run("draw", "-e", RESIDUAL, "-o", out).exit_code == 0
    text = out.read_text().splitlines()
    assert text[:3] == ["---", 'title: "<expr>"', "config:"] and "flowchart TD" in text
    nodes = [line for line in text if re.fullmatch(r'\s+n\d+\[".*"\]', line)]
    edges = [line for line in text if re.fullmatch(r"\s+n\d+ --> n\d+", line)]
    # input, conv1, conv2, conv3, add1, relu3; five edges down the column and the skip conv1 -> add1
    assert len(nodes) == 6 and len(edges) == 6
    assert "    n1 --> n4" in text
    assert all('"' not in line.split('["', 1)[1][:-2] for line in nodes)


def test_dot_lists_every_box_and_edge(tmp_path):
    out = tmp_path / "net.dot"
    assert run("draw", "-e", PROJECTION, "-o", out).exit_code == 0
    text = out.read_text()
    assert text.startswith('digraph "<expr>" {')
    assert len(re.findall(r"^\s+n\d+ \[label=", text, re.M)) == 7  # the shortcut is a box of its own
    assert len(re.findall(r"^\s+n\d+ -> n\d+;", text, re.M)) == 7
    if shutil.which("dot"):
        r = subprocess.run(["dot", "-Tsvg", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args, message", [
    (["lenet5", "-o", "{tmp}/net.png"], "give a file ending in .svg, .mmd, .dot"),
    (["lenet5", "-o", "{tmp}/missing/net.svg"], "there is no folder"),
    (["-e", "input 2 -> fc 2 relu 3", "-o", "{tmp}/net.svg"], "<expr>:1:"),
])
def test_bad_input_is_a_message_and_exit_2(tmp_path, args, message):
    r = run("draw", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output


def test_draw_refuses_to_write_over_the_spec(tmp_path):
    spec = tmp_path / "net.svg"  # a spec file with a picture's name
    spec.write_text("input 2 -> fc 1\n")
    r = run("draw", spec, "-o", spec)
    assert r.exit_code == 2 and "is the spec itself" in r.output
    assert spec.read_text() == "input 2 -> fc 1\n"


def test_a_label_read_twice_runs_down_the_lane_into_both_merges(tmp_path):
    svg = draw_svg(tmp_path, "-e", "input 4 -> fc 4 as a -> fc 4 -> add a -> fc 4 -> add a -> fc 2")
    b = boxes(svg)
    assert list(b) == ["input", "fc1", "fc2", "add1", "fc3", "add2", "fc4"]
    paths = [p.get("d") for p in svg.iter(f"{SVG}path") if p.get("marker-end")]
    assert len(paths) == 8  # six down the column, fc1 -> add1 and fc1 -> add2
    lane_x = {float(x) for d in paths for x in re.findall(r"C[\d.]+,[\d.]+ [\d.]+,[\d.]+ ([\d.]+),[\d.]+ V", d)}
    assert len(lane_x) == 1 and lane_x.pop() > max(b[n]["x"] + b[n]["w"] for n in ("fc2", "fc3"))
    add1 = b["add1"]
    side = f"{add1['x'] + add1['w']:.1f},{add1['y'] + add1['h'] / 2:.1f}"
    assert sum(d.endswith(side) for d in paths) == 1  # into add1's right side, not across fc2


# --- ONNX models: one box per row of `dlc shapes MODEL.onnx`, laid out as a spec is ---------------------

def exported(tmp_path, name: str):
    path = tmp_path / f"{name}.onnx"
    r = run("export", name, "-o", path)
    assert r.exit_code == 0, r.output
    return path


def svg_text(svg: ET.Element) -> str:
    return " ".join(t.text or "" for t in svg.iter() if t.tag in (f"{SVG}text", f"{SVG}title"))


def test_dlcs_export_of_resnet18_draws_as_its_spec(tmp_path):
    svg = draw_svg(tmp_path, exported(tmp_path, "resnet18"))
    b = boxes(svg)
    # the export keeps the spec's layer names, and its rows are the spec's rows
    assert list(b) == list(boxes(draw_svg(tmp_path, "resnet18")))
    text = svg_text(svg)
    for name in [n.name for n in zoo_graph("resnet18").nodes if n.kind in ("conv", "bn", "fc")]:
        assert re.search(rf"(^|[ +]){re.escape(name)}($|[ +])", text), name
    assert b["conv1"]["lines"][1:] == ["conv 64@7x7/2 pad=3 bn relu", "64@112x112 · 9,536 params"]  # 3*64*49 + 2*64


def test_dlcs_export_of_googlenet_keeps_the_four_branches(tmp_path):
    b = boxes(draw_svg(tmp_path, exported(tmp_path, "googlenet")))
    assert sum(1 for name in b if name.endswith(".concat1")) == 9
    heads = [b[f"inception4.{n}"] for n in ("conv1", "conv2", "conv4", "maxpool1")]
    assert len({h["y"] for h in heads}) == 1
    assert all(a["x"] + a["w"] < c["x"] for a, c in zip(heads, heads[1:]))
    assert b["inception4.concat1"]["lines"][2] == "512@14x14"  # 4a: 192 + 208 + 48 + 64


@pytest.fixture(scope="module")
def torch_resnet18(tmp_path_factory):
    """torch_models' ResNet-18 through PyTorch's TorchScript exporter, and the torch module itself."""
    torch = pytest.importorskip("torch")
    import torch_models

    net = torch_models.resnet18()
    path = tmp_path_factory.mktemp("torch") / "resnet18.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 224, 224),), dynamo=False)
    return path, net


def test_a_pytorch_resnet18_is_one_box_per_layer(tmp_path, torch_resnet18):
    import onnx
    from torch import nn

    path, net = torch_resnet18
    for suffix in (".mmd", ".dot"):
        assert run("draw", path, "-o", tmp_path / f"net{suffix}").exit_code == 0
    svg = draw_svg(tmp_path, path)
    b = boxes(svg)
    # input; stem conv (bn and relu folded in) and maxpool; 8 blocks of two convs and an add (its relu
    # folded in); 3 projection shortcuts; global pool, flatten, fc
    assert len(b) == 1 + 2 + 8 * 3 + 3 + 3
    text = svg_text(svg)
    model = onnx.load(path)
    weights = {t.name for t in model.graph.initializer if t.dims and t.data_type == onnx.TensorProto.FLOAT}
    # (the exporter stores the folded biases, all zero here, once and hands them on through Identity nodes)
    weighted = [n.name for n in model.graph.node if n.op_type != "Identity" and any(i in weights for i in n.input)]
    assert len(weighted) == 20 + 1  # the 20 convs of torchvision's ResNet-18 (bn folded) and the fc
    for name in weighted:
        assert re.search(rf"(^|[ +]){re.escape(name)}($|[ +])", text), name
    # a box for each conv and each linear module of the torch model
    kinds = [v["lines"][1].split()[0] for v in b.values()]
    assert kinds.count("Conv") == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert kinds.count("Gemm") == sum(isinstance(m, nn.Linear) for m in net.modules())
    # a projection shortcut stands beside the block's first conv, the add below both
    body, shortcut = b["/stages/stages.2/body/body.0/body.0.0/Conv"], b["/stages/stages.2/shortcut/shortcut.0/Conv"]
    assert body["y"] == shortcut["y"] and body["x"] + body["w"] <= shortcut["x"]
    assert b["/stages/stages.2/Add"]["y"] > body["y"]
    assert shortcut["lines"][1:] == ["Conv 128@1x1/2", "128@28x28 · 8,192 params"]  # 64*128, bias folded: zero


def test_collapse_is_refused_for_an_onnx_model(tmp_path):
    path = exported(tmp_path, "lenet5")
    r = run("draw", path, "-o", tmp_path / "net.svg", "--collapse")
    assert r.exit_code == 2 and "--collapse" in r.output and "Traceback" not in r.output


def test_shape_gives_the_dimensions_a_pytorch_export_leaves_free(tmp_path):
    torch = pytest.importorskip("torch")
    import torch_models
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 2))
    path = tmp_path / "net.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 32, 32),), dynamo=False, input_names=["x"],
                        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    r = run("draw", path, "-o", tmp_path / "net.svg")
    assert r.exit_code == 2 and "--shape" in r.output and "Traceback" not in r.output
    b = boxes(draw_svg(tmp_path, path, "--shape", "3@64x64"))
    # conv 3*8*9 + 8 with its relu, the global pool, the flatten and fc 8*2 + 2
    assert [v["lines"][1:] for v in b.values()] == [["input", "3@64x64"], ["Conv 8@3x3 Relu", "8@64x64 · 224 params"],
                                                     ["GlobalAveragePool", "8@1x1"], ["Flatten", "8"],
                                                     ["Gemm 2", "2 · 18 params"]]
