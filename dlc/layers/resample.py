"""pad, pixelshuffle, tile, slice and reshape: kinds that move values to new places without weights.

Resolved attributes:
- pad: pads (top, left, bottom, right), mode ("constant", "reflect" or "replicate"), value (the constant
  mode's fill). `pad P` pads every side by P; top=, left=, bottom=, right= (each >= 1) set one side (ONNX Pad on H and W,
  PyTorch's ConstantPad2d, ReflectionPad2d and ReplicationPad2d).
- pixelshuffle: factor r; C·r²@HxW becomes C@(H·r)x(W·r), output (c, h·r + i, w·r + j) reading input
  (c·r² + i·r + j, h, w) (PyTorch's PixelShuffle, ONNX DepthToSpace in CRD mode).
- tile: repeats, a count per axis of the input (batch left out), written as its shape is: `tile 2@3x4` on an
  image, `tile 2x3` on a sequence, `tile 3` on a vector; each axis repeated whole that many times
  (PyTorch's Tensor.repeat, ONNX Tile).
- slice: length (the SIZE), start (negative: from the end), axis (a word, SLICE_AXES); resolved: dim (the
  axis's index, batch left out) and begin (start from the front). Keeps `length` consecutive entries of
  one axis (ONNX Slice of one axis with step 1, PyTorch's x.narrow).
- reshape: shape, the output's, written as the language writes shapes (C@HxW, TxD or N); the values keep
  their order (C, H, W row by row), as ONNX Reshape and PyTorch's x.reshape(len(x), ...).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import COUNT, LayerKind, Shape, Window, elements, register
from dlc.layers.spatial import image, show

SIDES = ("top", "left", "bottom", "right")
PAD_MODES = ("constant", "reflect", "replicate")


def resolve_pad(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "pad")
    a = dict(attrs)
    if a["amount"] < 0:
        raise ShapeError(f"pad takes a whole number >= 0 (received {a['amount']})", "amount")
    pads = tuple(a["amount"] if a[side] is None else a[side] for side in SIDES)
    if a["mode"] not in PAD_MODES:
        raise ShapeError(f"pad mode is one of {', '.join(PAD_MODES)} (received mode={a['mode']})", "mode")
    if a["value"] != 0 and a["mode"] != "constant":
        raise ShapeError(f"value= is the fill of mode=constant; mode={a['mode']} copies the input's values",
                         "value")
    t, l, b, r = pads
    # A reflection mirrors about the edge pixel without repeating it, so it reaches H-1 rows at most
    # (PyTorch and ONNX refuse more).
    if a["mode"] == "reflect" and (max(t, b) >= h or max(l, r) >= w):
        raise ShapeError(f"mode=reflect pads by less than the input's size on each axis: at most {h - 1} rows "
                         f"and {w - 1} columns on {show(ins[0])} (received top {t}, left {l}, bottom {b}, "
                         f"right {r})")
    a["pads"] = pads
    return (c, h + t + b, w + l + r), a


# Copies: no arithmetic, so no FLOPs; each output pixel reads one input pixel, so the field is kept.
register(LayerKind(
    "pad", resolve_pad, size="int", size_required=True, size_attr="amount",
    # a side written (at least 1) replaces P there: `pad 0 bottom=1 right=1` pads two sides
    options={**{side: COUNT for side in SIDES}, "mode": "constant", "value": 0.0},
))


def resolve_pixelshuffle(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "pixelshuffle")
    r = attrs["factor"]
    if r < 1:
        raise ShapeError(f"pixelshuffle factor must be >= 1 (received {r})", "factor")
    if c % (r * r):
        raise ShapeError(f"pixelshuffle {r} makes each {r}x{r} block of pixels from {r * r} channels; the "
                         f"{c} channels of {show(ins[0])} are not a multiple of {r * r}")
    return (c // (r * r), h * r, w * r), dict(attrs)


# Copies, as upsample: no FLOPs; an output pixel reads one input pixel, and the jump shrinks by the factor.
register(LayerKind(
    "pixelshuffle", resolve_pixelshuffle, size="int", size_required=True, size_attr="factor",
    window=lambda a: Window((1, 1), (a["factor"], a["factor"]), transposed=True),
))


def resolve_tile(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    repeats = attrs["repeats"]
    if len(repeats) != len(ins[0]):
        raise ShapeError(f"tile takes a count per axis of its input, written as its shape is ({show(ins[0])}: "
                         f"{show(tuple(2 for _ in ins[0]))} doubles each); received {len(repeats)}", "repeats")
    return tuple(d * r for d, r in zip(ins[0], repeats)), dict(attrs)


# Copies: no FLOPs; each output value is one input value, so the field is kept.
register(LayerKind("tile", resolve_tile, size="shape", size_required=True, size_attr="repeats"))


# The axes slice names, by the rank of its input (batch left out); an image's features are its channels.
SLICE_AXES = {3: ("features", "height", "width"), 2: ("steps", "features"), 1: ("features",)}


def resolve_slice(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    shape, a = ins[0], dict(attrs)
    names = SLICE_AXES[len(shape)]
    if a["axis"] not in names:
        raise ShapeError(f"slice on {show(shape)} takes axis={' or axis='.join(names)} (received axis={a['axis']})",
                         "axis")
    dim = names.index(a["axis"])
    size, n, start = shape[dim], a["length"], a["start"]
    begin = start + size if start < 0 else start
    if n < 1 or begin < 0 or begin + n > size:
        raise ShapeError(f"{n} entries from start={start} need {begin + n if begin >= 0 else n - start} along "
                         f"{a['axis']}; {show(shape)} has {size}")
    a.update(dim=dim, begin=begin)
    return shape[:dim] + (n,) + shape[dim + 1:], a


# Copies: no FLOPs; each output value is one input value, so the field is kept.
register(LayerKind("slice", resolve_slice, size="int", size_required=True, size_attr="length",
                   options={"start": 0, "axis": "features"}))


def resolve_reshape(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    shape = attrs["shape"]
    if elements(shape) != elements(ins[0]):
        raise ShapeError(f"reshape {show(shape)} holds {elements(shape):,} values; {show(ins[0])} has "
                         f"{elements(ins[0]):,}")
    return shape, dict(attrs)


# Copies: no FLOPs; the field is kept, as flatten keeps it (and as ONNX's analysis reads a Reshape).
register(LayerKind("reshape", resolve_reshape, size="shape", size_required=True, size_attr="shape"))
