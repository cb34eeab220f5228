"""The boxes of a diagram and what each reads: the analysis table's rows, or block calls folded whole.
The rows are those of `dlc summary`, so a spec and an ONNX model (dlc.onnx.analysis) draw alike."""

from __future__ import annotations

from dataclasses import dataclass

from dlc.analysis import Analysis
from dlc.graph import BlockCall
from dlc.report import Row, rows


@dataclass
class Box:
    name: str  # the table row's name; "basic1 … basic2" for a collapsed block call and its repeats
    text: str  # the row's step as the call resolved it ("conv 64@3x3 pad=1"), or the block call as written
    kind: str  # the kind of its first node (an ONNX op type for a model); "block" for a collapsed block call
    out_shape: tuple[int, ...]
    params: int  # trainable
    nodes: list[str]  # every graph node it stands for
    inputs: list[str]  # the boxes it reads, in the order its nodes read them
    template: str = ""  # the step as its block writes it ("conv c@3x3/s pad=1"); "" when that is text
    bound: str | None = None  # with `dlc draw --device`: "compute" or "memory" on that device, "idle" for no work
    output: str = ""  # the network output it ends at, by the name `output` gives it


@dataclass
class Diagram:
    title: str
    boxes: list[Box]  # in the graph's (topological) order


def diagram(analysis: Analysis, every_node: bool = False, collapse: bool = False) -> Diagram:
    """One box per row of `dlc shapes` (per node with every_node); with collapse, one box per top-level
    block call, its repeats included."""
    graph = analysis.graph
    groups: list[tuple[BlockCall | None, list[Row]]] = []
    for row in rows(analysis, every_node):
        call = row.stats[0].node.call if collapse else None
        if call is not None and groups and groups[-1][0] == call:
            groups[-1][1].append(row)
        else:
            groups.append((call, [row]))
    boxes = [_box(call, group) for call, group in groups]
    for box, (_, group) in zip(boxes, groups):
        box.output = group[-1].output
    box_of = {node: box.name for box in boxes for node in box.nodes}
    for box in boxes:
        for node in box.nodes:
            for i in graph.node(node).inputs:
                if box_of[i] != box.name and box_of[i] not in box.inputs:
                    box.inputs.append(box_of[i])
    return Diagram(graph.file, boxes)


def colour_by_bound(d: Diagram, nodes: list) -> None:
    """Give each box the bound of its nodes' roofline times (dlc.roofline.NodeTime): compute where compute
    takes most of its time, memory where traffic does, idle where it does no work; the title says so."""
    by_name = {n.node.name: n for n in nodes}
    for box in d.boxes:
        times = [by_name[name] for name in box.nodes]
        total = sum(t.seconds for t in times)
        compute = sum(t.compute_seconds for t in times)
        box.bound = "idle" if not total else "compute" if compute * 2 > total else "memory"


def _box(call: BlockCall | None, group: list[Row]) -> Box:
    nodes = [s.node.name for row in group for s in row.stats]
    params = sum(row.total("params") for row in group)
    if call is None:
        row, node = group[0], group[0].stats[0].node
        if node.resolved_text and row.text == node.text:  # not with --all, whose rows show the kind alone
            return Box(row.name, node.resolved_text, node.kind, row.out_shape, params, nodes, [], row.text)
        return Box(row.name, row.text, node.kind, row.out_shape, params, nodes, [])
    scopes = list(dict.fromkeys(n.split(".", 1)[0] for n in nodes))
    name = scopes[0] if len(scopes) == 1 else f"{scopes[0]} … {scopes[-1]}"
    return Box(name, call.text, "block", group[-1].out_shape, params, nodes, [])
