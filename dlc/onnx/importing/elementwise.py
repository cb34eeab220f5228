"""Patterns of the kinds that act on each value or each sample alone: activations, softmax, dropout,
bn, lrn, and identity (which imports as no layer).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dlc.layers import Signal, feature_axis
from dlc.layers.elementwise import features_layout, per_feature
from dlc.layers.spatial import show
from dlc.onnx.importing.reader import (Found, NotImportable, Pattern, Reader, const_scalar, one, other_input,
                                       reduce_axes)
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


# ---- the kinds of today's vision networks (issue 21) ----

def pytorch_hardsigmoid(n: onnx.NodeProto) -> bool:
    """HardSigmoid at PyTorch's alpha 1/6 and beta 1/2 (relu6(x + 3) / 6); ONNX's defaults are 0.2 and 0.5."""
    a = attributes(n)
    return math.isclose(a.get("alpha", 0.2), 1 / 6, rel_tol=1e-6) and math.isclose(a.get("beta", 0.5), 0.5)


def import_hardsigmoid(r: Reader, n: onnx.NodeProto) -> Found | None:
    if not pytorch_hardsigmoid(n):
        raise NotImportable("dlc's hardsigmoid is PyTorch's, alpha 1/6 and beta 1/2")
    return one("hardsigmoid", n)


def import_hardswish(r: Reader, n: onnx.NodeProto) -> Found | None:
    """HardSwish (opset 14), or x * HardSigmoid(x) as dlc's lowering writes it, HardSigmoid at PyTorch's
    alpha and beta read only by a Mul whose other operand is its own input."""
    if n.op_type == "HardSwish":
        return one("hardswish", n)
    mul = r.only_consumer(n.output[0])
    if not pytorch_hardsigmoid(n) or mul is None or mul.op_type != "Mul" or other_input(mul, n.output[0]) != n.input[0]:
        return None
    return one("hardswish", n, output=mul.output[0], nodes=[n, mul])


def import_scale(r: Reader, n: onnx.NodeProto) -> Found | None:
    """x times a stored tensor of one value per feature (layer scale), in either order; one value for all is
    that value for every feature."""
    stored = [i for i in n.input if r.is_constant(i)]
    if len(stored) != 1 or "axis" in attributes(n):  # before opset 7 `axis` could align it elsewhere
        return None
    x = other_input(n, stored[0])
    shape = Signal(r.shape(x)) if x in r.g.signals else r.shape(x)  # a signal's features are its channels
    value, layout = r.value(stored[0]), features_layout(shape)
    if value.size == 1:
        value = np.full(layout, value.reshape(-1)[0])
    _, gamma = per_feature_tensor(r, x, value, "stored factor")
    return one("scale", n, tensors={"gamma": gamma.reshape(layout)})  # one feature: (1, 1, 1) of an image


def axis_option(r: Reader, n: onnx.NodeProto, axis: int) -> dict:
    """`axis=` of a kind that works along one axis (softmax, logsoftmax, glu, reduce) from the operator's axis
    of the batch-first tensor: nothing where it is the features, dlc's default."""
    x = r.shape(n.input[0])
    axis %= len(x) + 1
    if axis == 0:
        raise NotImportable("it works along the batch axis; dlc's layers work on each sample")
    return {} if axis - 1 == feature_axis(x) else {"axis": axis - 1}


def softmax_axis_option(r: Reader, n: onnx.NodeProto) -> dict:
    x = r.shape(n.input[0])
    axis = attributes(n).get("axis", -1 if r.g.opset >= 13 else 1) % (len(x) + 1)
    if r.g.opset < 13 and axis and math.prod(x[axis - 1:]) != x[axis - 1]:
        raise NotImportable(f"before opset 13 it normalises over every axis from {axis} on together; dlc's "
                            f"{n.op_type.lower()} runs over one axis")
    return axis_option(r, n, axis)


