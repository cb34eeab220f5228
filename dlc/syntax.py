"""Spec text -> a small AST with a position on every node (grammars/dlc.lark, lark's LALR parser).

The AST keeps words as words: whether `relu` is a suffix layer, a flag or a block parameter is for
dlc.compile to decide with the layer registry. Lark's errors come back as DlcError values that say
what was expected in the language's own terms.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from dlc.atomic import atomic_write
from dlc.errors import DlcError, Pos
from dlc.layers import lookup
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
class Nest:
    """A step with a body in braces: `experts 8 top=2 { … }`."""

    kind: Word
    size: Size | None
    items: list[Word | Option]
    body: list
    repeat: Value | None
    label: Word | None
    text: str
    pos: Pos


@dataclass
class Input:
    size: Size | None  # `input 3@224x224`, `input 784`; None for `input seq` and `input scalar`
    steps: Value | None  # `input seq T [of D]`
    features: Value | None
    label: Word | None  # `as ids`: names the input's node, and how a later step reads it
    text: str
    pos: Pos
    shared: bool = False  # `input 3x4 shared`: no batch axis, the same tensor for every sample


@dataclass
class Output:
    """`output a, b`: the labelled steps that are the network's ends, in order."""

    labels: list[Word]
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


Statement = Input | Output | Default | BlockDef | Train | Step | Group | Call | Merge | Nest


@dataclass
class _Repeat:
    value: Value


@dataclass
class _Label:
    word: Word


@dataclass
class _Branch:
    statements: list = field(default_factory=list)


INT = re.compile(r"-?[0-9]+")
# No axis, count or option is longer than a 64-bit integer (ONNX's and NumPy's sizes); a longer number is a
# slip of the keyboard, and past 4,300 digits Python will not even read it.
LARGEST = 2**63 - 1


def token_pos(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, tok.column + len(tok))


def token_value(tok: Token) -> Value:
    s = str(tok)
    if tok.type == "DIMS":
        v = tuple(_number(d, tok) for d in s.split("x"))
    elif tok.type == "NUMBER":
        v = _number(s, tok)
    else:
        v = s
    return Value(v, s, token_pos(tok))


def _number(s: str, tok: Token) -> int | float:
    """An int or a float as written; one too large for any size, count or option is a located error."""
    shown = s if len(s) <= 24 else f"{s[:12]}…{s[-4:]} ({len(s)} characters)"
    if INT.fullmatch(s):
        digits = len(s.lstrip("-"))
        v = int(s) if digits <= 19 else None  # 19 digits hold every 64-bit value
        if v is None or abs(v) > LARGEST:
            raise DlcError(f"`{shown}` is too large: sizes, counts and options are at most {LARGEST:,}",
                           token_pos(tok))
        return v
    v = float(s)
    if v in (float("inf"), float("-inf")):
        raise DlcError(f"`{shown}` is too large for a number (at most about 1.8e308)", token_pos(tok))
    return v


