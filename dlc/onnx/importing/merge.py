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
    batched = [i for i in n.input if i not in r.shared]  # a shared input broadcasts whole, as the compiler checks
    shapes = [r.shape(i) for i in batched]
    if broadcast_shape(shapes) == out:  # equal ranks, size-1 axes repeated (squeeze-and-excite's C@1x1)
        return one("mul", n)
    for i, s in zip(batched, shapes):
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


def import_matmul(r: Reader, n: onnx.NodeProto) -> Found | None:
    """MatMul of a layer output by a graph input, or a Gemm so (alpha 1, neither transposed): PyTorch's mm
    by a matrix that is an input of the model. A Gemm's C is nothing (absent, beta 0, a stored zero) or,
    at beta 1, a layer output added after the product (PyTorch's addmm): an add follows the matmul."""
    if len(n.input) < 2 or not all(i in r.live for i in n.input[:2]):
        return None
    found = one("matmul", n)
    if n.op_type == "Gemm":
        a = attributes(n)
        c = n.input[2] if len(n.input) > 2 and n.input[2] and a.get("beta", 1.0) != 0 else ""
        if c in r.live and a.get("beta", 1.0) == 1.0:
            found.plus = c
        elif c and (r.value(c) is None or r.value(c).any()):
            raise NotImportable("it scales its C or reads a stored one; dlc's matmul adds a layer output at most")
        if a.get("alpha", 1.0) != 1.0 or a.get("transA", 0) or a.get("transB", 0):
            raise NotImportable("it scales or transposes the product of two layer outputs; dlc's matmul does not")
    return found


def elementwise_merge(kind: str):
    """Max, Min, Pow, Sub or Div of layer outputs (of a stored tensor, other kinds' patterns)."""
    return lambda r, n: one(kind, n) if all(i in r.live for i in n.input) else None
