"""The spec writer (dlc.decompile) on layer graphs built by hand, with no ONNX model behind them: the
text it writes is the text one would write for that network, and it compiles to those layers."""

from __future__ import annotations

import pytest

from dlc.decompile import SpecLayer, write_spec
from dlc.errors import DlcError


def test_a_residual_block_is_written_as_a_person_writes_it():
    # input -> conv bn relu -> conv -> add(that, relu's output) -> gap -> fc: two convs without bias
    # (so `default conv bias=off`), bn and relu as suffixes, the skip as `as skip1` ... `add skip1`
    layers = [
        SpecLayer("input", [], "3@8x8"),
        SpecLayer("conv", [0], "4@3x3", {"pad": 1, "dil": 1, "groups": 1, "bias": False}),
        SpecLayer("bn", [1], options={"eps": 1e-5, "momentum": 0.1}),
        SpecLayer("relu", [2]),
        SpecLayer("conv", [3], "4@3x3", {"pad": 1, "bias": False}),
        SpecLayer("add", [4, 3]),
        SpecLayer("gap", [5]),
        SpecLayer("fc", [6], "10", {"bias": True}),
    ]
    text, graph, order = write_spec(layers, {"out": 7}, "<hand>", "# by hand\n")
    assert text == ("# by hand\n"
                    "input 3@8x8\n"
                    "default conv bias=off\n"
                    "conv 4@3x3 pad=1 bn relu as skip1  # 4@8x8\n"
                    "conv 4@3x3 pad=1                   # 4@8x8\n"
                    "add skip1                          # 4@8x8\n"
                    "gap                                # 4\n"
                    "fc 10                              # 10\n")
    assert [n.kind for n in graph.nodes] == ["input", "conv", "bn", "relu", "conv", "add", "gap", "fc"]
    assert order == [1, 2, 3, 4, 5, 6, 7]
    assert graph.nodes[1].attrs["bias"] is False and graph.nodes[-1].attrs["bias"] is True


def test_flags_options_and_a_tied_table_keep_the_language_order():
    # a flag is a bare word, an option at its default is left out, `tied=` follows the size
    layers = [
        SpecLayer("input", [], "seq 6"),
        SpecLayer("embed", [0], "16", {"vocab": 11}),
        SpecLayer("attention", [1], "2", {"causal": True, "bias": True, "dropout": 0.0}),
        SpecLayer("fc", [2], "11", {"bias": False}, tied=1),
    ]
    text, graph, _ = write_spec(layers, {"out": 3}, "<hand>")
    assert [line.split("#")[0].rstrip() for line in text.splitlines()] == [
        "input seq 6", "embed 16 vocab=11 as tok", "attention 2 causal", "fc 11 tied=tok bias=off"]
    assert graph.nodes[-1].attrs["tied"] is not None


def test_a_graph_no_spec_can_write_is_refused_naming_its_source():
    # a bridge, not series-parallel: b reads a, c adds a and b, d adds b and c (b is read at two levels)
    layers = [SpecLayer("input", [], "4"), SpecLayer("fc", [0], "4"), SpecLayer("fc", [1], "4"),
              SpecLayer("add", [1, 2]), SpecLayer("add", [2, 3])]
    with pytest.raises(DlcError, match="<hand>: .*cannot write"):
        write_spec(layers, {"out": 4}, "<hand>")


def test_a_residual_inside_a_merges_branch_is_labelled_once():
    # Transformer2DModel's shape: add( fc -> fc, with its own residual around the second | the input ): the
    # inner fork's `as skip1` is written where the branch's lines are, not a second time around them
    layers = [SpecLayer("input", [], "4"), SpecLayer("fc", [0], "4"), SpecLayer("fc", [1], "4"),
              SpecLayer("add", [2, 1]), SpecLayer("add", [3, 0])]
    text, graph, _ = write_spec(layers, {"out": 4}, "<hand>")
    assert [line.split("#")[0].rstrip() for line in text.splitlines()] == [
        "input 4", "add(", "    fc 4 as skip1", "    fc 4", "    add skip1", "  | identity", ")"]
    assert [n.kind for n in graph.nodes] == ["input", "fc", "fc", "add", "add"]