def _meta_pos(meta) -> Pos:
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
        return Size(children[0], None, None, self._slice(meta), _meta_pos(meta))

    def size_at(self, meta, children):
        channels, dims, stride = (*children, None)[:3]
        return Size(dims, channels, stride, self._slice(meta), _meta_pos(meta))

    def size_stride(self, meta, children):
        dims, stride = children
        return Size(dims, None, stride, self._slice(meta), _meta_pos(meta))

    def word(self, meta, children):
        return Word(str(children[0]), token_pos(children[0]))

    def option(self, meta, children):
        key, value = children
        return Option(str(key), value, token_pos(key))

    def repeat(self, meta, children):
        tok = children[0]
        if tok.type == "REPEAT":
            v = token_value(tok)
            return _Repeat(Value(int(str(tok)[1:]), str(tok)[1:], v.pos))
        return _Repeat(token_value(tok))

    def label(self, meta, children):
        return _Label(Word(str(children[0]), token_pos(children[0])))

    # statements
    def step(self, meta, children):
        rest, repeat, label = _split(children)
        kind = Word(str(rest[0]), token_pos(rest[0]))
        size = next((c for c in rest[1:] if isinstance(c, Size)), None)
        items = [c for c in rest[1:] if isinstance(c, (Word, Option))]
        return Step(kind, size, items, repeat, label, self._slice(meta), _meta_pos(meta))

    def nest(self, meta, children):
        rest, repeat, label = _split(children)
        kind = Word(str(rest[0]), token_pos(rest[0]))
        size = next((c for c in rest[1:] if isinstance(c, Size)), None)
        items = [c for c in rest[1:-1] if isinstance(c, (Word, Option))]
        return Nest(kind, size, items, rest[-1], repeat, label, self._slice(meta), _meta_pos(meta))

    def group(self, meta, children):
        rest, repeat, label = _split(children)
        return Group(rest[0].statements, repeat, label, self._slice(meta), _meta_pos(meta))

    def arg(self, meta, children):
        return children[0]

    def call(self, meta, children):
        rest, repeat, label = _split(children)
        name = Word(str(rest[0]), token_pos(rest[0]))
        return Call(name, rest[1:], repeat, label, self._slice(meta), _meta_pos(meta))

    def merge(self, meta, children):
        rest, repeat, label = _split(children)
        kind = Word(str(rest[0]), token_pos(rest[0]))
        branches = [b.statements for b in rest[1:]]
        return Merge(kind, branches, repeat, label, self._slice(meta), _meta_pos(meta))

    def input_image(self, meta, children):
        rest, _, label = _split(children)
        return Input(rest[0], None, None, label, self._slice(meta), _meta_pos(meta), shared=True in rest[1:])

    def shared(self, meta, children):
        return True

    def input_scalar(self, meta, children):
        label = children[0] and children[0].word
        return Input(None, None, None, label, self._slice(meta), _meta_pos(meta))

    def output(self, meta, children):
        return Output([Word(str(t), token_pos(t)) for t in children], self._slice(meta), _meta_pos(meta))

    def input_seq(self, meta, children):
        steps, features, label = children  # lark leaves None for an absent `of D` or `as LABEL`
        label = label and label.word
        return Input(None, steps, features, label, self._slice(meta), _meta_pos(meta))

    def default(self, meta, children):
        kind = Word(str(children[0]), token_pos(children[0]))
        return Default(kind, list(children[1:]), _meta_pos(meta))

    def train(self, meta, children):
        return Train(list(children), _meta_pos(meta))

    def param(self, meta, children):
        name, default = children
        return Param(Word(str(name), token_pos(name)), default)

    def block(self, meta, children):
        name = Word(str(children[0]), token_pos(children[0]))
        params = [c for c in children[1:-1] if isinstance(c, Param)]
        return BlockDef(name, params, children[-1], _meta_pos(meta))


