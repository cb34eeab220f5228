"""Patterns of the kinds that act on each value or each sample alone: activations, softmax, dropout,
bn, lrn, and identity (which imports as no layer).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dlc.onnx.importing.reader import Found, NotImportable, Pattern, Reader, const_scalar, one, other_input
from dlc.onnx.model import attributes


def unary(kind: str) -> Pattern:
    return lambda r, n: one(kind, n)


def import_relu6(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("relu6", n) if clip_bounds(r, n) == (0.0, 6.0) else None


def import_relu(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Relu" or clip_bounds(r, n) == (0.0, math.inf):
        return one("relu", n)
    return None


def clip_bounds(r: Reader, n: onnx.NodeProto) -> tuple[float, float]:
    a = attributes(n)
    if "min" in a or "max" in a:  # before opset 11 the bounds were attributes
        return float(a.get("min", -math.inf)), float(a.get("max", math.inf))
    lo = r.value(n.input[1]) if r.optional(n, 1) else np.array(-math.inf)
    hi = r.value(n.input[2]) if r.optional(n, 2) else np.array(math.inf)
    if lo is None or hi is None:
        raise NotImportable("its bounds are computed by the graph")
    return float(lo), float(hi)


def import_leaky(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("leaky", n, options={"alpha": float(attributes(n).get("alpha", 0.01))})


def import_elu(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("elu", n, options={"alpha": float(attributes(n).get("alpha", 1.0))})


def import_selu(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    if not (math.isclose(a.get("alpha", 1.67326), 1.67326, rel_tol=1e-4)
            and math.isclose(a.get("gamma", 1.0507), 1.0507, rel_tol=1e-4)):
        raise NotImportable("dlc's selu has the paper's alpha and gamma only")
    return one("selu", n)


def import_gelu(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Gelu":
        if attributes(n).get("approximate", b"none") != b"none":
            raise NotImportable("dlc's gelu is the exact one, not the tanh approximation")
        return one("gelu", n)
    return gelu_erf_form(r, n)


def gelu_erf_form(r: Reader, n: onnx.NodeProto) -> Found | None:
    """x * 0.5 * (1 + erf(x / sqrt 2)) as exporters write it: Div by sqrt 2 (or Mul by its inverse),
    Erf, Add 1, Mul by x, Mul by 0.5 (the 0.5 on either product)."""
    x = n.input[0]
    scale = const_scalar(r, n.input[1])
    if not np.isclose(scale, math.sqrt(2) if n.op_type == "Div" else 1 / math.sqrt(2), rtol=1e-5):
        return None
    erf = r.only_consumer(n.output[0])
    add = erf and r.only_consumer(erf.output[0])
    if erf is None or erf.op_type != "Erf" or add is None or add.op_type != "Add":
        return None
    if not np.isclose(const_scalar(r, other_input(add, erf.output[0])), 1.0):
        return None
    mul = r.only_consumer(add.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    first = other_input(mul, add.output[0])
    half = None
    if first != x:  # (x * 0.5) * (1 + erf): the half comes first
        half = next((c for c in r.consumers.get(x, []) if c.op_type == "Mul" and c.output[0] == first), None)
        if half is None or not np.isclose(const_scalar(r, other_input(half, x)), 0.5):
            return None
        return one("gelu", n, output=mul.output[0], nodes=[n, erf, add, half, mul])
    last = r.only_consumer(mul.output[0])
    if last is None or last.op_type != "Mul" or not np.isclose(const_scalar(r, other_input(last, mul.output[0])), 0.5):
        return None
    return one("gelu", n, output=last.output[0], nodes=[n, erf, add, mul, last])


def import_silu(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Swish with alpha 1 (opset 24), or x * Sigmoid(x) as PyTorch's exporters and dlc's lowering write
    SiLU: the Sigmoid read only by a Mul whose other operand is the Sigmoid's own input."""
    if n.op_type == "Swish":
        if attributes(n).get("alpha", 1.0) != 1.0:
            raise NotImportable("dlc's silu is Swish with alpha 1")
        return one("silu", n)
    mul = r.only_consumer(n.output[0])
    if mul is None or mul.op_type != "Mul" or other_input(mul, n.output[0]) != n.input[0]:
        return None
    return one("silu", n, output=mul.output[0], nodes=[n, mul])


def import_softmax(r: Reader, n: onnx.NodeProto) -> Found | None:
    x = r.shape(n.input[0])
    axis = attributes(n).get("axis", -1 if r.g.opset >= 13 else 1) % (len(x) + 1)
    feature = 1 if len(x) != 2 else 2  # channels of an image, features of a vector, last axis of a sequence
    if axis != feature or (r.g.opset < 13 and len(x) > 1 and math.prod(x[axis:]) != x[axis - 1]):
        raise NotImportable(f"it normalises over axis {axis}; dlc's softmax runs over the features (axis {feature})")
    return one("softmax", n)


def import_dropout(r: Reader, n: onnx.NodeProto) -> Found | None:
    if len(n.output) > 1 and n.output[1] and r.consumers.get(n.output[1]):
        raise NotImportable("its mask is read by the graph")
    a = attributes(n)
    p = float(a["ratio"]) if "ratio" in a else const_scalar(r, n.input[1]) if r.optional(n, 1) else 0.5
    if math.isnan(p):
        raise NotImportable("its ratio is computed by the graph")
    return one("dropout", n, f"{p:g}")


def import_bn(r: Reader, n: onnx.NodeProto) -> Found | None:
    if len(n.output) > 1 and any(n.output[1:]):
        raise NotImportable("it is in training mode (it outputs running statistics)")
    if not 1 <= len(r.shape(n.input[0])) <= 4:
        raise NotImportable("dlc's bn normalises vectors, signals, images and volumes")
    a = attributes(n)
    tensors = {k: r.weight(n, i, k) for i, k in enumerate(("gamma", "beta", "mean", "var"), start=1)}
    eps, momentum = float(np.float32(a.get("epsilon", 1e-5))), 1.0 - float(a.get("momentum", 0.9))
    return one("bn", n, options={"eps": eps, "momentum": momentum}, tensors=tensors)


def import_lrn(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    return one("lrn", n, str(a["size"]), {"alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
                                          "k": float(a.get("bias", 1.0))})


def import_identity(r: Reader, n: onnx.NodeProto) -> Found | None:
    return Found(None, [n], n.output[0])
