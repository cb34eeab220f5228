"""conv, dwconv, upconv.

Resolved attributes (what the backends read): channels (C_out), in_channels, kernel, stride and
dilation with one value per spatial axis of the input ((kh, kw) on an image; conv and dwconv also take a
signal C@L or a volume C@DxHxW), pads (every axis's before, then every axis's after: (top, left,
bottom, right) on an image), groups, bias; upconv also outpad (rows and columns added at the bottom and
right of its output).
Weights follow ONNX: conv W (C_out, C_in/groups, *kernel); upconv W (C_in, C_out/groups, kh, kw); b (C_out).
"""

from __future__ import annotations

from math import prod

from dlc.errors import ShapeError
from dlc.layers import BIAS, PAD, LayerKind, Shape, Window, register, weight
from dlc.layers.spatial import image, pair, per_axis, resolve_pads, show, spatial, spatial_shape, windows_out

CONV_OPTIONS = {"pad": 0, "dil": 1, "groups": 1, "bias": True}


def _check_groups(groups: int, c_in: int, c_out: int) -> None:
    if groups < 1 or c_in % groups or c_out % groups:
        raise ShapeError(f"groups={groups} must divide both the input channels ({c_in}) "
                         f"and the output channels ({c_out})", "groups")


def _window(a: dict) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, dilation) of upconv, which works on images alone, as pairs."""
    dil = pair(a["dil"])
    if min(dil) < 1:
        raise ShapeError(f"dil must be >= 1 (received dil={a['dil']})", "dil")
    return pair(a["kernel"]), pair(a.get("stride") or 1), dil


def _conv_out(a: dict, shape: Shape) -> Shape:
    """The output of a conv over every spatial axis of `shape`; fills a's per-axis attributes."""
    c, sizes = shape[0], shape[1:]
    kernel = per_axis(a["kernel"], shape, "kernel", "kernel")
    stride = per_axis(a.get("stride") or 1, shape, "stride", "stride")
    dil = per_axis(a["dil"], shape, "dilation", "dil")
    if min(dil) < 1:
        raise ShapeError(f"dil must be >= 1 (received dil={a['dil']})", "dil")
    pads = resolve_pads(a["pad"], sizes, kernel, stride, dil)
    _check_groups(a["groups"], c, a["channels"])
    out = windows_out(sizes, kernel, stride, dil, pads)
    a.update(kernel=kernel, stride=stride, dilation=dil, pads=pads, in_channels=c)
    return spatial_shape(a["channels"], out)


