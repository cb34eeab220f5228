"""dlc's shape rules for the com.microsoft operators that onnxruntime's quantizers write and the onnx
package has no schema for: ONNX's shape inference leaves their outputs, and so everything after them,
without a shape. One function per operator, one dict (CONTRIB_SHAPES); each maps the inputs' (element
type, shape), None where unknown or omitted, and the node's attributes to its outputs' (element type,
shape). The definitions are onnxruntime's docs/ContribOperators.md.
"""

from __future__ import annotations

from math import ceil, floor
from typing import Callable

import numpy as np
from onnx import TensorProto

Typed = tuple[int, tuple[int, ...]]  # (ONNX element type, shape)
CONTRIB_DOMAIN = "com.microsoft"


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def matmul_nbits(ins: list[Typed | None], a: dict) -> list[Typed]:
    # A [..., K] times the dequantized B [K, N] (stored as N rows of K/block_size blocks)
    elem, shape = ins[0]
    return [(elem, (*shape[:-1], a["N"]))]


def gather_block_quantized(ins: list[Typed | None], a: dict) -> list[Typed]:
    # the rows of data picked by indices, dequantized into the scales' type; uint8 data packs 8/bits values
    (data_type, data), (_, indices), (scale_type, _) = ins[:3]
    axis = a.get("gather_axis", 0) % len(data)
    shape = (*data[:axis], *indices, *data[axis + 1:])
    if data_type == TensorProto.UINT8:
        shape = (*shape[:-1], shape[-1] * 8 // a.get("bits", 4))
    return [(scale_type, shape)]


def qgemm(ins: list[Typed | None], a: dict) -> list[Typed]:
    # float output without y_scale, else the type of y_zero_point (or of A)
    (a_type, a_shape), (_, b_shape) = ins[0], ins[3]
    m = a_shape[1] if a.get("transA", 0) else a_shape[0]
    n = b_shape[0] if a.get("transB", 0) else b_shape[1]
    elem = TensorProto.FLOAT if len(ins) <= 7 or ins[7] is None else (ins[8] or ins[0])[0]
    return [(elem, (m, n))]


def qlinear_binary(ins: list[Typed | None], a: dict) -> list[Typed]:
    return [(ins[0][0], broadcast(ins[0][1], ins[3][1]))]


def same_as_input(ins: list[Typed | None], a: dict) -> list[Typed]:
    return [ins[0]]


def qlinear_pool(ins: list[Typed | None], a: dict) -> list[Typed]:
    """AveragePool's output size (onnx's rule), channels first or last (channels_last)."""
    elem, shape = ins[0]
    last = a.get("channels_last", 0)
    spatial = shape[1:-1] if last else shape[2:]
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * len(kernel))
    pads = a.get("pads", [0] * 2 * len(kernel))
    auto = a.get("auto_pad", b"NOTSET")
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        out = [ceil(d / s) for d, s in zip(spatial, strides)]
    else:
        if auto == b"VALID":
            pads = [0] * 2 * len(kernel)
        rounding = ceil if a.get("ceil_mode", 0) else floor
        out = [rounding((d + pads[i] + pads[i + len(kernel)] - k) / s) + 1
               for i, (d, k, s) in enumerate(zip(spatial, kernel, strides))]
    full = (shape[0], *out, shape[-1]) if last else (*shape[:2], *out)
    return [(elem, full)]


def qlinear_global_pool(ins: list[Typed | None], a: dict) -> list[Typed]:
    elem, shape = ins[0]
    if a.get("channels_last", 0):
        return [(elem, (shape[0], *[1] * (len(shape) - 2), shape[-1]))]
    return [(elem, (*shape[:2], *[1] * (len(shape) - 2)))]


def qlinear_concat(ins: list[Typed | None], a: dict) -> list[Typed]:
    # inputs: Y_scale, Y_zero_point, then (tensor, scale, zero point) per input
    parts = [t[1] for t in ins[2::3]]
    axis = a["axis"] % len(parts[0])
    return [(ins[1][0], (*parts[0][:axis], sum(p[axis] for p in parts), *parts[0][axis + 1:]))]


CONTRIB_SHAPES: dict[str, Callable[[list[Typed | None], dict], list[Typed]]] = {
    "MatMulNBits": matmul_nbits,
    "GatherBlockQuantized": gather_block_quantized,
    "QGemm": qgemm,
    "QLinearAdd": qlinear_binary,
    "QLinearMul": qlinear_binary,
    "QLinearAveragePool": qlinear_pool,
    "QLinearGlobalAveragePool": qlinear_global_pool,
    "QLinearConcat": qlinear_concat,
    "QLinearSoftmax": same_as_input,
    "QLinearSigmoid": same_as_input,
    "QLinearLeakyRelu": same_as_input,
}


def contrib_shapes(op_type: str, ins: list[Typed | None], attrs: dict) -> list[Typed] | None:
    """The outputs' types and shapes by dlc's rule for a com.microsoft operator; None without a rule or
    while an input it reads has no known shape yet."""
    rule = CONTRIB_SHAPES.get(op_type)
    if rule is None:
        return None
    try:
        outs = rule(ins, attrs)
        return None if None in outs else outs
    except (TypeError, IndexError, KeyError, ValueError, ZeroDivisionError):
        # an input still unknown (None) or a node that does not match the operator's definition
        return None