def import_softmax(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("softmax", n, options=softmax_axis_option(r, n))


# ---- the math kinds of issue 28 ----

def import_logsoftmax(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("logsoftmax", n, options=softmax_axis_option(r, n))


# PyTorch's Softplus returns x itself above its threshold (20); log(1 + e^-x) is below float32's resolution
# of x from about 17 on, so with such a threshold the two agree to float32 rounding.
SOFTPLUS_EXACT_ABOVE = 17.0


def import_softplus(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Softplus, or as the dynamo exporter writes torch's: Where(Greater(x, threshold), x, Softplus(x)),
    starting at either of the Softplus and the Greater (whichever comes first in the graph)."""
    if n.op_type == "Greater":
        where = r.only_consumer(n.output[0])
        softplus = where and r.producer.get(where.input[2])
        if softplus is None or softplus.op_type != "Softplus":
            return None
    else:
        softplus = n
    x = softplus.input[0]
    where = r.only_consumer(softplus.output[0])
    if where is None or where.op_type != "Where" or list(where.input[1:]) != [x, softplus.output[0]]:
        return one("softplus", n)
    greater = r.producer.get(where.input[0])
    if greater is None or greater.op_type != "Greater" or greater.input[0] != x:
        return None
    if not const_scalar(r, greater.input[1]) >= SOFTPLUS_EXACT_ABOVE:
        raise NotImportable(f"it returns x above a threshold below {SOFTPLUS_EXACT_ABOVE:g}; dlc's softplus is "
                            f"log(1 + exp(x)) everywhere")
    return one("softplus", n, output=where.output[0], nodes=[softplus, greater, where])


def import_softsign(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Softsign, or x / (1 + |x|) as old PyTorch exporters wrote it: Abs, Add 1, Div of x by the sum."""
    if n.op_type == "Softsign":
        return one("softsign", n)
    add = r.only_consumer(n.output[0])
    if add is None or add.op_type != "Add" or not np.isclose(const_scalar(r, other_input(add, n.output[0])), 1.0):
        return None
    div = r.only_consumer(add.output[0])
    if div is None or div.op_type != "Div" or list(div.input) != [n.input[0], add.output[0]]:
        return None
    return one("softsign", n, output=div.output[0], nodes=[n, add, div])


def import_clip(r: Reader, n: onnx.NodeProto) -> Found | None:
    lo, hi = clip_bounds(r, n)
    return one("clip", n, options={k: v for k, v in (("min", lo), ("max", hi)) if not math.isinf(v)})


def per_feature_tensor(r: Reader, x: str, value: np.ndarray, what: str) -> tuple[dict, np.ndarray]:
    """A stored operand broadcast against x as prelu's and shift's tensors are: one value for all, or
    (`channels`) one per feature in ONNX's broadcast layout; NotImportable naming any other shape."""
    shape = Signal(r.shape(x)) if x in r.g.signals else r.shape(x)  # a signal's features are its channels
    if value.size == 1:
        return {}, value.reshape(1).astype(np.float32)
    want = per_feature({"channels": True}, [shape])
    full = (1,) * (len(shape) + 1 - value.ndim) + value.shape  # against the batch-first input
    shown = "x".join(map(str, value.shape))
    if value.ndim == len(shape) + 1 and value.shape[0] != 1:
        raise NotImportable(f"its {what} ({shown}) spans the batch axis; dlc's layers work on each sample")
    if value.ndim > len(shape) + 1 or full[-len(want):] != want or any(d != 1 for d in full[:-len(want)]):
        raise NotImportable(f"its {what} ({shown}): neither one value for all nor one per feature of {show(shape)}")
    return {"channels": True}, value.reshape(want).astype(np.float32)


def import_prelu(r: Reader, n: onnx.NodeProto) -> Found | None:
    slope = r.weight(n, 1, "slope")
    if r.g.opset < 7 and slope.ndim == 1 and slope.size > 1:  # before opset 7 a 1-D slope ran along axis 1
        slope = slope.reshape((-1,) + (1,) * (len(r.shape(n.input[0])) - 1))
    options, alpha = per_feature_tensor(r, n.input[0], slope, "slopes")
    return one("prelu", n, options=options, tensors={"alpha": alpha})


def import_shift(r: Reader, n: onnx.NodeProto) -> Found | None:
    """x plus a stored tensor (a Constant or an initializer), in either order."""
    stored = [i for i in n.input if r.is_constant(i)]
    if len(stored) != 1 or "axis" in attributes(n):  # before opset 7 `axis` could align it elsewhere
        return None
    x = other_input(n, stored[0])
    options, b = per_feature_tensor(r, x, r.value(stored[0]), "stored operand")
    return one("shift", n, options=options, tensors={"b": b})


def import_glu(r: Reader, n: onnx.NodeProto) -> Found | None:
    """a * sigmoid(b) of the two equal halves of a Split, as PyTorch's exporters write nn.GLU."""
    outs = [o for o in n.output if o]
    if len(outs) != 2:
        return None
    sig = r.only_consumer(outs[1])
    mul = sig and r.only_consumer(sig.output[0])
    if sig is None or sig.op_type != "Sigmoid" or mul is None or mul.op_type != "Mul" \
            or set(mul.input) != {outs[0], sig.output[0]} or r.only_consumer(outs[0]) is not mul:
        return None
    x, axis = r.shape(n.input[0]), attributes(n).get("axis", 0)
    options = axis_option(r, n, axis)
    size = x[axis % (len(x) + 1) - 1]
    halves = r.value(n.input[1]) if r.optional(n, 1) else attributes(n).get("split")
    if halves is not None and list(np.asarray(halves).reshape(-1)) != [size // 2, size // 2]:
        raise NotImportable("it splits into unequal parts; dlc's glu halves its axis")
    return one("glu", n, options=options, output=mul.output[0], nodes=[n, sig, mul])


def import_reduce(r: Reader, n: onnx.NodeProto) -> Found | None:
    axes = reduce_axes(r, n)
    if axes is None or len(axes) != 1:
        raise NotImportable("it reduces over several axes (or every one); dlc's reduce works along one")
    options = {**({"sum": True} if n.op_type == "ReduceSum" else {}), **axis_option(r, n, axes[0])}
    if attributes(n).get("keepdims", 1):
        options["keep"] = True
    return one("reduce", n, options=options)


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
    nodes = [n, *scale_after(r, n, tensors)]
    return one("bn", n, options={"eps": eps, "momentum": momentum}, tensors=tensors, output=nodes[-1].output[0],
               nodes=nodes)


def scale_after(r: Reader, n: onnx.NodeProto, tensors: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """The per-channel Mul, then Add, of stored vectors that follow a BatchNormalization alone (Caffe's
    Scale layer after its BatchNorm, whose own scale and shift are 1 and 0: DenseNet, BN-Inception), folded
    into `tensors`' gamma and beta: y = (x̂·γ + β)·s + b = x̂·γs + (βs + b)."""
    folded, out = [], n.output[0]
    for op_type in ("Mul", "Add"):
        after = r.only_consumer(out)
        v = None if after is None or after.op_type != op_type else per_channel(r, other_input(after, out), out)
        if v is None:
            break
        if op_type == "Mul":
            tensors["gamma"], tensors["beta"] = tensors["gamma"] * v, tensors["beta"] * v
        else:
            tensors["beta"] = tensors["beta"] + v
        folded.append(after)
        out = after.output[0]
    return folded


def per_channel(r: Reader, name: str, x: str) -> np.ndarray | None:
    """The stored tensor `name` as a vector over x's channels, if it is one as it broadcasts against x
    (C@1x1 or 1xC@1x1 against an image, C or 1xC against a vector); else None."""
    v, shape = r.value(name), r.shape(x)
    if v is None:
        return None
    fits = {(shape[0], 1, 1), (1, shape[0], 1, 1)} if len(shape) == 3 else {(shape[0],), (1, shape[0])}
    return v.reshape(shape[0]).astype(np.float32) if v.shape in fits else None


def import_instancenorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if len(r.shape(n.input[0])) != 3:
        raise NotImportable("dlc's instancenorm normalises images C@HxW")
    # PyTorch's InstanceNorm2d without affine: dynamo computes the ones and zeros from constants
    values = r.evaluated([n.input[1], n.input[2]])
    if any(v is None for v in values.values()):
        raise NotImportable("its scale or shift is computed by the graph, not a stored tensor")
    gamma, beta = (values[i].astype(np.float32).reshape(-1) for i in n.input[1:3])
    eps = float(np.float32(attributes(n).get("epsilon", 1e-5)))
    return one("instancenorm", n, options={"eps": eps}, tensors={"gamma": gamma, "beta": beta})


def import_groupnorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    """GroupNormalization, or PyTorch's exported form (dlc's lowering too): Reshape to (N, G, -1),
    InstanceNormalization with an identity scale and shift, Reshape back, then Mul gamma and Add beta."""
    shape = r.shape(n.input[0])
    if len(shape) not in (2, 3, 4):
        return None
    c = shape[0]
    if n.op_type == "GroupNormalization":
        a = attributes(n)
        groups = a["num_groups"]
        gamma, beta = r.weight(n, 1, "scale").reshape(-1), r.weight(n, 2, "bias").reshape(-1)
        if r.g.opset < 21:  # one scale and bias per group before opset 21
            gamma, beta = np.repeat(gamma, c // groups), np.repeat(beta, c // groups)
        return one("groupnorm", n, str(groups), {"eps": float(np.float32(a.get("epsilon", 1e-5)))},
                   {"gamma": gamma, "beta": beta})
    target = r.evaluated([n.input[1]])[n.input[1]]
    norm = r.only_consumer(n.output[0])
    if target is None or target.size != 3 or int(target.reshape(-1)[2]) != -1 \
            or norm is None or norm.op_type != "InstanceNormalization":
        return None
    groups = int(target.reshape(-1)[1])
    identity = r.evaluated([norm.input[1], norm.input[2]])
    back = r.only_consumer(norm.output[0])
    if c % groups or any(v is None for v in identity.values()) or not np.all(identity[norm.input[1]] == 1) \
            or not np.all(identity[norm.input[2]] == 0) or back is None or back.op_type != "Reshape" \
            or r.shape(back.output[0]) != shape:
        return None
    nodes, out = [n, norm, back], back.output[0]
    tensors = {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32)}
    for op_type, key in (("Mul", "gamma"), ("Add", "beta")):
        after = r.only_consumer(out)
        if after is None or after.op_type != op_type:
            break
        v = r.evaluated([other_input(after, out)])[other_input(after, out)]
        if v is None or v.size != c or tuple(v.shape)[-len(shape):] != (c,) + (1,) * (len(shape) - 1):
            break  # not one value per channel, broadcast over the positions
        tensors[key] = v.reshape(-1).astype(np.float32)
        nodes.append(after)
        out = after.output[0]
    eps = float(np.float32(attributes(norm).get("epsilon", 1e-5)))
    return one("groupnorm", n, str(groups), {"eps": eps}, tensors, output=out, nodes=nodes)


def import_lrn(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    return one("lrn", n, str(a["size"]), {"alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
                                          "k": float(a.get("bias", 1.0))})


def import_identity(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Reshape":
        return strided_view(r, n)
    return Found(None, [n], n.output[0])


def strided_view(r: Reader, n: onnx.NodeProto) -> Found | None:
    """The dynamo exporter's as_strided of a whole tensor of a batch-1 model (ConvNeXt's pooled image before
    its LayerNorm2d): Reshape to one axis, then Gather of every index in order, shaped as the tensor was.
    It gives the tensor back."""
    shape = r.value(n.input[1]) if r.optional(n, 1) else None
    gather = r.only_consumer(n.output[0])
    if shape is None or shape.tolist() != [-1] or gather is None or gather.op_type != "Gather" \
            or attributes(gather).get("axis", 0) != 0:
        return None
    index = r.value(gather.input[1])
    x = r.shape(n.input[0])
    if index is None or index.shape != (1, *x) or not np.array_equal(index.reshape(-1), np.arange(index.size)):
        return None
    return Found(None, [n, gather], gather.output[0])
