"""A diagram as SVG: boxes placed by dlc.draw.layout, edges as curves, skips in their lanes."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from dlc.draw.boxes import Box, Diagram
from dlc.draw.layout import FAN_GAP, Lane, Layout, Rect, layout
from dlc.draw.style import COLOURS, category, lines

FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
FONT_SIZE = 12
CHAR_W = 7.3  # advance of a 12px monospace character (DejaVu Sans Mono: 0.602 em), rounded up
LINE = 15.0
PAD_X, PAD_Y = 10.0, 7.0
MARGIN = 16.0
HEADER = 26.0  # the title line above the boxes
EDGE = "#5c5c5c"


def box_size(box: Box) -> tuple[float, float]:
    text = lines(box)
    return max(len(t) for t in text) * CHAR_W + 2 * PAD_X, len(text) * LINE + 2 * PAD_Y


def render(d: Diagram) -> str:
    by_name = {b.name: b for b in d.boxes}
    placed = layout([b.name for b in d.boxes], {b.name: b.inputs for b in d.boxes},
                    lambda name: box_size(by_name[name]), MARGIN)
    width = max(placed.width, len(_header(d)) * CHAR_W + 2 * MARGIN)
    height = placed.height + HEADER
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family={quoteattr(FONT)} font-size="{FONT_SIZE}">',
        f"<title>{escape(d.title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,1 L9,5 L0,9 z" fill="{EDGE}"/></marker></defs>',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 4}" font-weight="bold">{escape(_header(d))}</text>',
        f'<g transform="translate(0,{HEADER})">',
        f'<g fill="none" stroke="{EDGE}" stroke-width="1.3">',
        *_edges(d, placed),
        "</g>",
        *(_box(b, placed.rects[b.name]) for b in d.boxes),
        "</g>",
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def _header(d: Diagram) -> str:
    return f"{d.title} · {sum(b.params for b in d.boxes):,} params"


def _box(b: Box, r: Rect) -> str:
    fill, stroke = COLOURS[category(b)]
    text = lines(b)
    tips = " + ".join(b.nodes)  # the folded layers, shown on hover, and the step as its block writes it
    tips += f" · in its block: {b.template}" if b.template else ""
    parts = [f'<g class="box"><title>{escape(tips)}</title>',
             f'<rect x="{r.x:.1f}" y="{r.y:.1f}" width="{r.w:.1f}" height="{r.h:.1f}" rx="6" '
             f'fill="{fill}" stroke="{stroke}" stroke-width="1.2"/>']
    for i, t in enumerate(text):
        y = r.y + PAD_Y + LINE * (i + 1) - 4
        weight = ' font-weight="bold"' if i == 0 else ""
        colour = ' fill="#555555"' if i == 2 else ""
        parts.append(f'<text x="{r.cx:.1f}" y="{y:.1f}" text-anchor="middle"{weight}{colour}>{escape(t)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _edges(d: Diagram, placed: Layout) -> list[str]:
    paths = []
    for b in d.boxes:
        r = placed.rects[b.name]
        skips = [i for i in b.inputs if (i, b.name) in placed.lanes]
        plain = sorted((i for i in b.inputs if i not in skips), key=lambda i: placed.rects[i].cx)
        for k, src in enumerate(plain):
            end_x = r.cx if len(plain) == 1 else r.x + r.w * (k + 1) / (len(plain) + 1)
            paths.append(_curve(placed.rects[src], end_x, r.y))
        for src in skips:
            paths.append(_skip(placed.rects[src], r, placed.lanes[(src, b.name)]))
    return [f'<path d="{p}" marker-end="url(#arrow)"/>' for p in paths]


def _curve(a: Rect, end_x: float, end_y: float) -> str:
    """Straight down from the source; the turn towards the target happens in the gap just above it."""
    x, y = a.cx, a.bottom
    if abs(x - end_x) < 0.5:
        return f"M{x:.1f},{y:.1f} V{end_y:.1f}"
    path = f"M{x:.1f},{y:.1f} "
    if end_y - FAN_GAP > y + 0.5:
        y = end_y - FAN_GAP
        path += f"V{y:.1f} "
    mid = (y + end_y) / 2
    return path + f"C{x:.1f},{mid:.1f} {end_x:.1f},{mid:.1f} {end_x:.1f},{end_y:.1f}"


def _skip(a: Rect, b: Rect, lane: Lane) -> str:
    """Out of the fork's bottom near its right corner, down the lane, into the merge's top (or into the
    right side of a box inside the branch)."""
    x, g = lane.x, FAN_GAP / 2  # a split stands FAN_GAP below its fork and above its merge
    x0, y0 = min(a.right - 10, x), a.bottom
    path = f"M{x0:.1f},{y0:.1f} C{x0:.1f},{y0 + g:.1f} {x:.1f},{y0 + g:.1f} {x:.1f},{y0 + FAN_GAP:.1f} "
    if lane.side:
        y1 = b.y + b.h / 2
        return path + f"V{y1 - g:.1f} C{x:.1f},{y1:.1f} {x:.1f},{y1:.1f} {b.right:.1f},{y1:.1f}"
    x1, y1 = min(b.right - 10, x), b.y
    return path + f"V{y1 - FAN_GAP:.1f} C{x:.1f},{y1 - g:.1f} {x1:.1f},{y1 - g:.1f} {x1:.1f},{y1:.1f}"
