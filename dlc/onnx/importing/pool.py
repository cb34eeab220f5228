"""Patterns of the pooling kinds: windows (maxpool, avgpool) and global pools (gap, gmp)."""

from __future__ import annotations

import onnx

from dlc.decompile import window_size
from dlc.onnx.importing.conv import spatial
from dlc.onnx.importing.reader import Found, NotImportable, Pattern, Reader, one, reduce_axes
from dlc.onnx.model import attributes


def pool(kind: str) -> Pattern:
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        a = attributes(n)
        kernel = tuple(a["kernel_shape"])
        x = r.shape(n.input[0])
        if len(n.output) > 1 and n.output[1]:
            raise NotImportable("its indices output has no dlc kind")
        dil = tuple(a.get("dilations", (1,) * len(kernel)))
        options = {}
        if dil != (1,) * len(kernel):
            if kind != "maxpool":
                raise NotImportable("dilated average pooling has no dlc kind (maxpool takes dil=)")
            if len(set(dil)) != 1:
                raise NotImportable(f"dilations {list(dil)} differ; maxpool's dil= is one number")
            options["dil"] = dil[0]
        elif covers_whole_input(a, x, kernel, r.shape(n.output[0])) and \
                not (kind == "avgpool" and a.get("count_include_pad")):
            # Caffe's GoogLeNet ends in a 7x7 average padded at the bottom and right to cover a 6x6 input: every
            # cell once, divided by the cells inside, as a 6x6 window computes it
            return whole_window(kind, n, x)
        stride, pad = spatial(a, x, kernel, dil)
        if kind == "avgpool" and a.get("count_include_pad", 0) and pad != 0:
            raise NotImportable("count_include_pad=1 divides by the padded window; dlc's avgpool divides by "
                                "the cells inside the input")
        # a pool's stride defaults to its window, so a stride of 1 is written out
        return one(kind, n, window_size(kernel, stride, implied=kernel),
                   {"pad": pad, **options, "ceil": bool(a.get("ceil_mode"))})
    return match


def covers_whole_input(a: dict, x: tuple[int, ...], kernel: tuple[int, ...], y: tuple[int, ...]) -> bool:
    """Whether the pool's one window, padding included, covers the whole C@HxW input."""
    pads = a.get("pads", (0,) * 2 * len(kernel))
    return len(x) == 3 and len(kernel) == 2 and a.get("auto_pad", b"NOTSET") == b"NOTSET" and y[1:] == (1, 1) \
        and all(k - begin >= size for k, begin, size in zip(kernel, pads, x[1:]))


def whole_window(kind: str, n: onnx.NodeProto, x: tuple[int, ...]) -> Found:
    """A pool of one window over the whole C@HxW input, as dlc writes it: `HxW`, its output a C@1x1 image."""
    return one(kind, n, window_size(x[1:], x[1:], implied=x[1:]))


def vector_of(r: Reader, n: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Flatten, Reshape or Squeeze that turns n's (C, 1, 1) output into a vector, if one does."""
    after = r.only_consumer(n.output[0])
    if after is not None and after.op_type in ("Flatten", "Reshape", "Squeeze"):
        if r.shape(after.output[0]) == r.shape(n.output[0])[:1]:
            return after
    return None


def global_pool(kind: str, ops: tuple[str, str], window: str) -> Pattern:
    """GlobalAveragePool (or ReduceMean over H and W, dynamo's form) followed by a flatten to a vector; one
    whose (C, 1, 1) output is read as an image (SqueezeNet's softmax over it) is the `window` pool of the
    whole input."""
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        x = r.shape(n.input[0])
        if len(x) != 3:
            return None
        if n.op_type == ops[1] and not reduces_spatial_axes(r, n):
            return None
        y = r.shape(n.output[0])
        if y == x[:1]:  # ReduceMean with keepdims=0
            return one(kind, n)
        after = vector_of(r, n)
        if after is None:
            return whole_window(window, n, x)
        return one(kind, n, output=after.output[0], nodes=[n, after])
    return match


def reduces_spatial_axes(r: Reader, n: onnx.NodeProto) -> bool:
    axes = reduce_axes(r, n)
    return axes is not None and sorted(ax % 4 for ax in axes) == [2, 3]
