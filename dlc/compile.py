"""Spec text -> graph IR: expand defaults, blocks, repeats, groups, suffix layers, labels and merges,
then give every node its shape through its kind's shape rule (dlc.layers).

Node names are stable because they become table rows, ONNX node names and checkpoint keys: a counter
per canonical kind in each scope (`conv1`, `relu2`), a scope per block call (`stage2.conv1`, nested as
`stage2.block1.conv2`), `<scope>.shortcut.conv` for a projection shortcut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dlc.errors import DlcError, Pos, ShapeError
from dlc.graph import BlockCall, Graph, Node
from dlc.layers import AXIS, COUNT, KINDS, LABEL, PAD, READ, SIZES, LayerKind, Ref, all_words, lookup
from dlc.layers.spatial import is_spatial, show, spatial_shape
from dlc.layers.mixture import check_mixture
from dlc.syntax import (BlockDef, Call, Default, Group, Input, Merge, Nest, Option, Output, Size, Step, Train, Value,
                        Word, parse, size_example)

# A spec that expands past this many nodes is almost surely a mistyped repeat count, not a network.
MAX_NODES = 50_000
# Block calls nested deeper than this (b3 calls b2 calls b1 ...) are generated text, not a design; Python's
# stack would end a few hundred levels further on.
MAX_BLOCK_DEPTH = 100
RESERVED = re.compile(r"x\d+")
KEYWORDS = {"input", "seq", "of", "default", "block", "train", "as", "x"}
SWITCH = {"on": True, "off": False, "true": True, "false": False}


class TooDeep(DlcError):
    """Block calls nested past MAX_BLOCK_DEPTH: the hundred calls around the error add no context."""


def compile_spec(text: str, file: str = "<spec>") -> Graph:
    """Compile spec text into a Graph whose nodes carry resolved attributes and output shapes."""
    try:
        return _compile(text.replace("\r\n", "\n"), file)
    except DlcError as e:
        raise e.located(file, text) from None
    except RecursionError:
        # hundreds of nested brackets: no network is written like that, and Python's stack ends first
        raise DlcError("brackets are nested too deeply", Pos(1, 1)).located(file, text) from None


@dataclass
class Scope:
    """Where names are counted and words are looked up: the top level, or one block call."""

    prefix: str  # "" or "stage2." or "stage2.block1."
    params: dict[str, Value]  # block parameters bound to literal values
    labels: dict[str, str]  # label -> node name
    stack: tuple[str, ...] = ()  # blocks being expanded, outermost first
    counters: dict = field(default_factory=dict)
    label_at: dict[str, Pos] = field(default_factory=dict)  # label -> where it is written
    resolved: dict[str, str] = field(default_factory=dict)  # step text -> with the call's values

    def count(self, key) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def node_name(self, base: str) -> str:
        return f"{self.prefix}{base}{self.count(base)}"


@dataclass
class Build:
    """The graph being built."""

    blocks: dict[str, BlockDef]
    nodes: list[Node] = field(default_factory=list)
    by_name: dict[str, Node] = field(default_factory=dict)
    train: dict = field(default_factory=dict)


@dataclass
class StepLayer:
    """One layer of a step before it becomes a node: the step's main layer or a suffix layer."""

    kind: LayerKind
    attrs: dict
    pos: Pos
    head: str  # how errors name it: "conv 64@3x3", "relu"
    where: dict[str, Pos] = field(default_factory=dict)  # attribute -> where the spec writes its value


Defaults = dict  # canonical kind -> {option or flag: value}, from `default` statements in scope

STEPS = (Step, Group, Call, Merge, Nest)


def _compile(text: str, file: str) -> Graph:
    statements = parse(text)
    build = Build(_collect_blocks(statements))
    if not any(isinstance(s, (*STEPS, Input)) for s in statements):
        raise DlcError("the spec is empty: write an `input` and the layers that follow it, "
                       "like `input 784 -> fc 10 softmax`", Pos(1, 1))
    _check_input(statements)
    scope, defaults, cur = Scope("", {}, {}), {}, ""
    several = sum(isinstance(s, Input) for s in statements) > 1
    output: Output | None = None
    for s in statements:
        if output is not None and isinstance(s, (*STEPS, Input, Output)):
            raise DlcError(f"`output` ends the network (line {output.pos.line}): the steps it names come "
                           f"before it, and nothing after it", s.pos)
        if isinstance(s, Input):  # each input starts a chain; a later step reads it by its label
            cur = _emit_input(build, s, scope, several)
        elif isinstance(s, Output):
            output = s
        elif isinstance(s, Train):
            _read_train(build, s)
        elif not isinstance(s, BlockDef):
            cur = _emit(build, s, cur, scope, defaults)
    if build.nodes[-1].kind == "input":
        node = build.nodes[-1]
        raise DlcError(f"the network has no layers after `{node.text}`", node.pos)
    read = {i for n in build.nodes for i in n.inputs}
    for node in build.nodes:
        if node.kind == "input" and node.name not in read:
            ways = (f"`attention H mask={node.name}`" if node.dtype == "int64"
                    else f"`add {node.name}`, `concat {node.name}` or `attention H from={node.name}`")
            raise DlcError(f"input `{node.name}` is never read: a later step reads it by its label, as {ways}",
                           node.pos)
    ends = _outputs(build, output, scope, read) if output is not None else {}
    return Graph(build.nodes, source=text, file=file, train=build.train, output_labels=ends)


def _outputs(b: Build, s: Output, scope: Scope, read: set[str]) -> dict[str, str]:
    """`output a, b`: label -> node name. Every other step must feed one of them: a step that leads
    nowhere is a slip (a head left out of the list), not a layer to count."""
    ends: dict[str, str] = {}
    for w in s.labels:
        if w.name in ends:
            raise DlcError(f"`{w.name}` is named twice in `output`: each output is one tensor", w.pos)
        name = _label_node(w, scope)
        node = b.by_name[name]
        if node.kind == "input":
            raise DlcError(f"`{w.name}` is an input; an output is a step's result", w.pos)
        if w.name != name and w.name in b.by_name:  # ONNX names the output by its label: one tensor each
            raise DlcError(f"`{w.name}` is also the name of layer {w.name}; label this output otherwise", w.pos)
        ends[w.name] = name
    for node in b.nodes:
        if node.name not in read and node.name not in ends.values():
            raise DlcError(f"{node.text or node.name} ({node.name}) feeds no output: label it and name it in "
                           f"`{s.text}`, or remove it", node.pos)
    return ends


