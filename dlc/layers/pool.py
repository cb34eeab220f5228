"""maxpool, avgpool, gap, gmp (a vector of the channels; C@1x1 with the flag `keep`).

Resolved attributes: kernel, stride and dilation (maxpool's dil=, 1 for avgpool) with one value per spatial
axis of the input (a signal C@L, an image C@HxW or a volume C@DxHxW), pads (every axis's before, then every
axis's after) as written (`ceil` may add windows that hang over the far edges; the output shape says how
many), ceil.
avgpool divides by the number of cells of the window that lie inside the unpadded input
(ONNX AveragePool's default count_include_pad=0).
"""

from __future__ import annotations

from math import prod

from dlc.errors import ShapeError
from dlc.layers import GLOBAL, PAD, LayerKind, Shape, Window, register
from dlc.layers.spatial import per_axis, resolve_pads, spatial, spatial_shape, windows_out


def resolve_pool(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, sizes = spatial(ins[0], "pooling")
    a = dict(attrs)
    kernel = per_axis(a["kernel"], ins[0], "window", "kernel")
    stride = per_axis(a.get("stride") or kernel, ins[0], "stride", "stride")
    dil = per_axis(a.get("dil", 1), ins[0], "dilation", "dil")
    if min(dil) < 1:
        raise ShapeError(f"dil must be >= 1 (received dil={a['dil']})", "dil")
    if len(sizes) == 3 and max(dil) > 1:
        # the volume kernels pool the depth axis by its offsets, undilated
        raise ShapeError("dil= spreads the windows of a signal's or an image's pool; a volume's are not dilated", "dil")
    pads = resolve_pads(a["pad"], sizes, kernel, stride, dil)
    n = len(sizes)
    if any(max(pads[i], pads[n + i]) > kernel[i] // 2 for i in range(n)):
        # ONNX and PyTorch refuse it: a window could then lie wholly in the padding.
        raise ShapeError(f"pooling pad {max(pads)} exceeds half the {'x'.join(map(str, kernel))} window")
    out = windows_out(sizes, kernel, stride, dil, pads, a["ceil"])
    a.update(kernel=kernel, stride=stride, dilation=dil, pads=pads)
    return spatial_shape(c, out), a


def pool_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    return prod(out) * prod(a["kernel"])


# dil= spreads maxpool's window as conv's (PyTorch's MaxPool2d dilation); avgpool has none, as PyTorch's
# AvgPool2d and ONNX's AveragePool before opset 19. FLOPs stay k*k per output: the window's cells, not its span.
for _name, _options in (("maxpool", {"pad": PAD, "dil": 1}), ("avgpool", {"pad": PAD})):
    register(LayerKind(
        _name, resolve_pool, size="window", size_required=True, options=_options,
        flags=("ceil",), flops=pool_flops, window=lambda a: Window(a["kernel"], a["stride"], a["dilation"]),
    ))


def resolve_global(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, sizes = spatial(ins[0], "global pooling")
    # `keep`: C@1x1 as PyTorch's AdaptiveAvgPool2d(1) and ONNX's GlobalAveragePool give it, for the 1x1
    # convs of squeeze-and-excite as torchvision writes them
    return (spatial_shape(c, (1,) * len(sizes)) if attrs["keep"] else (c,)), dict(attrs)


for _name in ("gap", "gmp"):
    register(LayerKind(
        _name, resolve_global, flags=("keep",), flops=lambda a, ins, out: prod(ins[0]),
        window=lambda a: GLOBAL,
    ))
