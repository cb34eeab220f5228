"""The parser alone: spec text -> AST with positions, following the lexical rules of the language."""

from __future__ import annotations

import pytest

from dlc.errors import DlcError
from dlc.syntax import (BlockDef, Call, Default, Group, Input, Merge, Option, Step, Train, Word, parse,
                        parser)


def steps(text: str) -> list:
    return [s for s in parse(text) if isinstance(s, Step)]


def test_newlines_and_arrows_separate_steps_and_runs_count_as_one():
    one_line = parse("input 1@28x28 -> fc 30 sigmoid -> fc 10 sigmoid")
    many = parse("input 1@28x28\n\n  -> \nfc 30 sigmoid ->\n\n-> fc 10 sigmoid\n")
    for tree in (one_line, many):
        assert isinstance(tree[0], Input)
        assert [(s.kind.name, s.size.raw, [i.name for i in s.items]) for s in tree[1:]] == [
            ("fc", "30", ["sigmoid"]), ("fc", "10", ["sigmoid"])]


def test_comments_and_blank_lines_are_ignored():
    tree = parse("# a net\n\ninput 784   # features\n  # nothing here\nfc 10 # out\n# end")
    assert [type(s) for s in tree] == [Input, Step]
    assert tree[1].text == "fc 10"


def test_an_arrow_inside_a_comment_is_part_of_the_comment():
    for end in ("", "\n"):
        tree = parse("input 4\nfc 3   # 4 -> 3" + end)
        assert [s.text for s in tree] == ["input 4", "fc 3"]


def test_positions_are_one_based_line_and_column():
    tree = parse("input 3@32x32\n  conv 16@3x3/2 pad=1 relu x2 as a\n")
    conv = tree[1]
    assert (conv.pos.line, conv.pos.col) == (2, 3)
    assert (conv.kind.pos.line, conv.kind.pos.col, conv.kind.pos.end_col) == (2, 3, 7)
    assert (conv.size.pos.col, conv.size.pos.end_col) == (8, 16)
    pad, relu = conv.items
    assert isinstance(pad, Option) and (pad.key, pad.value.v, pad.pos.col, pad.value.pos.col) == ("pad", 1, 17, 21)
    assert isinstance(relu, Word) and (relu.name, relu.pos.col) == ("relu", 23)
    assert (conv.repeat.v, conv.repeat.pos.col) == (2, 28)
    assert (conv.label.name, conv.label.pos.col) == ("a", 34)
    assert conv.text == "conv 16@3x3/2 pad=1 relu x2 as a"


def test_sizes_are_channels_at_dims_slash_stride():
    conv, pool, fc, drop, big = steps("conv 96@11x11/4\nmaxpool 3/2\nfc 10\ndropout 0.5\nconv 8@3x5/1x2")
    assert (conv.size.channels.v, conv.size.dims.v, conv.size.stride.v) == (96, (11, 11), 4)
    assert (pool.size.channels, pool.size.dims.v, pool.size.stride.v) == (None, 3, 2)
    assert (fc.size.dims.v, fc.size.stride) == (10, None)
    assert drop.size.dims.v == 0.5
    assert (big.size.dims.v, big.size.stride.v) == ((3, 5), (1, 2))


def test_numbers_are_integers_decimals_and_exponents():
    (s,) = steps("bn eps=5e-4 momentum=0.5 k=1E3 alpha=.25 beta=-2")
    values = {o.key: o.value.v for o in s.items}
    assert values == {"eps": 5e-4, "momentum": 0.5, "k": 1000.0, "alpha": 0.25, "beta": -2}
    assert isinstance(values["beta"], int) and isinstance(values["k"], float)


def test_block_parameters_stand_where_numbers_stand():
    (block,) = parse("block b(c, s=1, p=0.5, n=2) {\n  conv c@3x3/s groups=g\n  dropout p x n\n}")
    assert isinstance(block, BlockDef)
    assert [(p.name.name, p.default.v if p.default else None) for p in block.params] == [
        ("c", None), ("s", 1), ("p", 0.5), ("n", 2)]
    conv, drop = block.body
    assert (conv.size.channels.v, conv.size.dims.v, conv.size.stride.v) == ("c", (3, 3), "s")
    assert conv.items[0].value.v == "g"
    # a lone name after the kind is a word; the compiler decides it is the parameter p
    assert drop.size is None and drop.items[0].name == "p" and drop.repeat.v == "n"


def test_repeat_is_x_digits_and_a_name_that_only_starts_like_one_is_a_name():
    a, b, c = steps("relu x3\nrelu x 4\nrelu x3a")
    assert a.repeat.v == 3 and b.repeat.v == 4 and c.repeat is None
    assert c.items[0].name == "x3a"