def _check_input(statements: list) -> None:
    inputs = [s for s in statements if isinstance(s, Input)]
    first_step = next((i for i, s in enumerate(statements) if isinstance(s, STEPS)), None)
    if not inputs:
        raise DlcError("the network has no `input`: start it with one, like `input 3@224x224`, `input 784` "
                       "or `input seq 200`", statements[first_step].pos)
    if first_step is not None and first_step < statements.index(inputs[0]):
        raise DlcError(f"`input` must come before the first step (line {statements[first_step].pos.line})",
                       inputs[0].pos)
    # several inputs are read by name, in the .npz infer takes and the ONNX graph: each needs one
    for s in inputs if len(inputs) > 1 else []:
        if s.label is None:
            raise DlcError(f"a network with {len(inputs)} inputs names each: write `{s.text} as NAME`", s.pos)
        base = s.label.name.rstrip("0123456789")
        if base != s.label.name and base in KINDS:
            raise DlcError(f"`{s.label.name}` cannot name an input: the layers of kind {base} are named so",
                           s.label.pos)


# --- statements ----------------------------------------------------------------------------------

def _emit(b: Build, s, cur: str, scope: Scope, defaults: Defaults) -> str:
    """Add the nodes of one statement after node `cur`; return the node that is now current."""
    if isinstance(s, Default):
        _read_default(s, scope, defaults)
        return cur
    if isinstance(s, Input):
        raise DlcError("`input` is the first statement of the spec, not part of a block, group or branch", s.pos)
    if isinstance(s, Output):
        raise DlcError("`output` is a top-level statement after the steps it names, not part of a block, "
                       "group or branch", s.pos)
    if isinstance(s, BlockDef):
        raise DlcError("blocks are defined at the top level of the spec, not inside a block, group or branch",
                       s.pos)
    if isinstance(s, Train):
        raise DlcError("`train` is a top-level statement, not part of a block, group or branch", s.pos)
    emit = {Step: _emit_step, Group: _emit_group, Call: _emit_call, Merge: _emit_merge, Nest: _emit_nest}[type(s)]
    first = len(b.nodes)
    for _ in range(_repeat_count(s.repeat, scope)):
        cur = emit(b, s, cur, scope, defaults)
    if isinstance(s, Call) and not scope.stack:
        call = BlockCall(b.nodes[first].name.split(".", 1)[0], _one_line(s.text))
        for node in b.nodes[first:]:
            node.call = call
    if s.label is not None:
        _check_name(s.label, "a label")
        first = scope.label_at.setdefault(s.label.name, s.label.pos)
        if first != s.label.pos:  # a repeated group sets its own labels again, which is fine
            raise DlcError(f"label `{s.label.name}` is used twice (first on line {first.line}): each label "
                           f"names one step", s.label.pos)
        scope.labels[s.label.name] = cur
        b.by_name[cur].label = s.label.name
    return cur


def _emit_input(b: Build, s: Input, scope: Scope, several: bool) -> str:
    tokens = False
    if s.shared:
        shape = _shared_shape(s.size)
    elif s.size is None and s.steps is None:
        shape = ()  # `input scalar`: one number per sample
    elif s.size is not None:
        z = s.size
        if z.stride is not None:
            raise DlcError(f"an input has no stride: write an image as C@HxW, like 3@224x224 (received `{z.raw}`)",
                           z.pos)
        if z.channels is not None:
            c = _positive_int(z.channels, "the channel count")
            dims = z.dims.v if isinstance(z.dims.v, tuple) else (_positive_int(z.dims, "the signal length"),)
            if len(dims) > 3:
                raise DlcError(f"an input has 1 to 3 spatial axes: C@L, C@HxW or C@DxHxW, like 1@8000, 3@224x224 "
                               f"or 3@16x112x112 (received `{z.raw}`)", z.pos)
            shape = spatial_shape(c, tuple(_at_least_one(d, z.dims) for d in dims))
        elif isinstance(z.dims.v, tuple):
            raise DlcError(f"an image input is written C@HxW, like 1@{z.raw} (received `{z.raw}`)", z.pos)
        else:
            shape = (_positive_int(z.dims, "the input size"),)
    else:
        steps = _positive_int(s.steps, "the sequence length")
        tokens = s.features is None
        shape = (steps,) if tokens else (steps, _positive_int(s.features, "the feature count"))
    kind = KINDS["input"]
    # `shared` is set only where written, so an input's attributes stay what they were without it
    out, attrs = kind.resolve({"shape": shape, "tokens": tokens, **({"shared": True} if s.shared else {})}, [])
    # one input keeps the name `input` that tables, checkpoints and ONNX files have always used
    name = s.label.name if several else "input"
    node = Node(name, "input", attrs, [], out, "int64" if tokens else "float32", s.pos, "", None,
                _one_line(s.text))
    b.nodes.append(node)
    b.by_name[node.name] = node
    if s.label is not None:
        _check_name(s.label, "a label")
        if s.label.name in scope.labels:
            raise DlcError(f"label `{s.label.name}` is used twice (first on line "
                           f"{scope.label_at[s.label.name].line}): each label names one step", s.label.pos)
        scope.labels[s.label.name], scope.label_at[s.label.name] = name, s.label.pos
        node.label = s.label.name
    return node.name


def _shared_shape(z: Size) -> tuple[int, ...]:
    """`input 3x4 shared`: the whole tensor's shape, there being no batch axis to leave out."""
    if z.stride is not None or z.channels is not None:
        raise DlcError(f"a shared input is written as its whole shape, like 3x4 or 16 (received `{z.raw}`)", z.pos)
    dims = z.dims.v if isinstance(z.dims.v, tuple) else (_positive_int(z.dims, "the input size"),)
    return tuple(_at_least_one(d, z.dims) for d in dims)


