"""How boxes look in every format: the colour of a box by what its layer does, and its lines of text."""

from __future__ import annotations

from dlc.draw.boxes import Box
from dlc.layers import KINDS
from dlc.layers.spatial import show

# category -> (fill, stroke); light fills so the black text stays readable on paper and on screens
COLOURS = {
    "input": ("#e6e6e6", "#505050"),
    "conv": ("#dbe8f7", "#3f6fa3"),
    "dense": ("#f8dfe3", "#a34a5b"),
    "pool": ("#def0d8", "#4f8a43"),
    "merge": ("#fbe8c8", "#a8782a"),
    "block": ("#e8e0f6", "#6a52a0"),
    "plain": ("#f5f5f5", "#8c8c8c"),
    # `dlc draw --device`: the bound on that device instead of what the layer does
    "compute": ("#f7d4c6", "#b3401f"),
    "memory": ("#cfe3f6", "#2b5c8c"),
    "idle": ("#f5f5f5", "#8c8c8c"),
}

MAX_TEXT = 56  # characters of spec text on a box; a longer step is cut with an ellipsis


def category(box: Box) -> str:
    """Read from the registry (weights, sliding window, merge), not from a list of kind names; with
    `dlc draw --device`, the box's bound on the device."""
    if box.bound is not None:
        return box.bound
    if box.kind in ("input", "block"):
        return box.kind
    kind = KINDS.get(box.kind)
    if kind is None:
        return _onnx_category(box)
    if kind.merge:
        return "merge"
    if box.params and kind.size in ("conv", "window"):
        return "conv"
    if box.params:
        return "dense"
    return "pool" if kind.size == "window" else "plain"


def lines(box: Box) -> list[str]:
    """Name (and the output it ends at, as the tables write it), spec text, output shape (and trainable
    params when there are any)."""
    text = box.text if len(box.text) <= MAX_TEXT else box.text[:MAX_TEXT - 1] + "…"
    shape = show(box.out_shape) + (f" · {box.params:,} params" if box.params else "")
    return [f"{box.name} → {box.output}" if box.output else box.name, text, shape]


def _onnx_category(box: Box) -> str:
    """An ONNX operator, which has no registry entry: what it reads and holds, and the standard's op names
    (Conv, ConvTranspose; MaxPool, AveragePool, LpPool slide a window; a Global…Pool is plain, as gap is)."""
    if len(box.inputs) > 1:
        return "merge"
    if box.params:
        return "conv" if box.kind.startswith("Conv") else "dense"
    return "pool" if box.kind.endswith("Pool") and not box.kind.startswith("Global") else "plain"