def resolve_conv(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    spatial(ins[0], "conv")
    a = dict(attrs)
    if a["channels"] < 1:
        raise ShapeError(f"conv needs at least one output channel (received {a['channels']})")
    return _conv_out(a, ins[0]), a


def resolve_dwconv(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, _ = spatial(ins[0], "dwconv")
    a = dict(attrs)
    if a["mult"] < 1:
        raise ShapeError(f"mult must be >= 1 (received mult={a['mult']})", "mult")
    a.update(channels=c * a["mult"], groups=c)
    return _conv_out(a, ins[0]), a


def _weight_and_bias(a: dict, w: Shape) -> dict[str, Shape]:
    return {"W": w, "b": (a["channels"],)} if a["bias"] else {"W": w}


def conv_params(a: dict, ins: list[Shape]) -> dict[str, Shape]:
    return _weight_and_bias(a, (a["channels"], a["in_channels"] // a["groups"], *a["kernel"]))


def conv_macs(a: dict, ins: list[Shape], out: Shape) -> int:
    return prod(out) * (a["in_channels"] // a["groups"]) * prod(a["kernel"])


def conv_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    return 2 * conv_macs(a, ins, out) + (prod(out) if a["bias"] else 0)


def conv_window(a: dict) -> Window:
    return Window(a["kernel"], a["stride"], a["dilation"])


def conv_fans(a: dict, shape: Shape) -> tuple[float, float]:
    c_out, c_in_per_group, *kernel = shape
    return c_in_per_group * prod(kernel), c_out // a["groups"] * prod(kernel)


CONV_TENSORS = {"W": weight(conv_fans), "b": BIAS}


register(LayerKind(
    "conv", resolve_conv, aliases=("conv2d",), size="conv", size_required=True,
    options={**CONV_OPTIONS, "pad": PAD}, params=conv_params, tensors=CONV_TENSORS, macs=conv_macs,
    flops=conv_flops, window=conv_window,
))

register(LayerKind(
    "dwconv", resolve_dwconv, size="window", size_required=True,
    options={**CONV_OPTIONS, "pad": PAD, "mult": 1}, params=conv_params, tensors=CONV_TENSORS,
    macs=conv_macs, flops=conv_flops, window=conv_window,
))


def resolve_upconv(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "upconv")
    a = dict(attrs)
    kernel, stride, dil = _window(a)
    p = a["pad"]
    if not isinstance(p, int) or p < 0:
        raise ShapeError(f"upconv takes pad as an integer >= 0 (received pad={p})", "pad")
    _check_groups(a["groups"], c, a["channels"])
    op = a["outpad"]
    # Output padding adds at most one stride's worth of rows: enough to invert any stride-s conv's shape.
    # PyTorch also allows up to the dilation, but onnxruntime refuses it, so dlc does not write it.
    if op < 0 or op >= min(stride):
        raise ShapeError(f"upconv outpad must be >= 0 and below the stride (received outpad={op} with stride "
                         f"{stride[0]}x{stride[1]})", "outpad")
    ho = (h - 1) * stride[0] - 2 * p + dil[0] * (kernel[0] - 1) + 1 + op
    wo = (w - 1) * stride[1] - 2 * p + dil[1] * (kernel[1] - 1) + 1 + op
    if ho < 1 or wo < 1:
        raise ShapeError(f"pad={p} crops the {show(ins[0])} input to nothing")
    a.update(kernel=kernel, stride=stride, dilation=dil, pads=(p, p, p, p), in_channels=c)
    return (a["channels"], ho, wo), a


def upconv_params(a: dict, ins: list[Shape]) -> dict[str, Shape]:
    return _weight_and_bias(a, (a["in_channels"], a["channels"] // a["groups"], *a["kernel"]))


def upconv_macs(a: dict, ins: list[Shape], out: Shape) -> int:
    kh, kw = a["kernel"]
    c, h, w = ins[0]
    return c * h * w * (a["channels"] // a["groups"]) * kh * kw


def upconv_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    return 2 * upconv_macs(a, ins, out) + (out[0] * out[1] * out[2] if a["bias"] else 0)


def upconv_fans(a: dict, shape: Shape) -> tuple[float, float]:
    # W is (C_in, C_out/groups, kh, kw). An output pixel of a stride-s transposed convolution
    # gathers about kh*kw/(sh*sw) taps of each of its group's C_in/groups input channels; PyTorch
    # and Keras take the adjoint convolution's fan-in (C_out/groups*kh*kw) instead, which
    # misjudges the forward variance whenever C_in != C_out or the stride is not 1.
    c_in, c_out_per_group, kh, kw = shape
    sh, sw = a["stride"]
    taps = max(kh * kw / (sh * sw), 1.0)
    return c_in // a["groups"] * taps, c_out_per_group * taps


register(LayerKind(
    "upconv", resolve_upconv, aliases=("deconv",), size="conv", size_required=True,
    # outpad: rows and columns added at the bottom and right of the output (ConvTranspose's output_padding),
    # so that a stride-s upconv inverts a stride-s conv's shape: 3x3/2 pad=1 outpad=1 doubles the map
    options={"pad": 0, "dil": 1, "groups": 1, "bias": True, "outpad": 0}, params=upconv_params,
    # output channel j reads W[:, j]: its incoming weights span every axis but the second
    tensors={"W": weight(upconv_fans, maxnorm=(0, 2, 3)), "b": BIAS}, macs=upconv_macs, flops=upconv_flops,
    window=lambda a: Window(a["kernel"], a["stride"], a["dilation"], transposed=True),
))


def resolve_upsample(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "upsample")
    f = attrs["factor"]
    if f < 1:
        raise ShapeError(f"upsample factor must be >= 1 (received {f})", "factor")
    return (c, h * f, w * f), dict(attrs)


# Nearest-neighbour copies: no arithmetic, so no FLOPs.
register(LayerKind(
    "upsample", resolve_upsample, size="int", size_required=True, size_attr="factor",
    window=lambda a: Window((1, 1), (a["factor"], a["factor"]), transposed=True),
))