def _emit_group(b: Build, g: Group, cur: str, scope: Scope, defaults: Defaults) -> str:
    inner = dict(defaults)
    for s in g.body:
        cur = _emit(b, s, cur, scope, inner)
    return cur


def _read_default(s: Default, scope: Scope, defaults: Defaults) -> None:
    kind = _kind_or_error(s.kind, scope)
    values = dict(defaults.get(kind.name, {}))
    written = StepLayer(kind, {}, s.pos, s.kind.name)
    for item in s.items:
        if isinstance(item, Option):
            if item.key not in kind.options:
                raise _unknown_option(item, [written])
            _once(written, item.key, f"`{item.key}=`", item.pos)
            values[item.key] = _option_value(kind, item, scope)
        elif item.name in kind.flags:
            _once(written, item.name, f"the flag `{item.name}`", item.pos)
            values[item.name] = True
        else:
            flags = f" (its flags: {', '.join(kind.flags)})" if kind.flags else ""
            raise DlcError(f"`default {s.kind.name}` sets options like key=value and flags; `{item.name}` is "
                           f"neither an option nor a flag of {kind.name}{flags}", item.pos)
    defaults[kind.name] = values


def _read_train(b: Build, s: Train) -> None:
    """Training settings, typed as written (int, float or word); `dlc train` checks the keys and values."""
    if b.train:
        raise DlcError("a second `train` statement: put every setting on one", s.pos)
    if not s.options:
        raise DlcError("`train` needs settings, like `train optimizer=sgd lr=0.01`", s.pos)
    settings = {}
    for opt in s.options:
        if isinstance(opt.value.v, tuple):
            raise DlcError(f"a training setting is a number or a word (received {opt.key}={opt.value.raw})",
                           opt.value.pos)
        if opt.key in settings:
            raise DlcError(f"`{opt.key}` is set twice", opt.pos)
        if isinstance(opt.value.v, (int, float)) and opt.value.v < 0:
            # rates, counts, decays and seeds alike: numpy's generators refuse a negative seed, and a
            # negative rate or decay climbs the loss instead of descending it
            raise DlcError(f"training settings are never negative (received {opt.key}={opt.value.raw})",
                           opt.value.pos)
        settings[opt.key] = opt.value.v
    b.train = settings


# --- steps ---------------------------------------------------------------------------------------

def _emit_step(b: Build, step: Step, cur: str, scope: Scope, defaults: Defaults) -> str:
    if step.kind.name in b.blocks and lookup(step.kind.name) is None:
        raise DlcError(f"`{step.kind.name}` is a block: call it with its arguments, like "
                       f"`{step.kind.name}(…)`", step.kind.pos)
    kind = _kind_or_error(step.kind, scope)
    if kind.name == "input":
        raise DlcError("`input` is the first statement of the spec, not a step", step.kind.pos)
    if kind.body:
        raise DlcError(f"`{step.kind.name}` takes its block in braces: `{step.kind.name} 8 top=2 {{ fc 64 relu "
                       f"-> fc 16 }}`", step.kind.pos)
    if kind.merge:
        return _emit_label_merge(b, kind, step, cur, scope)
    layers = _layers(step, kind, scope, defaults)
    row = ""
    for layer in layers:
        node = _add_node(b, scope, layer.kind, dict(layer.attrs), [cur], layer.pos, step.text, layer.head, row,
                         where=layer.where)
        row = row or node.name
        cur = node.name
    return cur


def _layers(step: Step, kind: LayerKind, scope: Scope, defaults: Defaults) -> list[StepLayer]:
    """The step's main layer and its suffix layers, with sizes, options and flags applied."""
    items, size = list(step.items), step.size
    if size is None and kind.size and items and isinstance(items[0], Word) and items[0].name in scope.params:
        # a block parameter standing where the size stands: `dropout p`
        w = items.pop(0)
        size = Size(Value(w.name, w.name, w.pos), None, None, w.name, w.pos)
    if size is None and kind.size_required and items and isinstance(items[0], Word):
        w = items[0]
        other = lookup(w.name)
        if not (other is not None and other.suffixable) and w.name not in kind.flags:
            raise DlcError(f"expected a size like {size_example(step.kind.name)} after `{step.kind.name}`"
                           f"{_unbound(Value(w.name, w.name, w.pos), scope)} (received `{w.name}`)", w.pos)
    head = step.kind.name + (f" {size.raw}" if size is not None else "")
    pos = step.kind.pos if size is None else Pos(step.kind.pos.line, step.kind.pos.col,
                                                 size.pos.end_col if size.pos.line == step.kind.pos.line else None)
    main = StepLayer(kind, _base_attrs(kind, defaults), pos, head, _size_where(kind, size))
    main.attrs.update(_size_attrs(kind, size, step.kind, scope))
    layers = [main]
    for item in items:
        if isinstance(item, Option):
            target = next((layer for layer in reversed(layers) if item.key in layer.kind.options), None)
            if target is None:
                raise _unknown_option(item, layers)
            _once(target, item.key, f"`{item.key}=`", item.pos)
            target.attrs[item.key] = _option_value(target.kind, item, scope)
            target.where[item.key] = item.value.pos
            continue
        target = next((layer for layer in reversed(layers) if item.name in layer.kind.flags), None)
        if target is not None:
            _once(target, item.name, f"the flag `{item.name}`", item.pos)
            target.attrs[item.name] = True
            continue
        suffix = lookup(item.name)
        if suffix is not None and suffix.suffixable:
            attrs = _base_attrs(suffix, defaults)
            attrs.update(_size_attrs(suffix, None, item, scope))
            layers.append(StepLayer(suffix, attrs, item.pos, item.name))
            continue
        raise _bad_word(item, step, layers, scope)
    return layers


