"""Layers -> spec text: the compiler's inverse, for any graph of layers that is to become a spec.

The layers form a graph that a spec writes as a chain with merges: every merge's branches start at
the nearest tensor all its inputs come through (its immediate dominator), so a skip becomes
`as LABEL` ... `add LABEL` and several branches become `add( A | B )` / `concat( A | B | … )`.
A graph that is not series-parallel in this way has no spec and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from dlc.compile import compile_spec
from dlc.errors import DlcError
from dlc.graph import Graph
from dlc.layers import KINDS
from dlc.layers.spatial import show


@dataclass
class SpecLayer:
    """A layer as a spec writes it: its kind, its size and its options, before any text."""

    kind: str
    inputs: list[int]  # positions of the layers it reads; 0 is the input, which reads none (nor do the others)
    size: str = ""  # the SIZE as the language writes it (`64@3x3/2`, `0.5`, `seq 6 of 8`); "" for none
    # values by the kind's option and flag names (a flag's is True or False), in the order they are
    # written; the writer leaves out those at their default
    options: dict = field(default_factory=dict)
    tied: int | None = None  # an fc reusing an embed's table: that embed's position (`tied=LABEL`)
    label: str = ""  # an input's name, where the network has several (`input 3 as in1`)
    # the layers it reads by label besides its input, by option: attention's `from=LABEL`, `mask=LABEL`
    reads: dict[str, int] = field(default_factory=dict)


def window_size(kernel: tuple[int, ...], stride: tuple[int, ...], implied: tuple[int, ...] | None = None) -> str:
    """`KxK`, `KxK/S` or `KxK/SxS` (`K/S` on a signal, `KxKxK/S` on a volume); the stride left out where
    it is the kind's own (1, or a pool's window)."""
    k = "x".join(map(str, kernel))
    if tuple(stride) == tuple(implied or (1,) * len(kernel)):
        return k
    return k + (f"/{stride[0]}" if len(set(stride)) == 1 else "/" + "x".join(map(str, stride)))


@dataclass
class Merge:
    layer: int
    branches: list[list]  # each a list of layer positions and Merges


def dominator_paths(layers: list[SpecLayer]) -> list[list[int]]:
    """Each layer's dominators from the input to itself: every path from the input passes them. In a
    DAG in topological order, a layer's are the common prefix of its inputs' paths, then itself."""
    paths: list[list[int]] = []
    for i, layer in enumerate(layers):
        if not layer.inputs:
            # an input beyond the first is read by label wherever the chain from the first stands: as
            # if it hung off the first input, so that a merge of the two forks there
            paths.append([0, i] if i else [0])
            continue
        common = paths[layer.inputs[0]]
        for j in layer.inputs[1:]:
            other = paths[j]
            k = 0
            while k < min(len(common), len(other)) and common[k] == other[k]:
                k += 1
            common = common[:k]
        paths.append([*common, i])
    return paths


def chain(layers: list[SpecLayer], paths: list[list[int]], start: int, end: int) -> list:
    """The steps that take layer `start`'s output to layer `end`'s, in order."""
    items = []
    cur = end
    while cur != start:
        if cur == 0:
            raise ValueError(end)
        layer = layers[cur]
        if later_input(layers, cur):  # read by its label
            items.append(cur)
            cur = 0
            continue
        if len(layer.inputs) == 1:
            items.append(cur)
            cur = layer.inputs[0]
            continue
        fork = paths[cur][-2]
        branches = [chain(layers, paths, fork, i) for i in layer.inputs]
        if layer.kind in COMMUTATIVE:  # the inputs read by label go last, whatever the model's order
            branches.sort(key=lambda b: by_label(layers, b))
        items.append(Merge(cur, branches))
        cur = fork
    return items[::-1]


def flatten_items(items: list) -> list[int]:
    out = []
    for it in items:
        if isinstance(it, Merge):
            for b in it.branches:
                out += flatten_items(b)
            out.append(it.layer)
        else:
            out.append(it)
    return out


# Suffix layers keep their input's shape (bn, activations); pools and flatten stand on their own lines.
SUFFIX = {name for name, k in KINDS.items() if k.suffixable} - {"gap", "gmp", "flatten", "identity"}


def skip_fork(layers: list[SpecLayer], m: Merge) -> int | None:
    """The fork of an add whose other branch is the tensor itself (a residual), written `add LABEL`;
    None for merges written with branches (a skip from the input has no line to carry `as`)."""
    if layers[m.layer].kind != "add" or len(m.branches) != 2 or [] not in m.branches or m.branches == [[], []]:
        return None
    fork = layers[m.layer].inputs[m.branches.index([])]
    return fork or None


COMMUTATIVE = {"add", "mul", "maximum", "minimum"}  # merges whose inputs may be written in any order


def later_input(layers: list[SpecLayer], i: int) -> bool:
    return i > 0 and layers[i].kind == "input"


def by_label(layers: list[SpecLayer], branch: list) -> bool:
    """Whether a merge's branch is an input beyond the first, alone or with a chain of layers after it
    (BERT's token types and their embedding), which the merge reads by label: the chain is written on the
    input's line (input_chains)."""
    return (bool(branch) and all(not isinstance(it, Merge) for it in branch) and later_input(layers, branch[0])
            and not any(later_input(layers, it) for it in branch[1:]))


def input_chains(layers: list[SpecLayer], items: list) -> dict[int, list[int]]:
    """Each input beyond the first that a merge reads with layers after it: those layers, in order."""
    chains: dict[int, list[int]] = {}

    def visit(its):
        for it in its:
            if isinstance(it, Merge):
                for b in it.branches:
                    if by_label(layers, b) and len(b) > 1:
                        chains[b[0]] = b[1:]
                    else:
                        visit(b)
    visit(items)
    return chains


def read_inputs(layers: list[SpecLayer], m: Merge) -> list[int] | None:
    """The inputs beyond the first that a merge reads after its first branch, written `kind LABEL …`
    after that branch; None where it reads none. Anywhere else such an input has no spec."""
    rest = m.branches[1:]
    if not any(by_label(layers, b) for b in rest):
        return None
    if not all(by_label(layers, b) for b in rest) or any(
            not isinstance(it, Merge) and later_input(layers, it) for it in m.branches[0]):
        raise ValueError(m.layer)
    return [b[-1] for b in rest]  # the input, or the end of its chain


@dataclass
class Draft:
    """What the lines are written from, fixed before the first line is."""

    layers: list[SpecLayer]
    steps: list[str]  # each layer's step: `conv 64@3x3 pad=1`, `fc 10 tied=tok bias=off`
    suffixes: set[int]  # the layers that may join the line of the layer they read
    labels: dict[int, str]
    readers: dict[int, int]  # how many layers read each layer's output


def render(d: Draft, items: list, indent: str = "") -> list[tuple[str, int | None]]:
    """Spec lines: a layer whose kind can be a suffix joins the line of the layer it reads (when that
    output goes nowhere else); a residual is `as LABEL` ... `add LABEL`, other merges `add( A | B )`.
    Each line comes with the layer whose output it ends at (None for a merge's opening line)."""
    # [text, last layer on the line, may take suffixes, labelled here]: a branch's lines come labelled by the
    # render of that branch, and take no second `as`
    lines: list[list] = []
    for it in items:
        if isinstance(it, Merge):
            kind = d.layers[it.layer].kind
            named = read_inputs(d.layers, it)
            if named is not None:
                lines += [[t, last, False, False] for t, last in render(d, it.branches[0], indent)]
                words = [d.layers[i].label if later_input(d.layers, i) else d.labels[i] for i in named]
                lines.append([f"{indent}{kind} {' '.join(words)}", it.layer, False, True])
                continue
            fork = skip_fork(d.layers, it)
            if fork is not None:
                body = next(b for b in it.branches if b)
                lines += [[t, last, False, False] for t, last in render(d, body, indent)]
                lines.append([f"{indent}{kind} {d.labels[fork]}", it.layer, False, True])
                continue
            lines.append([f"{indent}{kind}(", None, False, True])
            for k, b in enumerate(it.branches):
                inner = render(d, b, indent + "    ") if b else [(f"{indent}    identity", None)]
                if k:
                    inner[0] = (f"{indent}  | {inner[0][0].lstrip()}", inner[0][1])
                lines += [[t, last, False, False] for t, last in inner]
            lines.append([f"{indent})", it.layer, False, True])
            continue
        if later_input(d.layers, it):
            raise ValueError(it)  # an input read other than by label after a merge's first branch
        src = d.layers[it].inputs[0]
        if (lines and it in d.suffixes and lines[-1][2] and lines[-1][1] == src and d.readers[src] == 1
                and src not in d.labels):
            lines[-1][0] += f" {d.steps[it]}"
            lines[-1][1] = it
        else:
            lines.append([f"{indent}{d.steps[it]}", it, True, True])
    return [(text + (f" as {d.labels[last]}" if here and last in d.labels else ""), last)
            for text, last, _, here in lines]


def labels_for(layers: list[SpecLayer], items: list) -> dict[int, str]:
    """A label for each fork that an `add LABEL` reads back, numbered in order, and for each embed whose
    table a tied fc reuses (`tok`, as GPT-2's spec names it; numbered if there are several)."""
    forks: list[int] = []

    def visit(its):
        for it in its:
            if isinstance(it, Merge):
                for b in it.branches:
                    visit(b)
                fork = skip_fork(layers, it)
                if fork is not None:
                    forks.append(fork)
    visit(items)
    labels = {f: f"skip{k}" for k, f in enumerate(sorted(set(forks)), start=1)}
    # the end of an input's chain, which a merge reads by label
    labels.update((chain[-1], f"{layers[i].label}_out") for i, chain in input_chains(layers, items).items())
    tables = sorted({layer.tied for layer in layers if layer.tied is not None} - set(labels))
    labels.update((t, "tok" if len(tables) == 1 else f"tok{k}") for k, t in enumerate(tables, start=1))
    # what a layer reads by an option: an input by its own label, another layer by one given here
    read = sorted({i for layer in layers for i in layer.reads.values()} - set(labels))
    labels.update((i, layers[i].label) for i in read if layers[i].kind == "input")
    labels.update((i, f"src{k}") for k, i in enumerate([i for i in read if layers[i].kind != "input"], start=1))
    return labels


def bias_defaults(layers: list[SpecLayer]) -> dict[str, dict]:
    """`default conv bias=off` (and dwconv) where most of those layers have no bias, as a network with
    bn after every conv does; the few with one then say bias=on."""
    defaults = {}
    for kind in ("conv", "dwconv"):
        mine = [layer for layer in layers if layer.kind == kind]
        if sum(layer.options.get("bias") is False for layer in mine) * 2 > len(mine):
            defaults[kind] = {"bias": False}
    return defaults


def written(kind: str, options: dict, defaults: dict[str, dict]) -> dict:
    """The options that differ from their default: the kind's, or the spec's `default` line for it."""
    base = {**KINDS[kind].default_attrs(), **defaults.get(kind, {})}
    return {key: value for key, value in options.items() if not at_default(value, base.get(key))}


def at_default(value, default) -> bool:
    # float32 attributes (alpha=1e-4 stored as 9.99999974e-05) are their defaults if close
    if isinstance(value, float) and isinstance(default, (int, float)) and not isinstance(default, bool):
        return math.isclose(value, default, rel_tol=1e-6)
    return value == default


def option_words(kind: str, options: dict) -> list[str]:
    """`key=value` words, and a flag that is on as its bare word (`rope`, but `rope=500000`)."""
    flags = KINDS[kind].flags
    return [key if key in flags and value is True else f"{key}={value_word(value)}"
            for key, value in options.items()]


def value_word(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):  # one per spatial axis, `pad=1x3x3`
        return "x".join(map(str, value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def step_text(layer: SpecLayer, options: dict, labels: dict[int, str]) -> str:
    """`kind SIZE tied=LABEL from=LABEL options`: the size first and the layers it reads by label next, as
    the language's examples write them."""
    tied = [] if layer.tied is None else [f"tied={labels[layer.tied]}"]
    reads = [f"{option}={labels[i]}" for option, i in layer.reads.items()]
    return " ".join([layer.kind, *filter(None, [layer.size]), *tied, *reads, *option_words(layer.kind, options)])


def comment(text: str) -> str:
    """`# text`, kept one comment line whatever the model's file says: a producer name or file name
    holding a line break would otherwise end the comment and put its own statements (a `train` line)
    into the spec. Every character that is not printable is escaped (`\\n`): the line breaks of the
    grammar (\\n) and of dlc's spec reader (\\r too), the others str.splitlines breaks at (\\v, \\f,
    \\x1c-\\x1e, \\x85, \\u2028, \\u2029), which editors show as new lines, and control characters,
    NUL (a spec with one is refused as not text) and undecodable bytes of a file name."""
    return "# " + "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def write_spec(layers: list[SpecLayer], outputs: dict[str, int], file: str,
               head: str = "") -> tuple[str, Graph, list[int]]:
    """The spec of a graph of layers (its inputs first, layers[0] the first; each reading earlier ones)
    ending at `outputs` (label -> layer; with several, an `output` line names them), with `head` (comment
    lines) first and each step's output shape as a comment after it; its compiled graph; and the layers
    in the order the graph's nodes after the inputs come from them. A DlcError naming `file` if no spec
    writes the graph.

    Each input starts a chain, and the first one's chain is the spec's main line: where the model's
    first input cannot carry it (two outputs read it apart, as ONNX's test_operator_symbolic_override_
    nested: x + y + z, -x and -y), another input goes first."""
    error = None
    for k in [i for i, layer in enumerate(layers) if layer.kind == "input"]:
        def swap(i: int) -> int:  # input k and input 0 trade places; the others keep theirs
            return k if i == 0 else 0 if i == k else i
        moved = [None] * len(layers)
        for i, layer in enumerate(layers):
            moved[swap(i)] = replace(layer, inputs=[swap(j) for j in layer.inputs],
                                     tied=None if layer.tied is None else swap(layer.tied))
        try:
            text, graph, order = _write(moved, {label: swap(i) for label, i in outputs.items()}, file, head)
        except DlcError as e:
            error = error or e
            continue
        return text, graph, [swap(i) for i in order]
    raise error


# How a spec's lines are laid out: (the items of the main chain, the layers in the order the spec's nodes
# come from them, and a function of the Draft and the `default` lines that gives every line in order).
Plan = tuple[list, list[int], Callable[["Draft", list], list]]


def _one_output(layers: list[SpecLayer], paths: list[list[int]], outputs: dict[str, int], file: str) -> Plan:
    """One output: its chain from the first input, or from a later one (cross-attention's queries, the
    first input read by `from=`); the other inputs' chains on their own lines before it."""
    (output,) = outputs.values()
    try:
        items = chain(layers, paths, 0, output)
    except ValueError:
        raise DlcError(f"{file}: the model's layers do not form a chain of merges that a spec can write")
    # the output's chain may start at an input beyond the first: that input's line is written last, and
    # the chain goes on from it
    root = items.pop(0) if items and not isinstance(items[0], Merge) and later_input(layers, items[0]) else None
    # the inputs' chains are written on their lines, before the first input's: those a merge reads, and those
    # that end at a layer read by an option alone (an encoder's output that a decoder attends `from=`)
    chains = input_chains(layers, items)
    rendered = set(flatten_items(items)) | {i for c in chains.values() for i in c}
    for target in sorted({i for layer in layers for i in layer.reads.values()} - rendered):
        path = chain(layers, paths, 0, target) if not later_input(layers, target) else []
        if path and by_label(layers, path):
            chains[path[0]] = path[1:]
        elif path and root is not None and all(isinstance(it, int) and not later_input(layers, it) for it in path):
            chains[0] = path  # the first input's own chain, when the output's starts at a later input
    ahead = [i for k in sorted(chains) for i in chains[k]]
    order = ahead + [i for i in flatten_items(items) if not later_input(layers, i) and i not in ahead]

    def arrange(draft: Draft, defaults: list) -> list:
        steps, labels = draft.steps, draft.labels
        body = render(draft, items)
        # the inputs beyond the first come first, each on its own line: the first one's chain follows
        named = [(" -> ".join([f"{steps[i]} as {layers[i].label}", *(steps[j] for j in chains.get(i, []))])
                  + (f" as {labels[chains[i][-1]]}" if i in chains else ""), None)
                 for i in range(1, len(layers)) if later_input(layers, i) and i != root]
        first = f"{steps[0]} as {layers[0].label}" if named or root else steps[0]
        if 0 in chains:
            first = " -> ".join([first, *(steps[j] for j in chains[0])]) + f" as {labels[chains[0][-1]]}"
        heads = [*named, (first, None)] if root is None else \
            [(first, None), *named, (f"{steps[root]} as {layers[root].label}", None)]
        return [*heads, *defaults, *body]
    return items, order, arrange


def _several_outputs(layers: list[SpecLayer], paths: list[list[int]], outputs: dict[str, int], file: str) -> Plan:
    """Several outputs: each output's chain starts at the input that alone leads to it, the first input
    where none does; the outputs of one chain lie along it, each feeding the next."""
    roots: dict[int, list[int]] = {}
    for i in outputs.values():
        root = paths[i][1] if len(paths[i]) > 1 and later_input(layers, paths[i][1]) else 0
        roots.setdefault(root, []).append(i)
    chains: dict[int, list] = {}
    for root in sorted(roots, key=lambda r: (r == 0, r)):  # the later inputs' chains first, the first's last
        try:
            chains[root] = chain(layers, paths, root, max(roots[root]))
        except ValueError:
            raise DlcError(f"{file}: the model's layers do not form a chain of merges that a spec can write")
        ends = {it.layer if isinstance(it, Merge) else it for it in chains[root]}
        apart = [label for label, i in outputs.items() if i in roots[root] and i not in ends]
        if apart:
            last = next(k for k, i in outputs.items() if i == max(roots[root]))
            raise DlcError(f"{file}: the output {apart[0]} branches off the chain to the output {last}; a spec "
                           f"writes several outputs along the chain of one input, each feeding the next")
    items = [it for c in chains.values() for it in c]
    order = [i for i in flatten_items(items) if not later_input(layers, i)]

    def arrange(draft: Draft, defaults: list) -> list:
        steps = draft.steps
        # the inputs beyond the first come first, each on its own line, those that start an output's chain
        # with it: the first one's chain follows
        named = [(f"{steps[i]} as {layers[i].label}", None) for i in range(1, len(layers))
                 if later_input(layers, i) and i not in chains]
        several = any(later_input(layers, i) for i in range(1, len(layers)))
        first = f"{steps[0]} as {layers[0].label}" if several else steps[0]
        for root, c in chains.items():
            if root:
                named += [(f"{steps[root]} as {layers[root].label}", None), *render(draft, c)]
        body = render(draft, chains.get(0, []))
        # defaults go first where a later input's chain would otherwise come before them
        return ([*defaults, *named, (first, None)] if len(chains) > 1 else [*named, (first, None), *defaults]) + body
    return items, order, arrange


def _write(layers: list[SpecLayer], outputs: dict[str, int], file: str, head: str) -> tuple[str, Graph, list[int]]:
    paths = dominator_paths(layers)
    plan = _one_output if len(outputs) == 1 else _several_outputs
    items, order, arrange = plan(layers, paths, outputs, file)
    if len(order) != len(set(order)):
        raise DlcError(f"{file}: a layer's output is read by merges at different levels, which a spec's "
                       f"nested add( … )/concat( … ) cannot write")
    readers: dict[int, int] = {}
    for layer in layers:
        for i in layer.inputs:
            readers[i] = readers.get(i, 0) + 1
    defaults = bias_defaults(layers)
    labels = labels_for(layers, items)
    if len(outputs) > 1:
        labels.update((i, label) for label, i in outputs.items())
    options = [written(layer.kind, layer.options, defaults) for layer in layers]
    steps = [step_text(layer, opts, labels) for layer, opts in zip(layers, options)]
    # a suffix takes options, never a size or a flag
    suffixes = {i for i, layer in enumerate(layers) if layer.kind in SUFFIX and not layer.size
                and not any(key in KINDS[layer.kind].flags for key in options[i])}
    draft = Draft(layers, steps, suffixes, labels, readers)
    lines = [(" ".join(["default", kind, *option_words(kind, opts)]), None) for kind, opts in defaults.items()]
    try:
        lines = arrange(draft, lines)
    except ValueError:
        raise DlcError(f"{file}: an input beyond the first is read other than by a merge after the first "
                       f"branch, which a spec writes only as `add LABEL`, `mul LABEL` or `concat LABEL`")
    if len(outputs) > 1:
        lines.append((f"output {', '.join(outputs)}", None))
    graph = compile_spec(head + "\n".join(t for t, _ in lines) + "\n", file=file)
    nodes = [n for n in graph.nodes if n.kind != "input"]
    if [n.kind for n in nodes] != [layers[i].kind for i in order]:
        raise DlcError(f"{file}: the written spec compiles to other layers than the model's (a bug in dlc)")
    # each line's output shape as a comment, as the language's examples write them
    shape_of = {i: node.out_shape for node, i in zip(nodes, order)}
    width = max(len(t) for t, _ in lines) + 2
    text = "\n".join(t if last is None else f"{t:<{width}}{comment(show(shape_of[last]) or 'scalar')}"
                     for t, last in lines) + "\n"
    return head + text, graph, order
