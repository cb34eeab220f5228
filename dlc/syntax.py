"""Spec text -> a small AST with a position on every node (grammars/dlc.lark, lark's LALR parser).

The AST keeps words as words: whether `relu` is a suffix layer, a flag or a block parameter is for
dlc.compile to decide with the layer registry. Lark's errors come back as DlcError values that say
what was expected in the language's own terms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from dlc.errors import DlcError, Pos
from dlc.resources import resource_dir


@dataclass
class Value:
    """A number, an HxW pair, or a name (a block parameter, `same`, `on`, ...), as written."""

    v: int | float | tuple[int, int] | str
    raw: str
    pos: Pos

    @property
    def is_name(self) -> bool:
        return isinstance(self.v, str)


@dataclass
class Size:
    """SIZE as written: `[channels@]dims[/stride]`; a lone number is `dims`."""

    dims: Value
    channels: Value | None
    stride: Value | None
    raw: str
    pos: Pos


@dataclass
class Word:
    name: str
    pos: Pos


@dataclass
class Option:
    key: str
    value: Value
    pos: Pos


@dataclass
class Step:
    kind: Word
    size: Size | None
    items: list[Word | Option]
    repeat: Value | None
    label: Word | None
    text: str
    pos: Pos


@dataclass
class Group:
    body: list
    repeat: Value | None
    label: Word | None
    text: str
    pos: Pos


@dataclass
class Call:
    name: Word
    args: list[Value | Option]
    repeat: Value | None
    label: Word | None
    text: str
    pos: Pos


@dataclass
class Merge:
    kind: Word
    branches: list[list]
    repeat: Value | None
    label: Word | None
    text: str
    pos: Pos


@dataclass
class Input:
    size: Size | None  # `input 3@224x224`, `input 784`
    steps: Value | None  # `input seq T [of D]`
    features: Value | None
    text: str
    pos: Pos


@dataclass
class Default:
    kind: Word
    items: list[Word | Option]
    pos: Pos


@dataclass
class Param:
    name: Word
    default: Value | None


@dataclass
class BlockDef:
    name: Word
    params: list[Param]
    body: list
    pos: Pos


@dataclass
class Train:
    options: list[Option]
    pos: Pos


Statement = Input | Default | BlockDef | Train | Step | Group | Call | Merge


@dataclass
class _Repeat:
    value: Value


@dataclass
class _Label:
    word: Word


@dataclass
class _Branch:
    statements: list = field(default_factory=list)


INT = re.compile(r"-?\d+")


def token_pos(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, tok.column + len(tok))


def token_value(tok: Token) -> Value:
    s = str(tok)
    if tok.type == "DIMS":
        h, w = s.split("x")
        v = (int(h), int(w))
    elif tok.type == "NUMBER":
        v = int(s) if INT.fullmatch(s) else float(s)
    else:
        v = s
    return Value(v, s, token_pos(tok))


def _meta_pos(meta, text: str) -> Pos:
    end = meta.end_column if meta.end_line == meta.line else None
    return Pos(meta.line, meta.column, end)


def _split(children):
    """Pull the optional `xN` and `as LABEL` out of a statement's children."""
    repeat = next((c.value for c in children if isinstance(c, _Repeat)), None)
    label = next((c.word for c in children if isinstance(c, _Label)), None)
    rest = [c for c in children if c is not None and not isinstance(c, (_Repeat, _Label))]
    return rest, repeat, label


