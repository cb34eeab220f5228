"""Whatever text it is given, compile_spec returns a well-formed Graph or raises a DlcError whose position
lies inside that text: never another exception, never a position the caret cannot point at.

The texts are the docs/language.md examples with characters and tokens deleted, inserted and swapped (so most
of each text stays valid and the mutation reaches the compiler), and random text over the language's
characters.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlc.compile import compile_spec
from dlc.errors import DlcError
from test_dsl_examples import ALEXNET, INCEPTION, LENET5, LSTM_TEXT, MOBILENET, RESNET50, UNET, VGG16, XOR

EXAMPLES = [LENET5, ALEXNET, VGG16, RESNET50, INCEPTION, MOBILENET, UNET, LSTM_TEXT, XOR]
TOKEN = re.compile(r"\s+|[A-Za-z_]\w*|\d+x\d+|\d+(?:\.\d+)?(?:e-?\d+)?|->|.", re.S)
PIECES = ["conv", "relu", "fc 10", "x3", "x", "x n", "as", "as e1", "(", ")", "|", "{", "}", "->", "\n", "@", "/",
          "=", ",", "#", "64@3x3", "3x3", "2", "0", "-1", "0.5", "1e-5", "pad=same", "bias=off", "ceil", "add",
          "concat", "shortcut", "identity", "block", "default", "input", "seq", "of", "train", "lr=0.1", "s", "c",
          "mid", "e1", "bn", "gap", "embed 8", "lstm 4", "upconv 4@2x2/2", "dwconv 3x3", "flatten", "sequences"]
CHARS = "abcnsx0123456789@/=()|{}-># \n\t,._"

settings.register_profile("fuzz", deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated_example(draw) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "swap", "delete token", "insert token", "swap tokens"]))
        if op in ("delete", "insert", "swap"):
            i = draw(st.integers(0, len(text) - 1)) if text else 0
            if op == "delete":
                text = text[:i] + text[i + 1:]
            elif op == "insert":
                text = text[:i] + draw(st.sampled_from(CHARS)) + text[i:]
            elif len(text) > 1:
                i = min(i, len(text) - 2)
                text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
            continue
        tokens = TOKEN.findall(text)
        if not tokens:
            continue
        i = draw(st.integers(0, len(tokens) - 1))
        if op == "delete token":
            del tokens[i]
        elif op == "insert token":
            tokens.insert(i, draw(st.sampled_from(PIECES)) + draw(st.sampled_from(["", " "])))
        else:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        text = "".join(tokens)
    return text


def check(text: str) -> None:
    try:
        g = compile_spec(text, "fuzz.dlc")
    except DlcError as e:
        lines = text.replace("\r\n", "\n").split("\n")
        assert e.pos is not None, e.message
        assert 1 <= e.pos.line <= len(lines), (e.message, e.pos)
        assert 1 <= e.pos.col <= len(lines[e.pos.line - 1]) + 1, (e.message, e.pos)
        assert str(e).startswith(f"fuzz.dlc:{e.pos.line}:{e.pos.col}: ")
        return
    seen: set[str] = set()
    assert g.nodes[0].kind == "input"
    for n in g.nodes:
        assert n.name not in seen and all(i in seen for i in n.inputs)
        assert all(d >= 1 for d in n.out_shape)
        seen.add(n.name)


@settings(settings.get_profile("fuzz"), max_examples=200)
@given(mutated_example())
def test_mutated_examples_compile_or_fail_with_a_located_error(text):
    check(text)


@settings(settings.get_profile("fuzz"), max_examples=60)
@given(st.text(alphabet=st.sampled_from(CHARS + "abcdefghijklmnopqrstuvwxyz"), max_size=80))
def test_random_text_over_the_language_characters(text):
    check(text)


@settings(settings.get_profile("fuzz"), max_examples=40)
@given(st.text(max_size=40))
def test_random_unicode_text(text):
    check("input 3@8x8\n" + text)
