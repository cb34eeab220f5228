"""dlc's own shape rules for operators ONNX's shape inference does not follow: one function per operator,
one dict (SHAPES) keyed by (domain, op type), as count.py's COUNT is by op type.

ONNX's inference knows the standard operators only; at a contrib operator (onnxruntime's com.microsoft
fusions, which its optimiser and quantizer write) it leaves the outputs without a shape, and every node
after it too. dlc.onnx.model.infer asks these rules for such a node whose inputs have shapes, writes the
shapes they give into the graph, and lets ONNX's inference go on from there. A rule takes the node's
attributes and its inputs' full shapes (batch included; None for an omitted input) and gives its
outputs' shapes, the first ones at least; what it cannot know it leaves out.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

Shape = tuple[int, ...]


def like_input(a: dict, ins: list[Shape | None]) -> list[Shape]:
    """An elementwise operator, or a normalization whose first output has its input's shape."""
    return [ins[0]]


def broadcast(a: dict, ins: list[Shape | None]) -> list[Shape]:
    return [tuple(np.broadcast_shapes(*(s for s in ins if s is not None)))]


def matmul_nbits(a: dict, ins: list[Shape | None]) -> list[Shape]:
    """A (..., K) times the N x K matrix its blocks hold: (..., N)."""
    return [ins[0][:-1] + (a["N"],)]


def fused_matmul(a: dict, ins: list[Shape | None]) -> list[Shape]:
    """MatMul of the operands, each maybe transposed in its last two axes, batch axes broadcast."""
    x, w = ins[0], ins[1]
    rows = x[-1] if a.get("transA") else x[-2]
    columns = w[-2] if a.get("transB") else w[-1]
    return [tuple(np.broadcast_shapes(x[:-2], w[:-2])) + (rows, columns)]


MICROSOFT = "com.microsoft"
SHAPES: dict[tuple[str, str], Callable[[dict, list[Shape | None]], list[Shape]]] = {
    (MICROSOFT, "Gelu"): like_input,
    (MICROSOFT, "FastGelu"): like_input,  # its optional bias is the last axis's
    (MICROSOFT, "QuickGelu"): like_input,
    (MICROSOFT, "BiasGelu"): broadcast,
    (MICROSOFT, "BiasAdd"): broadcast,
    (MICROSOFT, "SkipLayerNormalization"): like_input,
    (MICROSOFT, "SkipSimplifiedLayerNormalization"): like_input,
    ("", "SimplifiedLayerNormalization"): like_input,  # onnxruntime's RMS norm, in the default domain
    (MICROSOFT, "MatMulNBits"): matmul_nbits,
    (MICROSOFT, "FusedMatMul"): fused_matmul,
}


def rule_shapes(n: onnx.NodeProto, attrs: dict, ins: list[Shape | None]) -> list[Shape] | None:
    """The output shapes of node n (its attributes `attrs`) by dlc's rule, or None where there is no rule
    or it does not apply."""
    rule = SHAPES.get(("" if n.domain == "ai.onnx" else n.domain, n.op_type))
    if rule is None or ins[:1] == [None]:
        return None
    try:
        return rule(attrs, ins)
    except (IndexError, KeyError, ValueError):  # shapes the operator does not take: ONNX's checker says why
        return None
