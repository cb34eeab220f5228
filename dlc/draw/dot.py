"""A diagram as Graphviz text, for those who have Graphviz (`dot -Tpdf net.dot -o net.pdf`)."""

from __future__ import annotations

from dlc.draw.boxes import Diagram
from dlc.draw.style import COLOURS, category, lines


def render(d: Diagram) -> str:
    ids = {b.name: f"n{i}" for i, b in enumerate(d.boxes)}
    out = [f"digraph {_quote(d.title)} {{",
           "    rankdir=TB;",
           '    node [shape=box, style="rounded,filled", fontname="monospace", fontsize=10];',
           '    edge [color="#5c5c5c", arrowsize=0.7];']
    for b in d.boxes:
        fill, stroke = COLOURS[category(b)]
        label = _quote("\n".join(lines(b)))
        tip = f", tooltip={_quote('in its block: ' + b.template)}" if b.template else ""  # SVG output's hover
        out.append(f'    {ids[b.name]} [label={label}, fillcolor="{fill}", color="{stroke}"{tip}];')
    for b in d.boxes:
        out.extend(f"    {ids[i]} -> {ids[b.name]};" for i in b.inputs)
    out.append("}")
    return "\n".join(out) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