@v_args(meta=True)
class _ToAst(Transformer):
    """lark tree -> AST dataclasses; `text` is the spec, for each step's source slice."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def _slice(self, meta) -> str:
        return self.text[meta.start_pos:meta.end_pos]

    def start(self, meta, children):
        return children[0]

    def body(self, meta, children):
        return list(children)

    def branch(self, meta, children):
        return _Branch(list(children))

    # values and sizes
    def value(self, meta, children):
        return token_value(children[0])

    def number(self, meta, children):
        return token_value(children[0])

    def name_value(self, meta, children):
        return token_value(children[0])

    def size_one(self, meta, children):
        return Size(children[0], None, None, self._slice(meta), _meta_pos(meta, self.text))

    def size_at(self, meta, children):
        channels, dims, stride = (*children, None)[:3]
        return Size(dims, channels, stride, self._slice(meta), _meta_pos(meta, self.text))

    def size_stride(self, meta, children):
        dims, stride = children
        return Size(dims, None, stride, self._slice(meta), _meta_pos(meta, self.text))

    def word(self, meta, children):
        return Word(str(children[0]), token_pos(children[0]))

    def option(self, meta, children):
        key, value = children
        return Option(str(key), value, token_pos(key))

    def repeat(self, meta, children):
        tok = children[0]
        if tok.type == "REPEAT":
            v = token_value(tok)
            return _Repeat(Value(int(str(tok)[1:]), str(tok), v.pos))
        return _Repeat(token_value(tok))

    def label(self, meta, children):
        return _Label(Word(str(children[0]), token_pos(children[0])))

    # statements
    def step(self, meta, children):
        rest, repeat, label = _split(children)
        kind = Word(str(rest[0]), token_pos(rest[0]))
        size = next((c for c in rest[1:] if isinstance(c, Size)), None)
        items = [c for c in rest[1:] if isinstance(c, (Word, Option))]
        return Step(kind, size, items, repeat, label, self._slice(meta), _meta_pos(meta, self.text))

    def group(self, meta, children):
        rest, repeat, label = _split(children)
        return Group(rest[0].statements, repeat, label, self._slice(meta), _meta_pos(meta, self.text))

    def arg(self, meta, children):
        return children[0]

    def call(self, meta, children):
        rest, repeat, label = _split(children)
        name = Word(str(rest[0]), token_pos(rest[0]))
        return Call(name, rest[1:], repeat, label, self._slice(meta), _meta_pos(meta, self.text))

    def merge(self, meta, children):
        rest, repeat, label = _split(children)
        kind = Word(str(rest[0]), token_pos(rest[0]))
        branches = [b.statements for b in rest[1:]]
        return Merge(kind, branches, repeat, label, self._slice(meta), _meta_pos(meta, self.text))

    def input_image(self, meta, children):
        return Input(children[0], None, None, self._slice(meta), _meta_pos(meta, self.text))

    def input_seq(self, meta, children):
        steps, features = children
        return Input(None, steps, features, self._slice(meta), _meta_pos(meta, self.text))

    def default(self, meta, children):
        kind = Word(str(children[0]), token_pos(children[0]))
        return Default(kind, list(children[1:]), _meta_pos(meta, self.text))

    def train(self, meta, children):
        return Train(list(children), _meta_pos(meta, self.text))

    def param(self, meta, children):
        name, default = children
        return Param(Word(str(name), token_pos(name)), default)

    def block(self, meta, children):
        name = Word(str(children[0]), token_pos(children[0]))
        params = [c for c in children[1:-1] if isinstance(c, Param)]
        return BlockDef(name, params, children[-1], _meta_pos(meta, self.text))


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser, built once per process (lark caches the tables in a temp file across runs)."""
    grammar = (resource_dir("grammars") / "dlc.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, cache=True)


def parse(text: str) -> list:
    """Parse spec text into a list of statements; a syntax error is a DlcError with its position."""
    text = text.replace("\r\n", "\n")
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        raise syntax_error(e, text) from None
    return _ToAst(text).transform(tree)


# --- errors in user words -----------------------------------------------------------------------

WHAT = {
    "_SEP": "`->` or a new line", "NAME": "a name", "NUMBER": "a number", "DIMS": "a size like 3x3",
    "REPEAT": "a repeat like x3", "X": "`x`", "AS": "`as`", "AT": "`@`", "SLASH": "`/`", "EQUAL": "`=`",
    "LPAR": "`(`", "RPAR": "`)`", "LBRACE": "`{`", "RBRACE": "`}`", "VBAR": "`|`", "COMMA": "`,`",
    "INPUT": "`input`", "SEQ": "`seq`", "OF": "`of`", "DEFAULT": "`default`", "BLOCK": "`block`",
    "TRAIN": "`train`", "$END": "the end of the spec",
}
OPENERS = {"LPAR": "RPAR", "LBRACE": "RBRACE"}
CLOSERS = {"RPAR": "LPAR", "RBRACE": "LBRACE"}


def describe(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the spec"
    if tok.type == "_SEP":
        return "`->`" if "->" in tok else "a new line"
    return f"`{tok}`"


def size_example(word: str) -> str | None:
    """How a kind's SIZE looks, for "expected a size like … after `conv`"."""
    from dlc.layers import lookup

    kind = lookup(word)
    if kind is None or kind.size is None:
        return None
    return {"conv": "64@3x3", "window": "3x3/2 or 2", "int": "64", "number": "0.5"}.get(kind.size, "64")


def _tokens_before(text: str, offset: int) -> list[Token]:
    """The tokens of `text` that start before `offset` (for the context of an error)."""
    out: list[Token] = []
    try:
        for tok in parser().lex(text):
            if tok.start_pos >= offset:
                break
            out.append(tok)
    except UnexpectedInput:
        pass
    return out


def _unbalanced(tokens: list[Token]) -> tuple[Token | None, Token | None]:
    """(a closer without its opener, the innermost opener left open) among `tokens`."""
    stack: list[Token] = []
    for tok in tokens:
        if tok.type in OPENERS:
            stack.append(tok)
        elif tok.type in CLOSERS:
            if not stack or stack[-1].type != CLOSERS[tok.type]:
                return tok, None
            stack.pop()
    return None, (stack[-1] if stack else None)


def _at(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, tok.column + max(1, len(tok)))


def syntax_error(e: UnexpectedInput, text: str) -> DlcError:
    if isinstance(e, UnexpectedCharacters):
        bad = re.match(r"[A-Za-z0-9_.@/x]+", text[e.pos_in_stream:]) if text[e.pos_in_stream].isalnum() else None
        if bad:
            word = bad.group(0)
            return DlcError(f"cannot read `{word}`: sizes are written like 64@3x3/2, numbers stand alone",
                            Pos(e.line, e.column, e.column + len(word)))
        ch = text[e.pos_in_stream]
        shown = repr(ch)[1:-1] if not ch.isprintable() else ch
        return DlcError(f"unexpected character `{shown}`", Pos(e.line, e.column))
    assert isinstance(e, UnexpectedToken)
    tok, expected = e.token, set(e.expected)
    start = tok.start_pos if tok.type != "$END" else len(text)
    before = _tokens_before(text, start if start is not None else len(text))
    prev = before[-1] if before else None
    where = _at(tok) if tok.type != "$END" else _end_pos(text)
    stray, open_ = _unbalanced(before + ([tok] if tok.type in CLOSERS else []))
    if stray is not None:
        want = {"RPAR": "(", "RBRACE": "{"}[stray.type]
        return DlcError(f"`{stray}` without a matching `{want}`", _at(stray))
    if tok.type == "$END" and open_ is not None:
        return DlcError(f"unclosed `{open_}`", _at(open_))
    if prev is not None and prev.type == "X":
        return DlcError("expected a repeat count after `x`: `x3`, or `x n` with a block parameter n "
                        "(`x` alone is not a name)", where)
    if prev is not None and prev.type == "EQUAL":
        key = before[-2] if len(before) > 1 else prev
        return DlcError(f"expected a value after `{key}=`", where)
    if prev is not None and prev.type == "AS":
        return DlcError("expected a label name after `as`", where)
    if prev is not None and prev.type in ("AT", "SLASH"):
        what = "a kernel or map size after `@`, like 64@3x3" if prev.type == "AT" else "a stride after `/`, like 3x3/2"
        return DlcError(f"expected {what}", where)
    if prev is not None and prev.type == "INPUT":
        return DlcError("expected the input shape after `input`: 3@224x224, 784, seq 200 or seq 50 of 64", where)
    if tok.type == "_SEP" and "COMMA" in expected:
        return DlcError("a call's arguments stay on one line: expected `,` or `)`", where)
    if tok.type == "VBAR":
        return DlcError("`|` separates branches, only inside add( … ) or concat( … )", where)
    if prev is not None and prev.type == "NAME" and _starts_step(before) and tok.type in ("AT", "SLASH", "EQUAL"):
        example = size_example(str(prev))
        if example:
            return DlcError(f"expected a size like {example} after `{prev}`", where)
    if "_SEP" in expected and tok.type != "$END":
        return DlcError(f"expected `->` or a new line before {describe(tok)}", where)
    if tok.type == "RBRACE" and open_ is not None and open_.type == "LPAR":
        return DlcError(f"unclosed `(`: expected `)` before `}}`", _at(open_))
    wanted = sorted({WHAT.get(t, f"`{t}`") for t in expected if t in WHAT} or {"something else"})
    return DlcError(f"unexpected {describe(tok)}; expected {', '.join(wanted[:-1]) + ' or ' if len(wanted) > 1 else ''}"
                    f"{wanted[-1]}", where)


def _starts_step(before: list[Token]) -> bool:
    """Whether the last token is the first word of a statement."""
    return len(before) == 1 or before[-2].type in ("_SEP", "LPAR", "LBRACE", "VBAR")


def _end_pos(text: str) -> Pos:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return Pos(len(lines), len(lines[-1]) + 1)