OPTIONS = dict(parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True)


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser, built once per process and kept between runs in the user's cache folder
    (building the tables costs a cold start about 130 ms, loading them about 15 ms).

    The cache is JSON, never lark's own pickle: unpickling runs whatever code the file names, so a file
    planted in the cache folder would run on the next `dlc check`. Loading JSON builds only lark's
    Rule and TerminalDef values (lark's deserializer knows no other class)."""
    import lark

    grammar = (resource_dir("grammars") / "dlc.lark").read_text(encoding="utf-8")
    key = hashlib.sha256(f"{grammar}{OPTIONS}{lark.__version__}{sys.version_info[:2]}".encode()).hexdigest()[:24]
    cache = _cache_dir()
    path = cache / f"parser-{key}.json" if cache is not None else None
    if path is not None and path.is_file():
        try:
            tables = json.loads(path.read_text(encoding="utf-8"), object_hook=_decode)
            return Lark._load_from_dict(tables["data"], tables["memo"])
        except Exception:  # a cache written by another lark, cut short or edited: build the parser again
            pass
    built = Lark(grammar, **OPTIONS)
    if path is not None:
        _save_atomically(built, path)
    return built


def _cache_dir() -> Path | None:
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlc"
        root.mkdir(parents=True, exist_ok=True)
        return root
    except (OSError, RuntimeError):  # no home folder, or a read-only one: run without the cache
        return None


def _save_atomically(built: Lark, path: Path) -> None:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = built.memo_serialize([TerminalDef, Rule])
    try:
        with atomic_write(path, "w") as f:
            json.dump(_encode({"data": data, "memo": memo}), f)
    except (OSError, DlcError):  # a cache that cannot be written only costs the next start its speed
        pass


def _encode(x):
    """lark's tables as JSON: they hold tuples and int-keyed dicts, which JSON would turn into lists and
    string keys, so those two are tagged."""
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: _encode(v) for k, v in x.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    return x


def _decode(d: dict):
    if len(d) == 1 and "__tuple__" in d:
        return tuple(d["__tuple__"])
    if len(d) == 1 and "__items__" in d:
        return {k: v for k, v in d["__items__"]}
    return d


def parse(text: str) -> list:
    """Parse spec text into a list of statements; a syntax error is a DlcError with its position."""
    text = text.replace("\r\n", "\n")
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        raise syntax_error(e, text) from None
    try:
        return _ToAst(text).transform(tree)
    except VisitError as e:  # lark wraps what the transformer raises, a located DlcError too
        if isinstance(e.orig_exc, DlcError):
            raise e.orig_exc from None
        raise


# --- errors in user words -----------------------------------------------------------------------

WHAT = {
    "_SEP": "`->` or a new line", "NAME": "a name", "NUMBER": "a number", "DIMS": "a size like 3x3",
    "REPEAT": "a repeat like x3", "X": "`x`", "AS": "`as`", "AT": "`@`", "SLASH": "`/`", "EQUAL": "`=`",
    "LPAR": "`(`", "RPAR": "`)`", "LBRACE": "`{`", "RBRACE": "`}`", "VBAR": "`|`", "COMMA": "`,`",
    "INPUT": "`input`", "SEQ": "`seq`", "OF": "`of`", "DEFAULT": "`default`", "BLOCK": "`block`",
    "TRAIN": "`train`", "OUTPUT": "`output`", "SCALAR": "`scalar`", "SHARED": "`shared`", "$END": "the end of the spec",
}
OPENERS = {"LPAR": "RPAR", "LBRACE": "RBRACE"}
CLOSERS = {"RPAR": "LPAR", "RBRACE": "LBRACE"}


def describe(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the spec"
    if tok.type == "_SEP":
        return "`->`" if tok.lstrip(" \t").startswith("->") else "the end of the line"
    return f"`{tok}`"


def size_example(word: str) -> str | None:
    """How a kind's SIZE looks, for "expected a size like … after `conv`"."""
    kind = lookup(word)
    if kind is None or kind.size is None:
        return None
    return {"conv": "64@3x3", "window": "3x3/2 or 2", "int": "64", "number": "0.5",
            "shape": "2@3x4, 2x3 or 3"}.get(kind.size, "64")


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
    """A lark error as the user's mistake: what was expected where, in the language's words."""
    if isinstance(e, UnexpectedCharacters):
        return _bad_character(e, text)
    assert isinstance(e, UnexpectedToken)
    tok, expected = e.token, set(e.expected)
    end = tok.type == "$END"
    before = _tokens_before(text, len(text) if end or tok.start_pos is None else tok.start_pos)
    prev = before[-1].type if before else None
    # the statement the error is in: the tokens since the last separator
    cut = max((i for i, t in enumerate(before) if t.type in ("_SEP", "LPAR", "LBRACE", "VBAR")), default=-1)
    stmt = before[cut + 1:]
    where = _end_pos(text) if end else _at(tok)
    stray, open_ = _unbalanced(before + ([tok] if tok.type in CLOSERS else []))

    if stray is not None:
        return DlcError(f"`{stray}` without a matching `{'(' if stray.type == 'RPAR' else '{'}`", _at(stray))
    if open_ is not None and (end or tok.type == "RBRACE" and open_.type == "LPAR"):
        return DlcError(f"unclosed `{open_}`", _at(open_))
    head = stmt[0].type if stmt else None
    header = before[max((i for i, t in enumerate(before) if t.type == "_SEP"), default=-1) + 1:]
    if header and header[0].type == "BLOCK" and all(t.type != "LBRACE" for t in header) and prev != "EQUAL":
        return DlcError("a block is defined as `block name(p, q=1) { … }`", where)
    if head == "DEFAULT" and len(stmt) == 1:
        return DlcError("expected a layer kind after `default`, like `default conv pad=same`", where)
    if head == "OUTPUT":
        return DlcError("`output` names labelled steps, separated by commas: `output logits, pooled`", where)
    if head == "TRAIN" and prev != "EQUAL":
        return DlcError("`train` takes settings like `train optimizer=sgd lr=0.01`", where)
    if prev == "X":
        return DlcError("expected a repeat count after `x`: `x3`, or `x n` with a block parameter n "
                        "(`x` alone is not a name)", where)
    if prev == "EQUAL":
        return DlcError(f"expected a value after `{before[-2] if len(before) > 1 else ''}=`", where)
    if prev == "AS":
        return DlcError("expected a label name after `as`", where)
    if prev == "AT":
        return DlcError("expected a kernel or map size after `@`, like 64@3x3", where)
    if prev == "SLASH":
        return DlcError("expected a stride after `/`, like 3x3/2", where)
    if head == "INPUT" and tok.type in ("REPEAT", "X") and prev in ("NUMBER", "DIMS", "NAME"):
        return DlcError("an input takes no repeat: write one `input ... as LABEL` line per input", where)
    if stmt and stmt[0].type == "INPUT" and tok.type != "_SEP" or prev == "INPUT" or prev == "SEQ":
        return DlcError("expected an input shape: `input 3@224x224`, `input 784`, `input seq 200`, "
                        "`input seq 50 of 64`, `input scalar` or `input 3x4 shared`, then `as LABEL`", where)
    if tok.type == "_SEP" and ("COMMA" in expected or prev == "COMMA"):
        return DlcError("a call's arguments stay on one line: expected `,` or `)`", where)
    if prev == "_SEP" and len(before) > 2 and before[-2].type == "LPAR" and before[-3].type == "NAME" \
            and tok.type in ("NUMBER", "DIMS", "EQUAL", "COMMA"):
        return DlcError("a call's arguments stay on one line, right after `(`", where)
    if len(stmt) == 2 and stmt[0].type == "DEFAULT" and tok.type in ("NUMBER", "DIMS", "AT", "SLASH"):
        return DlcError(f"`default {stmt[1]}` sets options (key=value) and flags, not a size", where)
    last = next((t.type for t in reversed(before) if t.type != "_SEP"), None)
    if tok.type in ("VBAR", "RPAR") and last in ("LPAR", "VBAR"):
        if "VBAR" in (tok.type, last):
            return DlcError("empty branch: each branch of add( … | … ) or concat( … | … ) needs a step", where)
        return DlcError("nothing inside `( )`", where)
    if tok.type == "VBAR":
        return DlcError("`|` separates branches, only inside add( … ) or concat( … )", where)
    if len(stmt) == 1 and stmt[0].type == "NAME" and tok.type in ("AT", "SLASH", "EQUAL"):
        example = size_example(str(stmt[0]))
        if example:
            return DlcError(f"expected a size like {example} after `{stmt[0]}`", where)
    if not stmt and tok.type != "_SEP":
        return DlcError(f"expected a step (a layer kind, a block call or `( … )`) here, not {describe(tok)}", where)
    if "_SEP" in expected and not end:
        kind = lookup(str(before[-1])) if prev == "NAME" and len(stmt) > 1 else None
        if kind is not None and kind.size_required and tok.type in ("NUMBER", "DIMS"):
            # `fc 100 relu fc 10`: the fault is the second `fc`, a layer kind where a flag stands
            return DlcError(f"`{before[-1]}` is a layer kind, not a flag: missing `->` before `{before[-1]}`?",
                            _at(before[-1]))
        return DlcError(f"expected `->` or a new line before {describe(tok)}", where)
    wanted = sorted({WHAT[t] for t in expected if t in WHAT} or {"something else"})
    listed = ", ".join(wanted[:-1]) + " or " + wanted[-1] if len(wanted) > 1 else wanted[0]
    return DlcError(f"expected {listed} here, not {describe(tok)}", where)


def _bad_character(e: UnexpectedCharacters, text: str) -> DlcError:
    rest = text[e.pos_in_stream:]
    bad = re.match(r"[A-Za-z0-9_.@/]+", rest) if rest[:1].isdigit() else None
    if bad:
        word = bad.group(0)
        return DlcError(f"cannot read `{word}`: sizes are written like 64@3x3/2 and numbers stand alone",
                        Pos(e.line, e.column, e.column + len(word)))
    ch = rest[:1]
    shown = ch if ch.isprintable() else repr(ch)[1:-1]
    if ch.isdigit() or ch.isnumeric():
        return DlcError(f"`{shown}` is not one of the digits 0-9: write numbers with ASCII digits",
                        Pos(e.line, e.column))
    return DlcError(f"unexpected character `{shown}`", Pos(e.line, e.column))


def _end_pos(text: str) -> Pos:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return Pos(len(lines), len(lines[-1]) + 1)
