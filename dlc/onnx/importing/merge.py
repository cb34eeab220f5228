"""Patterns of the merges: add, mul, concat, maximum, minimum, pow, sub and div of layer outputs."""

from __future__ import annotations

import onnx

from dlc.layers.merge import broadcast_shape
from dlc.layers.spatial import show
from dlc.onnx.importing.reader import Found, NotImportable, Reader, one, other_input
from dlc.onnx.model import attributes


def import_add(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("add", n) if all(i in r.live for i in n.input) else None


def import_mul(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A product of layer outputs of the output's shape, or of a feature vector spread over its positions
    by Unsqueeze (C -> C@1x1 against C@HxW, 1xC against TxC), which imports as the vector itself.
    Mul(x, x), a square, is not a merge of branches: rmsnorm's pattern reads it."""
    if n.op_type == "Unsqueeze":
        return spread_vector(r, n)
    if len(set(n.input)) != len(n.input) or not all(i in r.live for i in n.input):
        return None
    out = r.shape(n.output[0])
    shapes = [r.shape(i) for i in n.input]
    if broadcast_shape(shapes) == out:  # equal ranks, size-1 axes repeated (squeeze-and-excite's C@1x1)
        return one("mul", n)
    for i, s in zip(n.input, shapes):
        source = r.producer.get(i)
        if s != out and not (source is not None and source.op_type == "Unsqueeze" and s == spread(out)):
            raise NotImportable(f"it multiplies {show(s)} by {show(out)}; dlc's mul takes equal shapes (or 1 "
                                f"on an axis) or a vector of the features")
    return one("mul", n)


def spread(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a vector of the features takes to multiply an image (C, 1, 1) or a sequence (1, C)."""
    return (shape[0], 1, 1) if len(shape) == 3 else (1, shape[1])


def spread_vector(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Unsqueeze of a feature vector read only by a Mul with a tensor it spreads over: the vector passes on."""
    mul = r.only_consumer(n.output[0])
    if mul is None or mul.op_type != "Mul" or len(r.shape(n.input[0])) != 1:
        return None
    other = r.shape(other_input(mul, n.output[0]))
    if len(other) not in (2, 3) or r.shape(n.output[0]) != spread(other):
        return None
    return Found(None, [n], n.output[0])


def import_concat(r: Reader, n: onnx.NodeProto) -> Found | None:
    if not all(i in r.live for i in n.input):
        return None
    x = r.shape(n.input[0])
    axis = attributes(n)["axis"] % (len(x) + 1)
    if axis != (2 if len(x) == 2 else 1):
        raise NotImportable(f"it joins along axis {axis}; dlc's concat joins the features")
    return one("concat", n)


def elementwise_merge(kind: str):
    """Max, Min, Pow, Sub or Div of layer outputs (of a stored tensor, other kinds' patterns)."""
    return lambda r, n: one(kind, n) if all(i in r.live for i in n.input) else None