def test_keywords_are_names_where_a_keyword_cannot_stand():
    (s,) = steps("relu as input")
    assert s.label.name == "input"
    (b,) = parse("block seq(of) { relu }")
    assert b.name.name == "seq" and b.params[0].name.name == "of"


def test_groups_calls_and_merges():
    tree = parse("(conv 8@3x3 -> relu) x3 as g\nstage(64, n=2) x2\nadd(\n  conv 8@3x3\n  relu\n | shortcut\n)")
    group, call, merge = tree
    assert isinstance(group, Group) and [s.kind.name for s in group.body] == ["conv", "relu"]
    assert group.repeat.v == 3 and group.label.name == "g"
    assert isinstance(call, Call) and call.name.name == "stage" and call.repeat.v == 2
    assert call.args[0].v == 64 and isinstance(call.args[1], Option) and call.args[1].key == "n"
    assert isinstance(merge, Merge) and merge.kind.name == "add"
    assert [[s.kind.name for s in br] for br in merge.branches] == [["conv", "relu"], ["shortcut"]]
    assert (merge.pos.line, merge.pos.col) == (3, 1)


def test_a_lone_name_in_parentheses_is_an_argument():
    (call,) = parse("f(c)")
    assert isinstance(call, Call) and call.args[0].v == "c"
    (empty,) = parse("f()")
    assert isinstance(empty, Call) and empty.args == []


def test_input_forms():
    image, vector, tokens, seq = (parse(t)[0] for t in
                                  ("input 3@224x224", "input 784", "input seq 200", "input seq 50 of 64"))
    assert (image.size.channels.v, image.size.dims.v) == (3, (224, 224))
    assert vector.size.dims.v == 784 and vector.steps is None
    assert (tokens.size, tokens.steps.v, tokens.features) == (None, 200, None)
    assert (seq.steps.v, seq.features.v) == (50, 64)


def test_default_and_train_statements():
    d, t = parse("default conv pad=same bias=off ceil\ntrain optimizer=sgd lr=0.01 epochs=3")
    assert isinstance(d, Default) and d.kind.name == "conv"
    assert [(i.key, i.value.v) if isinstance(i, Option) else i.name for i in d.items] == [
        ("pad", "same"), ("bias", "off"), "ceil"]
    assert isinstance(t, Train) and [(o.key, o.value.v) for o in t.options] == [
        ("optimizer", "sgd"), ("lr", 0.01), ("epochs", 3)]


def test_windows_line_endings_read_like_unix_ones():
    assert [s.kind.name for s in parse("input 4\r\nrelu\r\nfc 2\r\n")[1:]] == ["relu", "fc"]


@pytest.mark.parametrize("text, line, col", [
    ("input 4\nconv 8@3x3 relu 128", 2, 17),
    ("input 4\nadd(relu | identity", 2, 4),
    ("input 4 $", 1, 9),
])
def test_syntax_errors_are_located(text, line, col):
    with pytest.raises(DlcError) as e:
        parse(text)
    assert (e.value.pos.line, e.value.pos.col) == (line, col)


def test_the_parser_is_built_once_per_process():
    assert parser() is parser()


def test_the_parser_tables_are_cached_on_disk_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    parser.cache_clear()
    try:
        parser()
        (cached,) = (tmp_path / "dlc").glob("parser-*.json")
        parser.cache_clear()
        assert parse("input 4 -> relu")[1].kind.name == "relu"  # loaded from the file
        cached.write_bytes(b"not json")
        parser.cache_clear()
        assert parse("input 4 -> relu")[1].pos.col == 12  # rebuilt, and the file rewritten
        assert cached.read_bytes() != b"not json"
        assert not list((tmp_path / "dlc").glob("*.tmp"))
    finally:
        parser.cache_clear()


class _Planted:
    """A pickle that, when loaded, creates a file: what an attacker would put in the cache folder."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_cache_file_runs_no_code(tmp_path, monkeypatch):
    import json
    import pickle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    parser.cache_clear()
    try:
        parser()
        (cached,) = (tmp_path / "dlc").glob("parser-*.json")
        marker = tmp_path / "code-ran"
        payload = pickle.dumps(_Planted(marker))
        assert not marker.exists()
        pickle.loads(payload)  # the payload works: loading it as a pickle runs the call
        assert marker.exists()
        marker.unlink()
        # lark's own cache name (a pickle) and dlc's, holding a pickle or JSON that names another class
        cached.with_suffix(".pickle").write_bytes(payload)
        for planted in (payload, json.dumps({"data": {}, "memo": {"0": {"__type__": "os.system"}}}).encode()):
            cached.write_bytes(planted)
            parser.cache_clear()
            assert parse("input 4 -> relu")[1].kind.name == "relu"
            assert not marker.exists()
    finally:
        parser.cache_clear()