def _once(layer: StepLayer, key: str, what: str, pos: Pos) -> None:
    """Refuse an option or flag written twice for one layer (`pad=1 pad=2`: which one was meant?)."""
    if key in layer.where:
        raise DlcError(f"{what} is given twice for {layer.kind.name}; keep one", pos)
    layer.where[key] = pos


def _size_where(kind: LayerKind, size: Size | None) -> dict[str, Pos]:
    """Where the attributes a SIZE sets are written, for errors about their values."""
    if size is None:
        return {}
    if kind.size in ("conv", "window"):
        where = {"kernel": size.dims.pos} | ({"stride": size.stride.pos} if size.stride else {})
        return where | ({"channels": size.channels.pos if size.channels else size.pos} if kind.size == "conv" else {})
    if kind.size_attr:
        return {kind.size_attr: size.dims.pos}
    return {}


def _base_attrs(kind: LayerKind, defaults: Defaults) -> dict:
    """Registry defaults for every option and flag, then the `default` statements in scope."""
    attrs = kind.default_attrs()
    attrs.update(defaults.get(kind.name, {}))
    return attrs


def _size_attrs(kind: LayerKind, size: Size | None, word: Word, scope: Scope) -> dict:
    """Attributes a SIZE sets, by the kind's size form (dlc.layers.LayerKind.size)."""
    if size is None:
        if kind.size_required:
            raise DlcError(f"expected a size like {size_example(word.name)} after `{word.name}`",
                           Pos(word.pos.line, word.pos.end_col or word.pos.col))
        if kind.size is None:
            return {}
        return {kind.size_attr: kind.size_default} if kind.size_attr else {}
    if kind.size is None:
        raise DlcError(f"{word.name} takes no size (received `{size.raw}`)", size.pos)
    channels = _value(size.channels, scope) if size.channels is not None else None
    dims = _value(size.dims, scope)
    stride = _value(size.stride, scope) if size.stride is not None else None
    shaped = f"{word.name} takes a size like {size_example(word.name)}, not `{size.raw}`"
    if kind.size == "conv":
        if channels is None:
            raise DlcError(f"{shaped}: write channels@kernel", size.pos)
        return {"channels": _positive_int(channels, "the channel count", scope),
                "kernel": _dims(dims, "the kernel size", scope),
                "stride": _dims(stride, "the stride", scope) if stride is not None else None}
    if kind.size == "window":
        if channels is not None:
            raise DlcError(f"{shaped}: {word.name} keeps the channel count", size.pos)
        return {"kernel": _dims(dims, "the window size", scope),
                "stride": _dims(stride, "the stride", scope) if stride is not None else None}
    if kind.size == "shape":
        if stride is not None:
            raise DlcError(shaped, size.pos)
        counts = ((channels,) if channels is not None else ()) + (
            tuple(Value(d, str(d), dims.pos) for d in dims.v) if isinstance(dims.v, tuple) else (dims,))
        return {kind.size_attr: tuple(_positive_int(c, f"each of {word.name}'s counts", scope) for c in counts)}
    if channels is not None or stride is not None or isinstance(dims.v, tuple):
        raise DlcError(shaped, size.pos)
    if kind.size == "int":
        if not isinstance(dims.v, int):
            raise DlcError(f"{word.name} takes a whole number{_unbound(dims, scope)} (received `{dims.raw}`)",
                           dims.pos)
        return {kind.size_attr: dims.v}
    if isinstance(dims.v, str):
        raise DlcError(f"{word.name} takes a number{_unbound(dims, scope)} (received `{dims.raw}`)", dims.pos)
    return {kind.size_attr: float(dims.v)}


def _emit_label_merge(b: Build, kind: LayerKind, step: Step, cur: str, scope: Scope) -> str:
    """`add LABEL` / `concat LABEL`: merge the current tensor with earlier labelled ones."""
    if step.size is not None or any(isinstance(i, Option) for i in step.items):
        bad = step.size.pos if step.size is not None else next(i for i in step.items if isinstance(i, Option)).pos
        raise DlcError(f"`{step.kind.name}` takes labels (`{step.kind.name} LABEL`) or branches "
                       f"(`{step.kind.name}( A | B )`)", bad)
    if not step.items:
        raise DlcError(f"`{step.kind.name}` needs what to merge: `{step.kind.name} LABEL` with a label set by "
                       f"`as LABEL`, or branches `{step.kind.name}( A | B )`", step.kind.pos)
    inputs = [cur] + [_label_node(w, scope) for w in step.items]
    return _add_node(b, scope, kind, {}, inputs, step.pos, step.text, step.kind.name).name


def _label_node(w: Word, scope: Scope) -> str:
    if w.name not in scope.labels:
        known = f" (labels so far: {', '.join(scope.labels)})" if scope.labels else \
            " (no step before this one has `as LABEL`)"
        raise DlcError(f"unknown label `{w.name}`{_did_you_mean(w.name, scope.labels)}{known}", w.pos)
    return scope.labels[w.name]


# --- merges --------------------------------------------------------------------------------------

def _emit_merge(b: Build, m: Merge, cur: str, scope: Scope, defaults: Defaults) -> str:
    kind = lookup(m.kind.name)
    if kind is None or not kind.merge or kind.body:
        merges = [k.name for k in KINDS.values() if k.merge and not k.body]
        if m.kind.name in b.blocks:
            raise DlcError(f"a block call takes its arguments on one line, like `{m.kind.name}(64, 2)`", m.kind.pos)
        raise DlcError(f"`{m.kind.name}( … | … )`: branches are merged by {' or '.join(merges)}"
                       f"{_did_you_mean(m.kind.name, merges)}", m.kind.pos)
    if len(m.branches) < 2:
        raise DlcError(f"{kind.name}( … ) needs two or more branches separated by `|`", m.kind.pos)
    outs: list[str | None] = []
    shortcuts: list[Step] = []
    for branch in m.branches:
        word = _lone_word(branch)
        if word == "shortcut":
            if kind.name != "add":
                raise DlcError(f"`shortcut` is a branch of add( … ), not of {kind.name}", branch[0].pos)
            shortcuts.append(branch[0])
            outs.append(None)
        elif word == "identity":
            outs.append(cur)
        else:
            inner, out = dict(defaults), cur
            for s in branch:
                out = _emit(b, s, out, scope, inner)
            outs.append(out)
    target = next((o for o in outs if o is not None), cur)
    for i, o in enumerate(outs):
        if o is None:
            outs[i] = _shortcut(b, shortcuts.pop(0), cur, target, scope, defaults)
    text = _one_line(m.text) if "\n" not in m.text else f"{m.kind.name}(…)"
    return _add_node(b, scope, kind, {}, outs, m.pos, text, kind.name).name


