"""maxpool, avgpool, gap, gmp.

Resolved attributes: kernel (kh, kw), stride (sh, sw), dilation (dh, dw: maxpool's dil=, (1, 1) for avgpool),
pads (top, left, bottom, right) as written (`ceil` may add windows that hang over the bottom/right edge; the
output shape says how many), ceil.
avgpool divides by the number of cells of the window that lie inside the unpadded input
(ONNX AveragePool's default count_include_pad=0).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import GLOBAL, PAD, LayerKind, Shape, Window, register
from dlc.layers.spatial import image, pair, resolve_pads, window_out


def resolve_pool(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "pooling")
    a = dict(attrs)
    kernel = pair(a["kernel"])
    stride = pair(a.get("stride") or kernel)
    dil = pair(a.get("dil", 1))
    if min(dil) < 1:
        raise ShapeError(f"dil must be >= 1 (received dil={a['dil']})", "dil")
    pads = resolve_pads(a["pad"], (h, w), kernel, stride, dil)
    if max(pads[0], pads[2]) > kernel[0] // 2 or max(pads[1], pads[3]) > kernel[1] // 2:
        # ONNX and PyTorch refuse it: a window could then lie wholly in the padding.
        raise ShapeError(f"pooling pad {max(pads)} exceeds half the {kernel[0]}x{kernel[1]} window")
    ho = window_out(h, kernel[0], stride[0], dil[0], pads[0], pads[2], a["ceil"], axis="height")
    wo = window_out(w, kernel[1], stride[1], dil[1], pads[1], pads[3], a["ceil"], axis="width")
    a.update(kernel=kernel, stride=stride, dilation=dil, pads=pads)
    return (c, ho, wo), a


def pool_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    kh, kw = a["kernel"]
    return out[0] * out[1] * out[2] * kh * kw


# dil= spreads maxpool's window as conv's (PyTorch's MaxPool2d dilation); avgpool has none, as PyTorch's
# AvgPool2d and ONNX's AveragePool before opset 19. FLOPs stay k*k per output: the window's cells, not its span.
for _name, _options in (("maxpool", {"pad": PAD, "dil": 1}), ("avgpool", {"pad": PAD})):
    register(LayerKind(
        _name, resolve_pool, size="window", size_required=True, options=_options,
        flags=("ceil",), flops=pool_flops, window=lambda a: Window(a["kernel"], a["stride"], a["dilation"]),
    ))


def resolve_global(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, h, w = image(ins[0], "global pooling")
    return (c,), dict(attrs)


for _name in ("gap", "gmp"):
    register(LayerKind(
        _name, resolve_global, flops=lambda a, ins, out: ins[0][0] * ins[0][1] * ins[0][2],
        window=lambda a: GLOBAL,
    ))
