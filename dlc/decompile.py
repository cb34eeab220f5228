"""Layers -> spec text: the compiler's inverse, for any graph of layers that is to become a spec.

The layers form a graph that a spec writes as a chain with merges: every merge's branches start at
the nearest tensor all its inputs come through (its immediate dominator), so a skip becomes
`as LABEL` ... `add LABEL` and several branches become `add( A | B )` / `concat( A | B | … )`.
A graph that is not series-parallel in this way has no spec and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlc.errors import DlcError
from dlc.layers import KINDS


@dataclass
class Layer:
    kind: str
    text: str  # the spec words: `conv 64@3x3/2 pad=1 bias=off`, `bn eps=0.001`, `relu`
    inputs: list[int]  # positions of the layers it reads; 0 is the input
    tensors: dict = field(default_factory=dict)  # NumPy arrays by the kind's tensor names
    node: str = ""  # the ONNX node it starts at, for messages
    tied: int | None = None  # an fc reusing an embed's table: that embed's position (`tied=LABEL`)


@dataclass
class Merge:
    layer: int
    branches: list[list]  # each a list of layer positions and Merges


def dominator_paths(layers: list[Layer]) -> list[list[int]]:
    """Each layer's dominators from the input to itself: every path from the input passes them. In a
    DAG in topological order, a layer's are the common prefix of its inputs' paths, then itself."""
    paths: list[list[int]] = []
    for i, layer in enumerate(layers):
        if not layer.inputs:
            paths.append([i])
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


def chain(layers: list[Layer], paths: list[list[int]], start: int, end: int) -> list:
    """The steps that take layer `start`'s output to layer `end`'s, in order."""
    items = []
    cur = end
    while cur != start:
        if cur == 0:
            raise ValueError(end)
        layer = layers[cur]
        if len(layer.inputs) == 1:
            items.append(cur)
            cur = layer.inputs[0]
            continue
        fork = paths[cur][-2]
        items.append(Merge(cur, [chain(layers, paths, fork, i) for i in layer.inputs]))
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


def skip_fork(layers: list[Layer], m: Merge) -> int | None:
    """The fork of an add whose other branch is the tensor itself (a residual), written `add LABEL`;
    None for merges written with branches (a skip from the input has no line to carry `as`)."""
    if layers[m.layer].kind != "add" or len(m.branches) != 2 or [] not in m.branches or m.branches == [[], []]:
        return None
    fork = layers[m.layer].inputs[m.branches.index([])]
    return fork or None


def render(layers: list[Layer], items: list, labels: dict[int, str], readers: dict[int, int],
           indent: str = "") -> list[tuple[str, int | None]]:
    """Spec lines: a layer whose kind can be a suffix joins the line of the layer it reads (when that
    output goes nowhere else); a residual is `as LABEL` ... `add LABEL`, other merges `add( A | B )`.
    Each line comes with the layer whose output it ends at (None for a merge's opening line)."""
    lines: list[list] = []  # [text, last layer on the line, may take suffixes]
    for it in items:
        if isinstance(it, Merge):
            kind = layers[it.layer].kind
            fork = skip_fork(layers, it)
            if fork is not None:
                body = next(b for b in it.branches if b)
                lines += [[t, last, False] for t, last in render(layers, body, labels, readers, indent)]
                lines.append([f"{indent}{kind} {labels[fork]}", it.layer, False])
                continue
            lines.append([f"{indent}{kind}(", None, False])
            for k, b in enumerate(it.branches):
                inner = render(layers, b, labels, readers, indent + "    ") if b else [(f"{indent}    identity", None)]
                if k:
                    inner[0] = (f"{indent}  | {inner[0][0].lstrip()}", inner[0][1])
                lines += [[t, last, False] for t, last in inner]
            lines.append([f"{indent})", it.layer, False])
            continue
        layer = layers[it]
        src = layer.inputs[0]
        bare = all("=" in w for w in layer.text.split()[1:])  # a suffix takes options, never a size
        if (lines and layer.kind in SUFFIX and bare and lines[-1][2] and lines[-1][1] == src and readers[src] == 1
                and src not in labels):
            lines[-1][0] += f" {layer.text}"
            lines[-1][1] = it
        elif layer.tied is not None:  # `fc N tied=LABEL ...`: the size first, as the language's examples write it
            kind, size, *rest = layer.text.split()
            lines.append([" ".join([f"{indent}{kind}", size, f"tied={labels[layer.tied]}", *rest]), it, True])
        else:
            lines.append([f"{indent}{layer.text}", it, True])
    return [(text + (f" as {labels[last]}" if last in labels else ""), last) for text, last, _ in lines]


def labels_for(layers: list[Layer], items: list) -> dict[int, str]:
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
    tables = sorted({layer.tied for layer in layers if layer.tied is not None} - set(labels))
    labels.update((t, "tok" if len(tables) == 1 else f"tok{k}") for k, t in enumerate(tables, start=1))
    return labels


def to_spec(layers: list[Layer], output: int, source: str) -> tuple[list[tuple[str, int | None]], list[int]]:
    """The spec's lines after the input (each with the layer it ends at), and the layers in the order
    the compiler makes their nodes."""
    paths = dominator_paths(layers)
    try:
        items = chain(layers, paths, 0, output)
    except ValueError:
        raise DlcError(f"{source}: the model's layers do not form a chain of merges that a spec can write")
    order = flatten_items(items)
    if len(order) != len(set(order)):
        raise DlcError(f"{source}: a layer's output is read by merges at different levels, which a spec's "
                       f"nested add( … )/concat( … ) cannot write")
    readers: dict[int, int] = {}
    for layer in layers:
        for i in layer.inputs:
            readers[i] = readers.get(i, 0) + 1
    return render(layers, items, labels_for(layers, items), readers), order


def bias_defaults(layers: list[Layer]) -> list[str]:
    """`default conv bias=off` (and dwconv) where most of those layers have no bias, as a network with
    bn after every conv does; the few with one then say bias=on."""
    lines = []
    for kind in ("conv", "dwconv"):
        mine = [layer for layer in layers if layer.kind == kind]
        if sum(layer.text.endswith(" bias=off") for layer in mine) * 2 <= len(mine):
            continue
        lines.append(f"default {kind} bias=off")
        for layer in mine:
            layer.text = layer.text.removesuffix(" bias=off") if layer.text.endswith(" bias=off") else \
                layer.text + " bias=on"
    return lines
