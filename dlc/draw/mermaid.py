"""A diagram as a Mermaid flowchart, which GitHub and many editors render; Mermaid lays it out itself."""

from __future__ import annotations

import json

from dlc.draw.boxes import Diagram
from dlc.draw.style import COLOURS, category, lines

WRAP = 600  # px; the widest spec step shown (style.MAX_TEXT characters) fits


def render(d: Diagram) -> str:
    ids = {b.name: f"n{i}" for i, b in enumerate(d.boxes)}
    # Mermaid wraps a label at 200 px unless told otherwise, which breaks a spec step mid-line
    out = ["---", f"title: {json.dumps(d.title)}", "config:", "  flowchart:", f"    wrappingWidth: {WRAP}", "---",
           "flowchart TD"]
    for b in d.boxes:
        first, *rest = (_escape(t) for t in lines(b))
        if b.template:  # a Mermaid tooltip needs a click handler and a loose security level: a comment
            out.append(f"    %% {ids[b.name]} in its block: {b.template}")
        out.append(f'    {ids[b.name]}["<b>{first}</b><br/>{"<br/>".join(rest)}"]')
    for b in d.boxes:
        out.extend(f"    {ids[i]} --> {ids[b.name]}" for i in b.inputs)
    used: dict[str, list[str]] = {}
    for b in d.boxes:
        used.setdefault(category(b), []).append(ids[b.name])
    for cat, members in used.items():
        fill, stroke = COLOURS[cat]
        out.append(f"    classDef {cat} fill:{fill},stroke:{stroke},color:#000")
        out.append(f"    class {','.join(members)} {cat}")
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    """Mermaid's entity codes: a quote would end the label, angle brackets would read as HTML."""
    return text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