# --- mixtures of experts --------------------------------------------------------------------------

def _emit_nest(b: Build, n: Nest, cur: str, scope: Scope, defaults: Defaults) -> str:
    """`experts E top=K { BLOCK }`: a router `fc E bias=off`, E copies of the block from the current tensor
    (each with its own weights), and the `experts` node that joins them (dlc/layers/mixture.py)."""
    kind = _kind_or_error(n.kind, scope)
    if not kind.body:
        bodied = [k.name for k in KINDS.values() if k.body]
        raise DlcError(f"only {', '.join(bodied)} takes a block in braces; `{n.kind.name}` is a step of its own",
                       n.kind.pos)
    main, *suffixes = _layers(Step(n.kind, n.size, n.items, None, None, n.text, n.pos), kind, scope, defaults)
    try:
        check_mixture(main.attrs)
    except ShapeError as e:
        raise DlcError(str(e), main.where.get(e.attr, main.pos)) from None
    if not any(isinstance(s, STEPS) for s in n.body):
        raise DlcError(f"{main.head} has no steps in its braces: write the block each expert is", n.pos)
    if is_spatial(b.by_name[cur].out_shape):
        raise DlcError(f"{main.head} routes each step of a sequence, or a vector; its input is the image "
                       f"{show(b.by_name[cur].out_shape)}: write `tokens` (or `gap`) before it", main.pos)
    base = scope.node_name(kind.name)
    text = _one_line(n.text) if "\n" not in n.text else _one_line(n.text.split("{", 1)[0]) + " {…}"
    first = len(b.nodes)
    router = _add_node(b, scope, KINDS["fc"], dict(KINDS["fc"].default_attrs(), units=main.attrs["experts"],
                                                   bias=False), [cur], main.pos, text, main.head,
                       name=f"{base}.router")
    outs = []
    for e in range(1, main.attrs["experts"] + 1):
        start = len(b.nodes)
        inner = Scope(f"{base}.expert{e}.", scope.params, dict(scope.labels), scope.stack,
                      resolved=scope.resolved)
        out, expert_defaults = cur, dict(defaults)
        for s in n.body:
            out = _emit(b, s, out, inner, expert_defaults)
        got, want = b.by_name[out].out_shape, b.by_name[cur].out_shape
        if got != want:
            raise DlcError(f"{main.head} ({base}): each expert must give back its input's shape {show(want)}; "
                           f"this block turns it into {show(got)}", n.pos)
        for node in b.nodes[start:]:
            node.standby = e > main.attrs["top"]
        outs.append(out)
    joined = _add_node(b, scope, kind, main.attrs, [router.name, *outs], main.pos, text, main.head, name=base,
                       where=main.where)
    for node in b.nodes[first:]:
        node.row = base
    cur = joined.name
    for layer in suffixes:
        cur = _add_node(b, scope, layer.kind, dict(layer.attrs), [cur], layer.pos, text, layer.head, base,
                        where=layer.where).name
    return cur


def _lone_word(branch: list) -> str | None:
    """`shortcut` or `identity` when a branch is just that word."""
    if len(branch) == 1 and isinstance(branch[0], Step):
        s = branch[0]
        if s.size is None and not s.items and s.repeat is None and s.label is None:
            return s.kind.name if s.kind.name in ("shortcut", "identity") else None
    return None


def _shortcut(b: Build, s: Step, cur: str, target: str, scope: Scope, defaults: Defaults) -> str:
    """The ResNet "B" shortcut: the identity if the shape is kept, else `conv C@1x1/S bias=off -> bn`."""
    src, dst = b.by_name[cur].out_shape, b.by_name[target].out_shape
    if src == dst:
        return cur
    if not is_spatial(src) or len(src) != len(dst) or not is_spatial(dst):
        raise DlcError(f"shortcut can only project an image to an image (or a signal to a signal, a volume to "
                       f"a volume); here it would turn {show(src)} into {show(dst)}", s.pos)
    stride = tuple(_projection_stride(src[i], dst[i]) for i in range(1, len(src)))
    if None in stride:
        raise DlcError(f"shortcut cannot project {show(src)} to {show(dst)} with a strided 1x1 convolution",
                       s.pos)
    n = scope.count(("shortcut",))
    base = f"{scope.prefix}shortcut{'' if n == 1 else n}"
    conv = _base_attrs(KINDS["conv"], defaults)
    conv.update(channels=dst[0], kernel=1, stride=stride, pad=0, dil=1, groups=1, bias=False)
    s_text = "" if set(stride) == {1} else "/" + (str(stride[0]) if len(set(stride)) == 1
                                                 else "x".join(map(str, stride)))
    text = f"shortcut: conv {dst[0]}@{'x'.join('1' * len(stride))}{s_text} bias=off -> bn"
    node = _add_node(b, scope, KINDS["conv"], conv, [cur], s.pos, text, "shortcut", name=f"{base}.conv")
    bn = _add_node(b, scope, KINDS["bn"], _base_attrs(KINDS["bn"], defaults), [node.name], s.pos, text,
                   "shortcut", row=node.name, name=f"{base}.bn")
    return bn.name


