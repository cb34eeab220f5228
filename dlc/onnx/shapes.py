"""dlc's own shape rules for operators ONNX's shape inference does not follow: one function per operator,
one dict (SHAPES) keyed by (domain, op type), as count.py's COUNT is by op type.

ONNX's inference knows the standard operators only; at a contrib operator (onnxruntime's com.microsoft
fusions and quantized operators, which its optimiser and quantizers write) it leaves the outputs without a
shape, and every node after it too. dlc.onnx.model.infer asks these rules for such a node whose inputs have
shapes, writes what they give into the graph, and lets ONNX's inference go on from there. A rule takes the
inputs' (element type, full shape) (batch included; None for an omitted input) and the node's attributes,
and gives its outputs' (element type, shape), the first ones at least. The definitions are onnxruntime's
docs/ContribOperators.md.
"""

from __future__ import annotations

from math import ceil, floor
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

Typed = tuple[int, tuple[int, ...]]  # (ONNX element type, shape)
Rule = Callable[[list["Typed | None"], dict], list[Typed]]


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def like_input(ins: list[Typed | None], a: dict) -> list[Typed]:
    """An elementwise operator, or a normalization whose first output has its input's shape and type."""
    return [ins[0]]


def broadcast_inputs(ins: list[Typed | None], a: dict) -> list[Typed]:
    return [(ins[0][0], broadcast(*(t[1] for t in ins if t is not None)))]


def matmul_nbits(ins: list[Typed | None], a: dict) -> list[Typed]:
    """A (..., K) times the dequantized N x K matrix its blocks hold: (..., N)."""
    elem, shape = ins[0]
    return [(elem, (*shape[:-1], a["N"]))]


def fused_matmul(ins: list[Typed | None], a: dict) -> list[Typed]:
    """MatMul of the operands, each maybe transposed in its last two axes, batch axes broadcast."""
    (elem, x), (_, w) = ins[0], ins[1]
    rows = x[-1] if a.get("transA") else x[-2]
    columns = w[-2] if a.get("transB") else w[-1]
    return [(elem, broadcast(x[:-2], w[:-2]) + (rows, columns))]


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
    (_, a_shape), (_, b_shape) = ins[0], ins[3]
    m = a_shape[1] if a.get("transA", 0) else a_shape[0]
    n = b_shape[0] if a.get("transB", 0) else b_shape[1]
    elem = TensorProto.FLOAT if len(ins) <= 7 or ins[7] is None else (ins[8] or ins[0])[0]
    return [(elem, (m, n))]


def qlinear_binary(ins: list[Typed | None], a: dict) -> list[Typed]:
    return [(ins[0][0], broadcast(ins[0][1], ins[3][1]))]


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


MICROSOFT = "com.microsoft"
SHAPES: dict[tuple[str, str], Rule] = {
    (MICROSOFT, "Gelu"): like_input,
    (MICROSOFT, "FastGelu"): like_input,  # its optional bias is the last axis's
    (MICROSOFT, "QuickGelu"): like_input,
    (MICROSOFT, "BiasGelu"): broadcast_inputs,
    (MICROSOFT, "BiasAdd"): broadcast_inputs,
    (MICROSOFT, "SkipLayerNormalization"): like_input,
    (MICROSOFT, "SkipSimplifiedLayerNormalization"): like_input,
    ("", "SimplifiedLayerNormalization"): like_input,  # onnxruntime's RMS norm, in the default domain
    (MICROSOFT, "FusedMatMul"): fused_matmul,
    (MICROSOFT, "MatMulNBits"): matmul_nbits,
    (MICROSOFT, "GatherBlockQuantized"): gather_block_quantized,
    (MICROSOFT, "QGemm"): qgemm,
    (MICROSOFT, "QLinearAdd"): qlinear_binary,
    (MICROSOFT, "QLinearMul"): qlinear_binary,
    (MICROSOFT, "QLinearAveragePool"): qlinear_pool,
    (MICROSOFT, "QLinearGlobalAveragePool"): qlinear_global_pool,
    (MICROSOFT, "QLinearConcat"): qlinear_concat,
    (MICROSOFT, "QLinearSoftmax"): like_input,
    (MICROSOFT, "QLinearSigmoid"): like_input,
    (MICROSOFT, "QLinearLeakyRelu"): like_input,
}


def rule_shapes(n: onnx.NodeProto, attrs: dict, ins: list[Typed | None]) -> list[Typed] | None:
    """The outputs' (element type, shape) of node n (its attributes `attrs`) by dlc's rule, or None where
    there is no rule, an input it reads has no known shape yet, or the node does not match the operator's
    definition (ONNX's checker says why)."""
    rule = SHAPES.get(("" if n.domain == "ai.onnx" else n.domain, n.op_type))
    if rule is None or ins[:1] == [None]:
        return None
    try:
        outs = rule(ins, attrs)
    except (TypeError, IndexError, KeyError, ValueError, ZeroDivisionError):
        return None
    return None if None in outs else outs
