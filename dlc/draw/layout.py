"""Where each box of a diagram goes: a recursive series-parallel layout, top to bottom.

dlc builds graphs as chains and merges of branches (`add( … | … )`, `concat LABEL`), which makes them
series-parallel: a Column stacks its items, a Split sets its branches side by side between the box above
it (the fork) and the box below it (the merge), and an identity edge from fork to merge (ResNet's
shortcut, U-Net's copy) runs in a lane at the Split's right. That is the picture the course notes draw.

No graph-layout library is used. Graphviz needs its system binary, and the layered (Sugiyama) layouts
that it and the pure-Python packages compute minimise edge crossings without knowing which path is the
main one, so a residual block or an inception module does not come out in its textbook shape; the
recursion below does, in a hundred lines, and is fast on a ResNet-152.

A graph that is not series-parallel (a label read twice, a branch reading a node outside it) still gets
every box: the structure holds where it can, the writer draws the other edges as plain curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

V_GAP = 26.0  # between a box and the next: room for an arrow
FAN_GAP = 36.0  # above and below a split, where edges fan out to its branches and back in
H_GAP = 22.0  # between the branches of a split
LANE = 18.0  # a skip lane; a split with one keeps as much room at its left, so its branches stay centred


@dataclass(eq=False)
class Column:
    items: list[Item]
    w: float = 0.0
    h: float = 0.0


@dataclass(eq=False)
class Split:
    branches: list[Column]
    skips: list[tuple[str, str, bool]]  # (fork, target, ends inside a branch) of edges drawn in the lane
    w: float = 0.0
    h: float = 0.0


Item = Union[str, Split]  # a box's name, or branches side by side


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def right(self) -> float:
        return self.x + self.w


@dataclass
class Lane:
    x: float
    side: bool  # the edge ends inside a branch, so it enters its box from the side, not from above


@dataclass
class Layout:
    rects: dict[str, Rect] = field(default_factory=dict)
    lanes: dict[tuple[str, str], Lane] = field(default_factory=dict)  # skip edge -> its lane
    width: float = 0.0
    height: float = 0.0


def layout(names: list[str], inputs: dict[str, list[str]], size: Callable[[str], tuple[float, float]],
           margin: float = 0.0) -> Layout:
    """Place boxes given in topological order; inputs[name] are the boxes it reads, size(name) its (w, h)."""
    column = structure(names, inputs)
    _measure(column, size)
    out = Layout(width=column.w + 2 * margin, height=column.h + 2 * margin)
    _place(column, margin + column.w / 2, margin, size, out)
    return out


def structure(names: list[str], inputs: dict[str, list[str]]) -> Column:
    """The series-parallel structure of a DAG given in topological order."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for i in inputs[n]:
            succ[i].append(n)
    return _series(names, succ, inputs, None)


def _series(nodes: list[str], succ: dict, preds: dict, before: str | None) -> Column:
    """Boxes that no edge jumps over stand in the column; what lies between two of them is a Split.
    A virtual entry feeds every node without a predecessor here and a virtual exit reads every node
    without a successor here, so several heads (or tails) open (or close) a split too."""
    index = {n: i for i, n in enumerate(nodes)}
    furthest = max(i for i, n in enumerate(nodes) if not any(p in index for p in preds[n]))
    items: list[Item] = []
    gap: list[str] = []
    prev = before
    for i, n in enumerate(nodes):
        if furthest <= i:
            if gap:
                items.append(_split(gap, succ, preds, prev, n))
                gap = []
            items.append(n)
            prev = n
        else:
            gap.append(n)
        targets = [index[s] for s in succ[n] if s in index]
        furthest = max(furthest, max(targets) if targets else len(nodes))
    if gap and not items:
        return Column(list(nodes))  # not series-parallel: the boxes in order, every edge drawn as a curve
    if gap:
        items.append(_split(gap, succ, preds, prev, None))
    return Column(items)


def _split(gap: list[str], succ: dict, preds: dict, fork: str | None, merge: str | None) -> Split:
    inside = set(gap)
    branch_of: dict[str, int] = {}
    branches: list[list[str]] = []
    for n in gap:  # connected components, each in topological order
        if n in branch_of:
            continue
        branch_of[n] = len(branches)
        branches.append([])
        todo = [n]
        while todo:
            m = todo.pop()
            for other in (*succ[m], *preds[m]):
                if other in inside and other not in branch_of:
                    branch_of[other] = branch_of[n]
                    todo.append(other)
    for n in gap:
        branches[branch_of[n]].append(n)
    skips = []
    if fork is not None:
        # The fork feeds the heads of the branches directly. An edge to the merge, or past a head (a label
        # read again further down), would cross boxes, so it runs down the lane instead.
        heads = {n for n in gap if not any(p in inside for p in preds[n])}
        skips = [(fork, n, n != merge) for n in succ[fork] if n == merge or (n in inside and n not in heads)]
    return Split([_series(b, succ, preds, fork) for b in branches], skips)


def _measure(item: Item | Column, size: Callable[[str], tuple[float, float]]) -> tuple[float, float]:
    if isinstance(item, str):
        return size(item)
    if isinstance(item, Column):
        dims = [_measure(i, size) for i in item.items]
        item.w = max(w for w, _ in dims)
        item.h = sum(h for _, h in dims) + sum(_gap(a, b) for a, b in zip(item.items, item.items[1:]))
    else:
        dims = [_measure(b, size) for b in item.branches]
        item.w = sum(w for w, _ in dims) + H_GAP * (len(dims) - 1) + (2 * LANE if item.skips else 0)
        item.h = max(h for _, h in dims)
    return item.w, item.h


def _gap(item: Item, after: Item | None) -> float:
    return FAN_GAP if isinstance(item, Split) or isinstance(after, Split) else V_GAP


def _place(item: Item | Column, cx: float, top: float, size: Callable[[str], tuple[float, float]],
           out: Layout) -> None:
    if isinstance(item, str):
        w, h = size(item)
        out.rects[item] = Rect(cx - w / 2, top, w, h)
    elif isinstance(item, Column):
        y = top
        for i, after in zip(item.items, [*item.items[1:], None]):
            _place(i, cx, y, size, out)
            y += (size(i)[1] if isinstance(i, str) else i.h) + _gap(i, after)
    else:
        inner = item.w - (2 * LANE if item.skips else 0)
        x = cx - inner / 2
        for b in item.branches:
            _place(b, x + b.w / 2, top, size, out)
            x += b.w + H_GAP
        for fork, target, side in item.skips:
            out.lanes[(fork, target)] = Lane(cx + inner / 2 + LANE / 2, side)