def _projection_stride(size: int, out: int) -> int | None:
    """The stride S at which a 1x1 window over `size` pixels gives `out` of them: floor((size-1)/S)+1."""
    for s in {max(1, size // out), -(-size // out)}:
        if (size - 1) // s + 1 == out:
            return s
    return None


# --- blocks --------------------------------------------------------------------------------------

def _collect_blocks(statements: list) -> dict[str, BlockDef]:
    blocks: dict[str, BlockDef] = {}
    for s in statements:
        if not isinstance(s, BlockDef):
            continue
        _check_name(s.name, "a block")
        if lookup(s.name.name) is not None:
            raise DlcError(f"`{s.name.name}` is a layer kind; give the block another name", s.name.pos)
        if s.name.name == "shortcut":
            raise DlcError("`shortcut` is a branch of add( … ); give the block another name", s.name.pos)
        if s.name.name in blocks:
            raise DlcError(f"block `{s.name.name}` is defined twice (first on line "
                           f"{blocks[s.name.name].pos.line})", s.name.pos)
        seen: set[str] = set()
        for p in s.params:
            _check_name(p.name, "a parameter")
            if p.name.name in seen:
                raise DlcError(f"parameter `{p.name.name}` appears twice in block `{s.name.name}`", p.name.pos)
            seen.add(p.name.name)
        if not any(isinstance(x, STEPS) for x in s.body):
            raise DlcError(f"block `{s.name.name}` has no steps", s.name.pos)
        blocks[s.name.name] = s
    return blocks


def _emit_call(b: Build, call: Call, cur: str, scope: Scope, defaults: Defaults) -> str:
    name = call.name.name
    kind = lookup(name)
    if kind is not None and kind.merge:
        raise DlcError(f"{name}( … ) needs two or more branches separated by `|`", call.name.pos)
    block = b.blocks.get(name)
    if block is None:
        if kind is not None:
            raise DlcError(f"`{name}` is a layer kind, not a block: write `{name} …` without parentheses",
                           call.name.pos)
        raise DlcError(f"unknown block `{name}`{_did_you_mean(name, b.blocks)}"
                       + ("" if b.blocks else ": define it first with `block name(params) { … }`"), call.name.pos)
    if name in scope.stack:
        chain = " -> ".join((*scope.stack[scope.stack.index(name):], name))
        raise DlcError(f"block `{name}` calls itself ({chain}); blocks cannot be recursive", call.name.pos)
    if len(scope.stack) >= MAX_BLOCK_DEPTH:
        chain = " -> ".join((*scope.stack[:3], "…", *scope.stack[-2:], name))
        raise TooDeep(f"block calls nest more than {MAX_BLOCK_DEPTH} deep here ({chain})", call.name.pos)
    params = _bind(block, call, scope)
    n = scope.count(("block", name))
    # the network's inputs are seen in every body (BERT's padding mask, read by each layer's attention)
    inputs = {label: node for label, node in scope.labels.items() if b.by_name[node].kind == "input"}
    inner = Scope(f"{scope.prefix}{name}{n}.", params, inputs, (*scope.stack, name))
    body_defaults = dict(defaults)
    try:
        for s in block.body:
            cur = _emit(b, s, cur, inner, body_defaults)
    except DlcError as e:
        if not isinstance(e, TooDeep):
            e.message += f" (in {_one_line(call.text)}, line {call.pos.line})"
        raise
    return cur


def _bind(block: BlockDef, call: Call, scope: Scope) -> dict[str, Value]:
    """Block parameters bound to the call's arguments, positional then by name, then the defaults."""
    names = [p.name.name for p in block.params]
    sig = f"{block.name.name}({', '.join(names)})"
    bound: dict[str, Value] = {}
    keyword = False
    positional = 0
    for arg in call.args:
        if isinstance(arg, Option):
            keyword = True
            if arg.key not in names:
                raise DlcError(f"block {sig} has no parameter `{arg.key}`{_did_you_mean(arg.key, names)}", arg.pos)
            if arg.key in bound:
                raise DlcError(f"`{arg.key}` is given twice in this call of {sig}", arg.pos)
            bound[arg.key] = _value(arg.value, scope)
            continue
        if keyword:
            raise DlcError("positional arguments come before name=value ones", arg.pos)
        if positional >= len(names):
            raise DlcError(f"block {sig} takes {len(names)} argument{'s' if len(names) != 1 else ''}, "
                           f"got {sum(isinstance(a, Value) for a in call.args)}", arg.pos)
        bound[names[positional]] = _value(arg, scope)
        positional += 1
    for p in block.params:
        if p.name.name not in bound:
            if p.default is None:
                raise DlcError(f"this call of {sig} is missing the argument `{p.name.name}`", call.name.pos)
            bound[p.name.name] = p.default
    return bound


# --- nodes ---------------------------------------------------------------------------------------

def _add_node(b: Build, scope: Scope, kind: LayerKind, attrs: dict, inputs: list[str], pos: Pos, text: str,
              head: str, row: str = "", name: str | None = None, where: dict[str, Pos] | None = None) -> Node:
    """Resolve the shape of one node and append it (an fc on a non-vector gets a flatten first)."""
    if len(b.nodes) >= MAX_NODES:
        raise DlcError(f"the network grows past {MAX_NODES:,} nodes here; is a repeat count too large?", pos)
    ins = [b.by_name[i] for i in inputs]
    if kind.name == "fc" and is_spatial(ins[0].out_shape):
        # docs/language.md, "Layer kinds": fc flattens a signal, an image or a volume (C, H, W order)
        # first, shown as its own row; on a sequence it acts on each step.
        ins = [_add_node(b, scope, KINDS["flatten"], {}, inputs, pos, "flatten", "flatten")]
        inputs = [ins[0].name]
    _check_dtype(kind, ins, pos, head)
    name = name or scope.node_name(kind.name)
    shapes = _per_sample([n.out_shape for n in ins], [bool(n.attrs.get("shared")) for n in ins], kind, head, pos)
    missing = next((k for k, v in attrs.items() if v is None and kind.options.get(k, 0) is None), None)
    if missing is not None:
        raise DlcError(f"{head} needs the option {missing}=… (it has no default)", pos)
    for k, default in kind.options.items():
        if default is LABEL and attrs[k] is not None:
            attrs[k] = _ref(b, attrs[k])
    # the tensors read by label (attention's from= and mask=) are read as written: a mask is token ids
    read = [attrs[k] for k, default in kind.options.items() if default is READ and attrs[k] is not None]
    inputs, shapes = [*inputs, *read], [*shapes, *(b.by_name[r].out_shape for r in read)]
    try:
        out, resolved = kind.resolve(attrs, shapes)
    except ShapeError as e:
        if e.attr is not None:  # a value out of range, not a shape that does not fit: point at the value
            at = (where or {}).get(e.attr)
            raise DlcError(str(e) if at else f"{head} ({name}): {e}", at or pos) from None
        shown = [show(s) for s in shapes]
        if all(s in str(e) for s in shown):
            raise DlcError(f"{head} ({name}): {e}", pos) from None
        what = "inputs" if len(shapes) > 1 else "input"
        raise DlcError(f"{head} ({name}) does not fit its {what} {' and '.join(shown)}: {e}", pos) from None
    text = _one_line(text)
    if scope.params and text not in scope.resolved:  # once per step, not per node of it
        scope.resolved[text] = _with_arguments(text, scope.params)
    node = Node(name, kind.name, resolved, inputs, out, "float32", pos, row, None, text,
                resolved_text=scope.resolved.get(text, ""))
    b.nodes.append(node)
    b.by_name[name] = node
    return node


# The kinds that read a `shared` input (no batch axis): they broadcast it over the batch, as NumPy and
# ONNX broadcast a tensor of lower rank, aligning the axes on the right.
READS_SHARED = {"add", "mul", "maximum", "minimum", "pow", "sub", "div", "matmul"}


def _per_sample(shapes: list[tuple], shared: list[bool], kind: LayerKind, head: str, pos: Pos) -> list[tuple]:
    """The inputs' shapes as the shape rule sees them, batch left out: a shared tensor's, aligned on the
    right with the others' batch and sample axes, loses a leading 1 that stands against the batch axis
    and gains leading 1s where it has fewer axes than a sample (`3` against `seq 2 of 3` reads as 1x3)."""
    if kind.name == "matmul":  # its matrix is one for every sample, read whole
        if shared != [False, True]:
            raise DlcError(f"{head} multiplies the current tensor by a matrix shared by every sample: write "
                           f"`input KxM shared as W` and `matmul W`", pos)
        return shapes
    if not any(shared):
        return shapes
    if kind.name not in READS_SHARED:
        raise DlcError(f"{head} cannot read a `shared` input (no batch axis): only the merges that broadcast "
                       f"read one ({', '.join(sorted(READS_SHARED))})", pos)
    ranks = {len(s) for s, sh in zip(shapes, shared) if not sh}
    if not ranks:
        raise DlcError(f"{head} reads only `shared` inputs: its result would have no batch axis", pos)
    rank = max(ranks)
    sample = next(s for s, sh in zip(shapes, shared) if not sh and len(s) == rank)
    out = []
    for s, sh in zip(shapes, shared):
        if sh and len(s) == rank + 1 and s[0] == 1:
            s = tuple(s[1:])
        elif sh and len(s) <= rank:
            s = (1,) * (rank - len(s)) + tuple(s)
        elif sh:
            raise DlcError(f"{head}: the shared input {'x'.join(map(str, s))} has more axes than the batch "
                           f"and a sample {show(sample)} together", pos)
        out.append(s)
    return out


def _ref(b: Build, name: str) -> Ref:
    """The labelled node as a LABEL option hands it to a shape rule: its kind and parameter shapes."""
    node = b.by_name[name]
    ins = [b.by_name[i].out_shape for i in node.inputs]
    return Ref(name, node.kind, tuple(KINDS[node.kind].params(node.attrs, ins).items()))


def _check_dtype(kind: LayerKind, ins: list[Node], pos: Pos, head: str) -> None:
    for n in ins:
        if kind.reads_tokens and n.dtype != "int64":
            raise DlcError(f"{head} reads token ids, which only `input seq T` gives; its input is "
                           f"{show(n.out_shape)} features", pos)
        if not kind.reads_tokens and n.dtype == "int64":
            raise DlcError(f"{head} cannot read token ids: put `embed D vocab=V` after `input seq "
                           f"{n.out_shape[0]}`", pos)


# --- values --------------------------------------------------------------------------------------

def _value(v: Value, scope: Scope) -> Value:
    """A value with block parameters replaced by what the call bound them to."""
    if v.is_name and v.v in scope.params:
        bound = scope.params[v.v]
        return Value(bound.v, bound.raw, v.pos)
    return v


def _unbound(v: Value, scope: Scope) -> str:
    if not v.is_name:
        return ""
    where = "no block parameter" if not scope.stack else f"block `{scope.stack[-1]}` has no parameter"
    return f"; {where} `{v.v}`{_did_you_mean(v.v, scope.params)}"


def _positive_int(v: Value, what: str, scope: Scope | None = None) -> int:
    if not isinstance(v.v, int) or v.v < 1:
        hint = _unbound(v, scope) if scope is not None else ""
        raise DlcError(f"{what} must be a whole number of at least 1{hint} (received `{v.raw}`)", v.pos)
    return v.v


def _at_least_one(n: int, v: Value) -> int:
    if n < 1:
        raise DlcError(f"sizes must be at least 1 (received `{v.raw}`)", v.pos)
    return n


def _dims(v: Value, what: str, scope: Scope) -> int | tuple[int, ...]:
    """A kernel or stride as written: one number for every spatial axis (the shape rule learns how many
    from the input), or one number per axis, `3x3` or `1x3x3`."""
    if isinstance(v.v, tuple):
        return tuple(_at_least_one(d, v) for d in v.v)
    return _positive_int(v, what, scope)


def _repeat_count(v: Value | None, scope: Scope) -> int:
    if v is None:
        return 1
    n = _value(v, scope)
    if not isinstance(n.v, int) or n.v < 1:
        raise DlcError(f"a repeat count is a whole number of at least 1{_unbound(n, scope)} "
                       f"(received x{'' if n.raw[:1].isdigit() else ' '}{n.raw})", v.pos)
    if n.v > MAX_NODES:
        raise DlcError(f"a repeat count above {MAX_NODES:,} is surely a mistake (received x{n.raw})", v.pos)
    return n.v


def _option_value(kind: LayerKind, opt: Option, scope: Scope):
    """An option's value typed by its registry default: PAD, on/off, int, float or a word."""
    default, v = kind.options[opt.key], _value(opt.value, scope)
    got = f"(received {opt.key}={v.raw})"
    x = v.v
    if default in (LABEL, READ):
        if not v.is_name:
            raise DlcError(f"{opt.key} takes the label of an earlier step (set with `as LABEL`) {got}", v.pos)
        return _label_node(Word(x, v.pos), scope)
    if default is COUNT:
        return _positive_int(v, opt.key, scope)
    if default is SIZES:
        return _dims(v, opt.key, scope)
    if default is AXIS:
        if isinstance(x, int):
            return x
        raise DlcError(f"{opt.key} takes a whole number, an axis of the input (-1: the last){_unbound(v, scope)} {got}",
                       v.pos)
    if default is PAD:
        if x in ("same", "valid") or isinstance(x, (int, tuple)):  # a tuple: one per spatial axis, `1x3x3`
            return x
        raise DlcError(f"{opt.key} takes a whole number, one per axis like 1x3x3, `same` or `valid`"
                       f"{_unbound(v, scope)} {got}", v.pos)
    if isinstance(default, bool):
        if x in SWITCH:
            return SWITCH[x]
        raise DlcError(f"{opt.key} takes on or off{_unbound(v, scope) if x not in SWITCH else ''} {got}", v.pos)
    if default is None or isinstance(default, int):
        if isinstance(x, int):
            return x
        raise DlcError(f"{opt.key} takes a whole number{_unbound(v, scope)} {got}", v.pos)
    if isinstance(default, float):
        if isinstance(x, (int, float)):
            return float(x)
        raise DlcError(f"{opt.key} takes a number{_unbound(v, scope)} {got}", v.pos)
    if not isinstance(x, str):
        raise DlcError(f"{opt.key} takes a word {got}", v.pos)
    return x


def _check_name(w: Word, what: str) -> None:
    if RESERVED.fullmatch(w.name):
        raise DlcError(f"`{w.name}` cannot name {what}: names like x3 are reserved for repetition", w.pos)
    if w.name in KEYWORDS:
        raise DlcError(f"`{w.name}` cannot name {what}: it is a keyword of the language", w.pos)


# --- errors --------------------------------------------------------------------------------------

def _did_you_mean(word: str, choices) -> str:
    import difflib  # only on the error path: it costs start-up time

    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{near[0]}`?)" if near else ""


def _kind_or_error(w: Word, scope: Scope) -> LayerKind:
    kind = lookup(w.name)
    if kind is not None:
        return kind
    if w.name == "shortcut":
        raise DlcError("`shortcut` stands alone as a branch of add( … | shortcut )", w.pos)
    if w.name in scope.params:
        raise DlcError(f"`{w.name}` is a block parameter, not a layer kind", w.pos)
    raise DlcError(f"unknown layer kind `{w.name}`{_did_you_mean(w.name, all_words())}", w.pos)


def _unknown_option(opt: Option, layers: list[StepLayer]) -> DlcError:
    keys = [k for layer in layers for k in layer.kind.options]
    takes = "; ".join(f"{layer.kind.name} takes {', '.join(layer.kind.options)}" if layer.kind.options
                      else f"{layer.kind.name} takes no options" for layer in layers)
    return DlcError(f"unknown option `{opt.key}=`{_did_you_mean(opt.key, keys)}; {takes}", opt.pos)


def _bad_word(w: Word, step: Step, layers: list[StepLayer], scope: Scope) -> DlcError:
    main = layers[0].kind
    kind = lookup(w.name)
    if kind is not None and kind.merge:
        return DlcError(f"`{w.name}` is its own step: write `-> {w.name} LABEL` or `-> {w.name}( A | B )`", w.pos)
    if kind is not None and kind.size_required:
        return DlcError(f"`{w.name}` needs a size, so it starts its own step: write `-> {w.name} "
                        f"{size_example(w.name)}`", w.pos)
    if kind is not None:
        return DlcError(f"`{w.name}` cannot follow a layer on the same step", w.pos)
    if w.name in scope.params or RESERVED.fullmatch(w.name):
        return DlcError(f"expected `->` or a new line before `{w.name}`", w.pos)
    if w.name == "shortcut":
        return DlcError("`shortcut` stands alone as a branch of add( … | shortcut )", w.pos)
    flags = [f for layer in layers for f in layer.kind.flags]
    suffixes = [k for k in all_words() if lookup(k).suffixable]
    options = [f"{k}=" for layer in layers for k in layer.kind.options]
    hint = _did_you_mean(w.name, flags + suffixes + options + list(scope.params))
    what = f"a flag of {main.name}" + (f" ({', '.join(main.flags)})" if main.flags else "")
    return DlcError(f"`{w.name}` is neither a layer kind nor {what}{hint}", w.pos)


# a word where a value stands: not an option's key (`pad=`), not part of a number (`3x3`, `1e-5`)
_WORD = re.compile(r"(/?)(?<![\w.])([A-Za-z_]\w*)(?![\w=])")


def _with_arguments(text: str, params: dict[str, Value]) -> str:
    """A block step's text with each parameter replaced by the value the call bound it to (a parameter
    stands for a whole value: docs/language.md, `block`), a stride of 1 dropped as a step writes it;
    "" when no parameter stands in it."""
    def value(m: re.Match) -> str:
        slash, word = m.groups()
        if word not in params:
            return m[0]
        raw = params[word].raw
        return "" if slash and raw in ("1", "1x1") else slash + raw
    resolved = _WORD.sub(value, text)
    return "" if resolved == text else resolved


def _one_line(text: str) -> str:
    return " ".join(text.split())
