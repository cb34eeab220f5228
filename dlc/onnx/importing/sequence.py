"""Patterns of the sequence kinds but attention: layernorm and rmsnorm (one operator or the decomposed
forms), posembed, clstoken, tokens and seqpool.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dlc.onnx.importing.reader import (Found, NotImportable, Reader, const_scalar, one, other_input, producer_node,
                                       reduce_axes)
from dlc.onnx.model import attributes


def import_posembed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A stored (T, D) table added to a sequence."""
    if len(n.input) != 2 or n.op_type != "Add":
        return None
    x = next((i for i in n.input if i in r.live), None)
    table = next((r.value(i) for i in n.input if i not in r.live), None)
    if x is None or table is None or len(r.shape(x)) != 2 or table.size != math.prod(r.shape(x)):
        return None
    return one("posembed", n, tensors={"P": table.reshape(r.shape(x)).astype(np.float32)})


def import_clstoken(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Concat along the steps of a stored token (expanded to the batch) and the sequence."""
    if len(n.input) != 2 or n.input[1] not in r.live or n.input[0] in r.live:
        return None
    x = r.shape(n.input[1])
    token = producer_node(r, n.input[0])
    cls = r.value(token.input[0]) if token is not None and token.op_type == "Expand" else r.value(n.input[0])
    if len(x) != 2 or attributes(n).get("axis") not in (1, -2) or cls is None or cls.size != x[1]:
        return None
    return one("clstoken", n, tensors={"cls": cls.reshape(-1).astype(np.float32)})


def import_layernorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Transpose":
        return layernorm_channels(r, n)
    return layernorm_last(r, n, ranks=(1, 2))


def layernorm_channels(r: Reader, n: onnx.NodeProto) -> Found | None:
    """`layernorm channels` as PyTorch writes ConvNeXt's LayerNorm2d: a Transpose to channels-last, the norm
    of the last axis, and the Transpose back."""
    x = r.shape(n.input[0])
    rank = len(x) + 1
    readers = r.consumers.get(n.output[0], [])  # the decomposed form's ReduceMean and Sub both read it
    norm = next((c for c in readers if c.op_type in ("LayerNormalization", "ReduceMean")), None)
    if not 3 <= rank <= 5 or list(attributes(n).get("perm", ())) != [0, *range(2, rank), 1] or norm is None:
        return None
    found = layernorm_last(r, norm, ranks=(len(x),))
    back = found and r.only_consumer(found.output)
    if back is None or not {id(c) for c in readers} <= {id(m) for m in found.nodes} or back.op_type != "Transpose" or \
            list(attributes(back).get("perm", ())) != [0, rank - 1, *range(1, rank - 1)]:
        return None
    found.layer.options["channels"] = True
    return Found(found.layer, [n, *found.nodes, back], back.output[0], found.tensors, n.name)


def layernorm_last(r: Reader, n: onnx.NodeProto, ranks: tuple[int, ...]) -> Found | None:
    """LayerNormalization over the last axis of a tensor of one of `ranks` (batch left out), or its
    decomposed form."""
    if n.op_type == "ReduceMean":
        return layernorm_decomposed(r, n, ranks)
    x = r.shape(n.input[0])
    a = attributes(n)
    if a.get("axis", -1) % (len(x) + 1) != len(x) or len(x) not in ranks:
        raise NotImportable("dlc's layernorm normalises the last axis of a vector or a sequence")
    if len(n.output) > 1 and any(r.consumers.get(o) for o in n.output[1:] if o):
        raise NotImportable("its mean or inverse deviation is read by the graph")
    gamma = r.weight(n, 1, "scale")
    beta = r.weight(n, 2, "bias") if r.optional(n, 2) else np.zeros_like(gamma)
    return one("layernorm", n, options={"eps": float(np.float32(a.get("epsilon", 1e-5)))},
               tensors={"gamma": gamma, "beta": beta})


def layernorm_decomposed(r: Reader, n: onnx.NodeProto, ranks: tuple[int, ...]) -> Found | None:
    """LayerNorm as the TorchScript exporter writes it below opset 17 (and dlc's own lowering): ReduceMean,
    Sub, Pow 2 (or Mul by itself), ReduceMean, Add eps, Sqrt, Div, then Mul gamma and Add beta if it
    has them, every mean over the last axis only and kept as an axis."""
    x = n.input[0]
    shape = r.shape(x)
    if len(shape) not in ranks or not last_axis_mean(r, n, len(shape) + 1):
        return None
    sub = r.only_consumer(n.output[0])
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, n.output[0]]:
        return None
    centred = sub.output[0]
    readers = list({id(c): c for c in r.consumers.get(centred, [])}.values())  # Mul(d, d) reads it twice
    square = next((c for c in readers if is_square(r, c, centred)), None)
    div = next((c for c in readers if c.op_type == "Div" and c.input[0] == centred), None)
    if len(readers) != 2 or square is None or div is None:
        return None
    root = root_of_mean(r, square, len(shape) + 1)
    if root is None or div.input[1] != root[0][-1].output[0]:
        return None
    (var, add, sqrt), eps = root
    nodes, out = [n, sub, square, var, add, sqrt, div], div.output[0]
    tensors = {"gamma": np.ones(shape[-1], np.float32), "beta": np.zeros(shape[-1], np.float32)}
    for op_type, key in (("Mul", "gamma"), ("Add", "beta")):
        after = r.only_consumer(out)
        v = None if after is None or after.op_type != op_type else r.value(other_input(after, out))
        if v is not None and v.size == shape[-1]:
            tensors[key] = v.reshape(-1).astype(np.float32)
            nodes.append(after)
            out = after.output[0]
    return one("layernorm", n, options={"eps": float(np.float32(eps))}, tensors=tensors, output=out, nodes=nodes)


def last_axis_mean(r: Reader, n: onnx.NodeProto, rank: int) -> bool:
    """A ReduceMean over the last axis of a rank-`rank` tensor (batch included) that keeps that axis."""
    axes = reduce_axes(r, n)
    return axes is not None and [ax % rank for ax in axes] == [rank - 1] and attributes(n).get("keepdims", 1) == 1


def is_square(r: Reader, n: onnx.NodeProto, t: str) -> bool:
    """n squares t: Pow(t, 2), or Mul(t, t)."""
    return n.input[0] == t and ((n.op_type == "Pow" and const_scalar(r, n.input[1]) == 2)
                                or (n.op_type == "Mul" and n.input[1] == t))


def root_of_mean(r: Reader, square: onnx.NodeProto, rank: int) -> tuple[list[onnx.NodeProto], float] | None:
    """sqrt(mean(square) + eps) over the last axis, the denominator of both norms: its ReduceMean, Add and
    Sqrt nodes, and eps."""
    mean = r.only_consumer(square.output[0])
    add = mean and r.only_consumer(mean.output[0])
    if mean is None or mean.op_type != "ReduceMean" or not last_axis_mean(r, mean, rank) \
            or add is None or add.op_type != "Add":
        return None
    eps = const_scalar(r, other_input(add, mean.output[0]))
    sqrt = r.only_consumer(add.output[0])
    if not eps > 0 or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    return [mean, add, sqrt], eps


def import_rmsnorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type != "RMSNormalization":
        return rmsnorm_decomposed(r, n)
    x = r.shape(n.input[0])
    if attributes(n).get("axis", -1) % (len(x) + 1) != len(x) or len(x) not in (1, 2):
        raise NotImportable("dlc's rmsnorm normalises the last axis of a vector or a sequence")
    return one("rmsnorm", n, options={"eps": float(np.float32(attributes(n).get("epsilon", 1e-5)))},
               tensors={"gamma": r.weight(n, 1, "scale")})


def rmsnorm_decomposed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """RMSNorm as written out: the square (Pow 2, or Mul by itself), ReduceMean over the last axis kept as
    an axis, Add eps, Sqrt, then the division (Div of x: dlc's lowering below opset 23), or the
    reciprocal (Div of 1: TorchScript's rsqrt; Reciprocal: dynamo's) times x; then Mul by the scale if
    it has one. Llama's `x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight`."""
    x = n.input[0]
    shape = r.shape(x)
    if len(shape) not in (1, 2) or not is_square(r, n, x):
        return None
    root = root_of_mean(r, n, len(shape) + 1)
    sqrt = root and root[0][-1]
    after = sqrt and r.only_consumer(sqrt.output[0])
    if after is None:
        return None
    eps = root[1]
    nodes = [n, *root[0], after]
    if after.op_type == "Div" and list(after.input) == [x, sqrt.output[0]]:
        out = after.output[0]
    else:
        reciprocal = after.op_type == "Reciprocal" or (
            after.op_type == "Div" and after.input[1] == sqrt.output[0] and const_scalar(r, after.input[0]) == 1)
        times = reciprocal and r.only_consumer(after.output[0])
        if not times or times.op_type != "Mul" or other_input(times, after.output[0]) != x:
            return None
        nodes.append(times)
        out = times.output[0]
    gamma = np.ones(shape[-1], np.float32)
    scale = r.only_consumer(out)
    v = None if scale is None or scale.op_type != "Mul" else r.value(other_input(scale, out))
    if v is not None and v.size == shape[-1]:
        gamma = v.reshape(-1).astype(np.float32)
        nodes.append(scale)
        out = scale.output[0]
    return one("rmsnorm", n, options={"eps": float(np.float32(eps))}, tensors={"gamma": gamma}, output=out,
               nodes=nodes)


def import_tokens(r: Reader, n: onnx.NodeProto) -> Found | None:
    """An image read as its pixels: Reshape (N, C, H·W) then Transpose to (N, H·W, C)."""
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    after = r.only_consumer(n.output[0])
    if len(x) != 3 or y != (x[0], x[1] * x[2]) or after is None or after.op_type != "Transpose" \
            or list(attributes(after).get("perm", [])) != [0, 2, 1]:
        return None
    return one("tokens", n, output=after.output[0], nodes=[n, after])


def import_seqpool(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Step 0 or T-1 of a sequence (a Gather of a scalar index on axis 1), or its mean over the steps."""
    x = r.shape(n.input[0])
    if len(x) != 2 or n.input[0] not in r.live:
        return None
    if n.op_type == "Gather":
        index = r.value(n.input[1])
        if attributes(n).get("axis", 0) != 1 or index is None or index.ndim != 0:
            return None
        step = int(index) % x[0]
        return one("seqpool", n, options={"first": True}) if step == 0 else \
            one("seqpool", n, options={"last": True}) if step == x[0] - 1 else None
    axes = reduce_axes(r, n)
    if axes is None or [ax % 3 for ax in axes] != [1] or r.shape(n.output[0]) != x[1:]:
        return None
    return one("seqpool", n)
