"""Patterns of the pooling kinds: windows (maxpool, avgpool) and global pools (gap, gmp)."""

from __future__ import annotations

import onnx

from dlc.decompile import window_size
from dlc.onnx.importing.conv import spatial
from dlc.onnx.importing.reader import Found, NotImportable, Pattern, Reader, one, reduce_axes
from dlc.onnx.model import attributes


POOL_OPS = {"maxpool": "MaxPool", "avgpool": "AveragePool"}


def pool_layer(kind: str, n: onnx.NodeProto, a: dict, x: tuple[int, ...], y: tuple[int, ...]) -> Found:
    """The pool a MaxPool or AveragePool node with attributes `a` makes of an input shaped x (output y)."""
    kernel = tuple(a["kernel_shape"])
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
    elif covers_whole_input(a, x, kernel, y) and not (kind == "avgpool" and a.get("count_include_pad")):
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


def pool(kind: str) -> Pattern:
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        if n.op_type == "Unsqueeze":
            return unsqueezed_pool(kind, r, n)
        return pool_layer(kind, n, attributes(n), r.shape(n.input[0]), r.shape(n.output[0]))
    return match


def unsqueezed_pool(kind: str, r: Reader, n: onnx.NodeProto) -> Found | None:
    """The old exporters' 1-D pool (PyTorch's TorchScript exporter at opset 6): an Unsqueeze of the signal
    (N, C, L) to an image with a unit axis, a 2-D pool whose window is 1 along it, a Squeeze back."""
    x, axes = r.shape(n.input[0]), reduce_axes(r, n)
    p = r.only_consumer(n.output[0])
    if len(x) != 2 or axes is None or len(axes) != 1 or axes[0] % 4 not in (2, 3) or p is None \
            or p.op_type != POOL_OPS[kind]:
        return None
    squeeze = r.only_consumer(p.output[0])
    if squeeze is None or squeeze.op_type != "Squeeze" or [ax % 4 for ax in reduce_axes(r, squeeze) or []] != \
            [axes[0] % 4]:
        return None
    a = attributes(p)
    unit, length = axes[0] % 4 - 2, 3 - axes[0] % 4  # the unit axis's place in the 2-D window, the length's
    per_axis = {key: tuple(a.get(key, (1, 1))) for key in ("kernel_shape", "strides", "dilations")}
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    if any(v[unit] != 1 for v in per_axis.values()) or pads[unit] or pads[2 + unit]:
        raise NotImportable("its 2-D pool also slides along the axis its Unsqueeze added")
    one_d = dict(a, pads=(pads[length], pads[2 + length]), **{k: (v[length],) for k, v in per_axis.items()})
    found = pool_layer(kind, p, one_d, x, r.shape(squeeze.output[0]))
    return Found(found.layer, [n, p, squeeze], squeeze.output[0], node=n.name)


def covers_whole_input(a: dict, x: tuple[int, ...], kernel: tuple[int, ...], y: tuple[int, ...]) -> bool:
    """Whether the pool's one window, padding included, covers the whole C@HxW input."""
    pads = a.get("pads", (0,) * 2 * len(kernel))
    return len(x) == 3 and len(kernel) == 2 and a.get("auto_pad", b"NOTSET") == b"NOTSET" and y[1:] == (1, 1) \
        and all(k - begin >= size for k, begin, size in zip(kernel, pads, x[1:]))


def whole_window(kind: str, n: onnx.NodeProto, x: tuple[int, ...]) -> Found:
    """A pool of one window over the whole C@HxW input, as dlc writes it: `HxW`, its output a C@1x1 image."""
    return one(kind, n, window_size(x[1:], x[1:], implied=x[1:]))


def vector_of(r: Reader, n: onnx.NodeProto, channels: int) -> onnx.NodeProto | None:
    """The Flatten, Reshape or Squeeze that takes n's (C, 1, 1) output a step towards a vector of C (a
    Squeeze may leave (C, 1) for a Reshape to finish), if one does."""
    after = r.only_consumer(n.output[0])
    if after is not None and after.op_type in ("Flatten", "Reshape", "Squeeze"):
        y = r.shape(after.output[0])
        if y[:1] == (channels,) and set(y[1:]) <= {1} and len(y) < len(r.shape(n.output[0])):
            return after
    return None


def global_pool(kind: str, ops: tuple[str, str]) -> Pattern:
    """GlobalAveragePool (or ReduceMean over every spatial axis, dynamo's form) followed by a flatten to a
    vector; one whose (C, 1, 1) output is read as an image (SqueezeNet's softmax over it, the 1x1 convs of
    torchvision's squeeze-and-excite) is the pool with `keep`."""
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        first, x = n, r.shape(n.input[0])
        if n.op_type == "Unsqueeze":  # dynamo's adaptive 1-D pool: an Unsqueeze of the signal, then the 2-D one
            n = r.only_consumer(n.output[0])
            if len(x) != 2 or n is None or n.op_type not in ops:
                return None
        # a Reduce over the last axis of a rank-3 tensor may be a sequence's: only Global*Pool is a signal's
        rank = len(r.shape(n.input[0]))
        if not 2 <= rank <= 4 or n.op_type == ops[1] and (rank == 2 or not reduces_spatial_axes(r, n)):
            return None
        nodes = [first, n] if first is not n else [n]
        while r.shape(nodes[-1].output[0]) != x[:1]:  # ReduceMean with keepdims=0 gives the vector at once
            after = vector_of(r, nodes[-1], x[0])
            if after is None and nodes == [n] and first is n:
                return one(kind, n, options={"keep": True})
            if after is None:
                raise NotImportable(f"its (C, 1, 1) output is read as an image; dlc's {kind} gives a vector, or "
                                    f"with `keep` a pool of every spatial axis")
            nodes.append(after)
        return one(kind, first, output=nodes[-1].output[0], nodes=nodes)
    return match


def reduces_spatial_axes(r: Reader, n: onnx.NodeProto) -> bool:
    axes, rank = reduce_axes(r, n), len(r.shape(n.input[0])) + 1
    return axes is not None and sorted(ax % rank for ax in axes) == list(range(2, rank))
