"""ONNX in: a model's operators mapped to dlc's layer kinds, written as a spec with its weights.

One function per kind, one dict (IMPORT) keyed by the kind's name, as the exporter's LOWER is: each
entry names the ONNX operators its pattern starts at and returns the layer it found there (its spec
text and its tensors, already in the registry's layouts, which are ONNX's), or None when the
operator is not that kind's. Helper nodes (Constants, shape arithmetic, Identity on weights) are read
as values, never imported. An operator no kind takes is a DlcError naming it, its node and why.
Attention, a few dozen operators that every exporter lays out its own way, is found by its softmax and
then run beside dlc's kernel on a random input (import_attention), so what is not dlc's attention is
refused at its first operator rather than taken apart into other layers.

The layers form a graph that a spec writes as a chain with merges: every merge's branches start at
the nearest tensor all its inputs come through (its immediate dominator), so a skip becomes
`as LABEL` ... `add LABEL` and several branches become `add( A | B )` / `concat( A | B | … )`.
A graph that is not series-parallel in this way has no spec and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlc.compile import compile_spec
from dlc.engine.kernels import KERNELS, Ctx
from dlc.errors import DlcError
from dlc.graph import Graph
from dlc.layers import KINDS
from dlc.layers.spatial import resolve_pads, show
from dlc.onnx.analysis import live_tensors
from dlc.onnx.model import (OnnxGraph, attributes, check_weights, from_model, input_shapes, read_model, tensor_values,
                            validate)


class NotImportable(Exception):
    """The operator is this kind's, but with a setting dlc's kind cannot express; the message says which."""


class Refused(NotImportable):
    """The operators have this kind's form but compute something else (cross-attention, another mask):
    the import stops here, so that no other kind takes them apart into layers that would import wrongly."""


@dataclass
class Layer:
    kind: str
    text: str  # the spec words: `conv 64@3x3/2 pad=1 bias=off`, `bn eps=0.001`, `relu`
    inputs: list[int]  # positions of the layers it reads; 0 is the input
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # by the kind's tensor names
    node: str = ""  # the ONNX node it starts at, for messages
    tied: int | None = None  # an fc reusing an embed's table: that embed's position (`tied=LABEL`)


@dataclass
class Found:
    """What a pattern matched: the layer (None where the tensor passes through), the nodes it used and
    the tensor that carries its output."""

    layer: Layer | None
    nodes: list[onnx.NodeProto]
    output: str
    tied: str = ""  # an fc whose weight is an embedding's table: the tensor that embedding writes


class Reader:
    """The model as the patterns read it: shapes per sample, constant values, consumers of a tensor."""

    def __init__(self, g: OnnxGraph):
        self.g = g
        self.init = {t.name: t for t in g.model.graph.initializer}
        self.constants: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.checked: dict[tuple, bool] = {}  # attention layouts run against dlc's kernel: causal or not
        self.live = live_tensors(g)
        for n in g.nodes:
            self.producer.update((o, n) for o in n.output if o)
            if n.op_type == "Constant" or (n.op_type in ("Identity", "Transpose") and self.is_constant(n.input[0])):
                self.constants[n.output[0]] = n
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)

    def is_constant(self, name: str) -> bool:
        return name in self.init or name in self.constants

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value if it is an initializer or a Constant (maybe through Identity), else None."""
        if name in self.init:
            return tensor_values(self.init[name], self.g.path)
        n = self.constants.get(name)
        if n is None:
            return None
        if n.op_type in ("Identity", "Transpose"):  # a weight stored (out, in), transposed for a MatMul
            v = self.value(n.input[0])
            return v if v is None or n.op_type == "Identity" else np.transpose(v, attributes(n).get("perm"))
        a = attributes(n)
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key in ("value_float", "value_int"):
            if key in a:
                return np.array(a[key])
        for key in ("value_floats", "value_ints"):
            if key in a:
                return np.array(a[key])
        return None

    def weight(self, n: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        """Input i of n as a float32 array; a DlcError-worthy NotImportable if it is computed."""
        v = self.value(n.input[i]) if len(n.input) > i and n.input[i] else None
        if v is None:
            raise NotImportable(f"its {what} is computed by the graph, not a stored tensor")
        return v.astype(np.float32)

    def optional(self, n: onnx.NodeProto, i: int) -> bool:
        return len(n.input) > i and bool(n.input[i])

    def shape(self, name: str) -> tuple[int, ...]:
        """Per sample (the batch, axis 0, left out)."""
        t = self.g.tensors.get(name)
        if t is None or not t.known:
            raise NotImportable(f"ONNX shape inference gives no shape for {name}")
        return tuple(t.shape[1:])

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading the tensor's values, if exactly one does and it is not a graph output
        (Shape and Size read only its shape, which the import keeps)."""
        readers = [n for n in self.consumers.get(name, []) if n.op_type not in ("Shape", "Size")]
        return readers[0] if len(readers) == 1 and name not in self.g.outputs else None


Pattern = Callable[[Reader, onnx.NodeProto], Found | None]


@dataclass(frozen=True)
class Import:
    ops: tuple[str, ...]  # the ONNX operators the pattern starts at
    match: Pattern


def one(kind: str, text: str, n: onnx.NodeProto, tensors: dict | None = None, output: str | None = None,
        nodes: list | None = None) -> Found:
    return Found(Layer(kind, text, [], tensors or {}, n.name), nodes or [n], output or n.output[0])


# --- text of sizes and options ---------------------------------------------------------------------

def window_text(kernel, stride) -> str:
    k = f"{kernel[0]}x{kernel[1]}"
    if tuple(stride) == (1, 1):
        return k
    return k + (f"/{stride[0]}" if stride[0] == stride[1] else f"/{stride[0]}x{stride[1]}")


def options(**values) -> str:
    """`key=value` words for the options that differ from their default (given as (value, default))."""
    words = []
    for key, (value, default) in values.items():
        # float32 attributes (alpha=1e-4 stored as 9.99999974e-05) are their defaults if close
        same = math.isclose(value, default, rel_tol=1e-6) if isinstance(value, float) else value == default
        if not same:
            words.append(f"{key}={'on' if value is True else 'off' if value is False else f'{value:.6g}'}")
    return "".join(" " + w for w in words)


def spatial(a: dict, x: tuple[int, ...], kernel: tuple[int, int], dilation=(1, 1)) -> tuple[tuple, int | str]:
    """(stride, the pad= option) of a 2-D Conv or pool, from its strides, pads and auto_pad."""
    if len(x) != 3 or len(kernel) != 2:
        raise NotImportable(f"dlc's kinds are 2-D; this one works on {len(x) - 1} spatial axes")
    stride = tuple(a.get("strides", (1, 1)))
    auto = a.get("auto_pad", b"NOTSET").decode()
    if auto == "SAME_UPPER":
        return stride, "same"
    if auto == "VALID":
        return stride, 0
    if auto == "SAME_LOWER":
        raise NotImportable("auto_pad=SAME_LOWER puts the odd pixel first; dlc's pad=same puts it last")
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    if len(set(pads)) == 1:
        return stride, pads[0]
    if pads == resolve_pads("same", x[1:], kernel, stride, dilation):
        return stride, "same"
    raise NotImportable(f"pads {list(pads)} (top, left, bottom, right) are neither equal nor `same`, "
                        f"the only forms dlc's pad= writes")


def pad_word(pad) -> str:
    return "" if pad == 0 else f" pad={pad}"


# --- convolutions ----------------------------------------------------------------------------------

def zero_pad(r: Reader, pad: onnx.NodeProto) -> tuple[onnx.NodeProto, tuple[int, ...]] | None:
    """A Pad with zeros on H and W whose only reader is a Conv (TensorFlow's exports write `same` so):
    (the Conv, its pads with the Pad's added), or None."""
    conv = r.only_consumer(pad.output[0])
    a = attributes(pad)
    pads = a.get("pads") if "pads" in a else r.value(pad.input[1]) if r.optional(pad, 1) else None
    value = r.value(pad.input[2]) if r.optional(pad, 2) else np.zeros(1)
    if (conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0] or pads is None or len(pads) != 8
            or a.get("mode", b"constant") != b"constant" or value is None or value.any() or r.optional(pad, 3)
            or attributes(conv).get("auto_pad", b"NOTSET") != b"NOTSET"):
        return None
    pads = [int(p) for p in pads]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None  # pads the batch or the channels, or crops
    own = attributes(conv).get("pads", [0, 0, 0, 0])
    return conv, (own[0] + pads[2], own[1] + pads[3], own[2] + pads[6], own[3] + pads[7])


def conv_parts(r: Reader, n: onnx.NodeProto):
    """The Conv's weight and words, with a zero Pad before it folded into its pad=."""
    nodes = [n]
    x = r.shape(n.input[0])
    if n.op_type == "Pad":
        folded = zero_pad(r, n)
        if folded is None:
            return None
        n, pads = folded
        nodes.append(n)
        a = dict(attributes(n), pads=pads)
    else:
        a = attributes(n)
    w = r.weight(n, 1, "weight")
    kernel = tuple(w.shape[2:])
    dil = tuple(a.get("dilations", (1, 1)))
    stride, pad = spatial(a, x, kernel, dil)
    tensors = {"W": w}
    if r.optional(n, 2):
        tensors["b"] = r.weight(n, 2, "bias")
    extra = pad_word(pad) + ("" if len(set(dil)) == 1 and dil[0] == 1 else
                             f" dil={dil[0]}" if len(set(dil)) == 1 else _refuse(f"dilations {list(dil)} differ"))
    return a, w, x, kernel, stride, extra, tensors, nodes


def _refuse(reason: str):
    raise NotImportable(reason)


def import_conv(r: Reader, n: onnx.NodeProto) -> Found | None:
    parts = conv_parts(r, n)
    if parts is None:
        return None
    a, w, x, kernel, stride, extra, tensors, nodes = parts
    groups = a.get("group", 1)
    if groups > 1 and groups == x[0]:
        return None  # depthwise: dwconv's
    text = (f"conv {w.shape[0]}@{window_text(kernel, stride)}{extra}" + options(groups=(groups, 1))
            + options(bias=("b" in tensors, True)))
    return one("conv", text, n, tensors, nodes[-1].output[0], nodes)


def import_dwconv(r: Reader, n: onnx.NodeProto) -> Found | None:
    parts = conv_parts(r, n)
    if parts is None:
        return None
    a, w, x, kernel, stride, extra, tensors, nodes = parts
    if not (a.get("group", 1) > 1 and a.get("group", 1) == x[0]):
        return None
    text = (f"dwconv {window_text(kernel, stride)}{extra}" + options(mult=(w.shape[0] // x[0], 1))
            + options(bias=("b" in tensors, True)))
    return one("dwconv", text, n, tensors, nodes[-1].output[0], nodes)


def import_upconv(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    w = r.weight(n, 1, "weight")
    x = r.shape(n.input[0])
    if len(x) != 3:
        raise NotImportable(f"dlc's upconv is 2-D; this one works on {len(x) - 1} spatial axes")
    if any(a.get("output_padding", [0])) or "output_shape" in a:
        raise NotImportable("output_padding/output_shape have no upconv option")
    if a.get("auto_pad", b"NOTSET") != b"NOTSET":
        raise NotImportable(f"auto_pad={a['auto_pad'].decode()} has no upconv option")
    pads = a.get("pads", [0, 0, 0, 0])
    if len(set(pads)) != 1:
        raise NotImportable(f"pads {list(pads)} differ; upconv's pad= is one number")
    dil = tuple(a.get("dilations", (1, 1)))
    if dil != (1, 1):
        raise NotImportable(f"dilations {list(dil)}: upconv has no dil=")
    groups = a.get("group", 1)
    tensors = {"W": w}
    if r.optional(n, 2):
        tensors["b"] = r.weight(n, 2, "bias")
    text = (f"upconv {w.shape[1] * groups}@{window_text(w.shape[2:], a.get('strides', (1, 1)))}"
            + pad_word(pads[0]) + options(groups=(groups, 1), bias=("b" in tensors, True)))
    return one("upconv", text, n, tensors)


# --- pools -----------------------------------------------------------------------------------------

def pool(kind: str) -> Pattern:
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        a = attributes(n)
        kernel = tuple(a["kernel_shape"])
        x = r.shape(n.input[0])
        if len(n.output) > 1 and n.output[1]:
            raise NotImportable("its indices output has no dlc kind")
        if tuple(a.get("dilations", (1,) * len(kernel))) != (1,) * len(kernel):
            raise NotImportable("dilated pooling has no dlc kind")
        stride, pad = spatial(a, x, kernel)
        if kind == "avgpool" and a.get("count_include_pad", 0) and pad != 0:
            raise NotImportable("count_include_pad=1 divides by the padded window; dlc's avgpool divides by "
                                "the cells inside the input")
        # a pool's stride defaults to its window, so a stride of 1 is written out
        size = f"{kernel[0]}x{kernel[1]}" + ("" if stride == kernel else
                                             f"/{stride[0]}" if stride[0] == stride[1] else f"/{stride[0]}x{stride[1]}")
        return one(kind, f"{kind} {size}{pad_word(pad)}{' ceil' if a.get('ceil_mode') else ''}", n)
    return match


def vector_of(r: Reader, n: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Flatten, Reshape or Squeeze that turns n's (C, 1, 1) output into a vector, if one does."""
    after = r.only_consumer(n.output[0])
    if after is not None and after.op_type in ("Flatten", "Reshape", "Squeeze"):
        if r.shape(after.output[0]) == r.shape(n.output[0])[:1]:
            return after
    return None


def global_pool(kind: str, ops: tuple[str, str]) -> Pattern:
    """GlobalAveragePool (or ReduceMean over H and W, dynamo's form) followed by a flatten to a vector."""
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        x = r.shape(n.input[0])
        if len(x) != 3:
            return None
        if n.op_type == ops[1] and not reduces_spatial_axes(r, n):
            return None
        y = r.shape(n.output[0])
        if y == x[:1]:  # ReduceMean with keepdims=0
            return one(kind, kind, n)
        after = vector_of(r, n)
        if after is None:
            raise NotImportable(f"its (C, 1, 1) output is read as an image; dlc's {kind} gives a vector")
        return one(kind, kind, n, output=after.output[0], nodes=[n, after])
    return match


def reduce_axes(r: Reader, n: onnx.NodeProto) -> list[int] | None:
    """A Reduce operator's axes: an attribute before opset 18, an input from then on; None if computed or
    not given (every axis)."""
    axes = attributes(n).get("axes")
    if axes is None and r.optional(n, 1):
        v = r.value(n.input[1])
        axes = None if v is None else v.reshape(-1).tolist()
    return None if axes is None else list(axes)


def reduces_spatial_axes(r: Reader, n: onnx.NodeProto) -> bool:
    axes = reduce_axes(r, n)
    return axes is not None and sorted(ax % 4 for ax in axes) == [2, 3]


# --- dense -----------------------------------------------------------------------------------------

def import_fc(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Gemm on a vector; MatMul by a stored weight (plus an Add of a stored bias) on a vector or on each
    step of a sequence. A weight equal to an embedding's table is that table (`tied=`, GPT-2's output
    layer): the layer keeps W only for the case that the embedding is not imported before it."""
    x = r.shape(n.input[0])
    if len(x) != 1 and not (len(x) == 2 and n.op_type == "MatMul"):
        return None
    dense = dense_parts(r, n)
    if dense is None:
        return None
    tensors, nodes, out = dense
    units = tensors["W"].shape[0]
    found = one("fc", f"fc {units}" + options(bias=("b" in tensors, True)), n, tensors, out, nodes)
    found.tied = tied_embedding(r, tensors["W"])
    return found


def tied_embedding(r: Reader, w: np.ndarray) -> str:
    """The output of the embedding (a Gather on a stored (vocab, D) table) whose table equals w, an fc's
    (units, in) weight; "" if none does. Equal values, not the same initializer, tie them: PyTorch's two
    exporters both store a tied weight again, transposed for its MatMul, and a trained table equals
    another tensor in every element only when it is the same parameter."""
    for n in r.g.nodes:
        if n.op_type != "Gather" or n.output[0] not in r.live or attributes(n).get("axis", 0) != 0:
            continue
        t = r.g.tensors.get(n.input[0])
        if t is not None and t.shape == w.shape and r.is_constant(n.input[0]) and \
                np.array_equal(r.value(n.input[0]).astype(np.float32), w):
            return n.output[0]
    return ""


def dense_parts(r: Reader, n: onnx.NodeProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto], str] | None:
    """W (out, in) and maybe b of a Gemm, or of a MatMul by a stored (in, out) weight with maybe an Add
    of a stored bias after it; with the nodes that hold them and the tensor that carries the result."""
    if n.op_type == "Gemm":
        a = attributes(n)
        if a.get("transA", 0):
            raise NotImportable("transA=1 transposes the activations")
        w = r.weight(n, 1, "weight")
        w = w if a.get("transB", 0) else w.T
        tensors = {"W": np.ascontiguousarray(w * np.float32(a.get("alpha", 1.0)))}
        if r.optional(n, 2):
            b = r.weight(n, 2, "bias") * np.float32(a.get("beta", 1.0))
            tensors["b"] = np.broadcast_to(b.reshape(-1), (w.shape[0],)).copy()
        nodes, out = [n], n.output[0]
    else:  # MatMul by a stored (in, out) weight, maybe followed by Add of a stored bias
        w = r.value(n.input[1])
        if w is None or w.ndim != 2:
            return None
        tensors = {"W": np.ascontiguousarray(w.T.astype(np.float32))}
        nodes, out = [n], n.output[0]
        add = r.only_consumer(out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = r.value(other)
            if b is not None and b.size == w.shape[1]:
                tensors["b"] = b.reshape(-1).astype(np.float32)
                nodes, out = [n, add], add.output[0]
    return tensors, nodes, out


def import_flatten(r: Reader, n: onnx.NodeProto) -> Found | None:
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    if y == x:
        return Found(None, [n], n.output[0])  # already a vector: nothing to do
    if len(x) > 1 and y == (math.prod(x),):
        return one("flatten", "flatten", n)
    return None


def import_embed(r: Reader, n: onnx.NodeProto) -> Found | None:
    table = r.value(n.input[0])
    if table is None or attributes(n).get("axis", 0) != 0 or table.ndim != 2:
        return None
    return one("embed", f"embed {table.shape[1]} vocab={table.shape[0]}", n, {"W": table.astype(np.float32)})


# --- elementwise -----------------------------------------------------------------------------------

def unary(kind: str) -> Pattern:
    return lambda r, n: one(kind, kind, n)


def import_relu6(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("relu6", "relu6", n) if clip_bounds(r, n) == (0.0, 6.0) else None


def import_relu(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Relu" or clip_bounds(r, n) == (0.0, math.inf):
        return one("relu", "relu", n)
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
    return one("leaky", "leaky" + options(alpha=(float(attributes(n).get("alpha", 0.01)), 0.01)), n)


def import_elu(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("elu", "elu" + options(alpha=(float(attributes(n).get("alpha", 1.0)), 1.0)), n)


def import_selu(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    if not (math.isclose(a.get("alpha", 1.67326), 1.67326, rel_tol=1e-4)
            and math.isclose(a.get("gamma", 1.0507), 1.0507, rel_tol=1e-4)):
        raise NotImportable("dlc's selu has the paper's alpha and gamma only")
    return one("selu", "selu", n)


def import_gelu(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Gelu":
        if attributes(n).get("approximate", b"none") != b"none":
            raise NotImportable("dlc's gelu is the exact one, not the tanh approximation")
        return one("gelu", "gelu", n)
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
        return one("gelu", "gelu", n, output=mul.output[0], nodes=[n, erf, add, half, mul])
    last = r.only_consumer(mul.output[0])
    if last is None or last.op_type != "Mul" or not np.isclose(const_scalar(r, other_input(last, mul.output[0])), 0.5):
        return None
    return one("gelu", "gelu", n, output=last.output[0], nodes=[n, erf, add, mul, last])


def const_scalar(r: Reader, name: str) -> float:
    v = r.value(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else math.nan


def other_input(n: onnx.NodeProto, name: str) -> str:
    return n.input[1] if n.input[0] == name else n.input[0]


def import_softmax(r: Reader, n: onnx.NodeProto) -> Found | None:
    x = r.shape(n.input[0])
    axis = attributes(n).get("axis", -1 if r.g.opset >= 13 else 1) % (len(x) + 1)
    feature = 1 if len(x) != 2 else 2  # channels of an image, features of a vector, last axis of a sequence
    if axis != feature or (r.g.opset < 13 and len(x) > 1 and math.prod(x[axis:]) != x[axis - 1]):
        raise NotImportable(f"it normalises over axis {axis}; dlc's softmax runs over the features (axis {feature})")
    return one("softmax", "softmax", n)


def import_dropout(r: Reader, n: onnx.NodeProto) -> Found | None:
    if len(n.output) > 1 and n.output[1] and r.consumers.get(n.output[1]):
        raise NotImportable("its mask is read by the graph")
    a = attributes(n)
    p = float(a["ratio"]) if "ratio" in a else const_scalar(r, n.input[1]) if r.optional(n, 1) else 0.5
    if math.isnan(p):
        raise NotImportable("its ratio is computed by the graph")
    return one("dropout", f"dropout {p:g}", n)


def import_bn(r: Reader, n: onnx.NodeProto) -> Found | None:
    if len(n.output) > 1 and any(n.output[1:]):
        raise NotImportable("it is in training mode (it outputs running statistics)")
    if len(r.shape(n.input[0])) not in (1, 3):
        raise NotImportable("dlc's bn normalises images and vectors")
    a = attributes(n)
    tensors = {k: r.weight(n, i, k) for i, k in enumerate(("gamma", "beta", "mean", "var"), start=1)}
    eps, momentum = float(np.float32(a.get("epsilon", 1e-5))), 1.0 - float(a.get("momentum", 0.9))
    eps_text = "" if math.isclose(eps, 1e-5, rel_tol=1e-6) else f" eps={eps:.6g}"
    mom_text = "" if math.isclose(momentum, 0.1, rel_tol=1e-6) else f" momentum={momentum:.6g}"
    return one("bn", f"bn{eps_text}{mom_text}", n, tensors)


def import_lrn(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    text = f"lrn {a['size']}" + options(alpha=(float(a.get("alpha", 1e-4)), 1e-4),
                                         beta=(float(a.get("beta", 0.75)), 0.75), k=(float(a.get("bias", 1.0)), 1.0))
    return one("lrn", text, n)


def import_upsample(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    if a.get("mode", b"nearest") != b"nearest":
        raise NotImportable(f"mode={a['mode'].decode()}; dlc's upsample copies the nearest pixel")
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    if len(x) != 3 or y[0] != x[0] or y[1] % x[1] or y[2] % x[2] or y[1] // x[1] != y[2] // x[2]:
        raise NotImportable(f"it resizes {show(x)} to {show(y)}, not by one whole factor on both axes")
    mode = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    nearest = a.get("nearest_mode", b"round_prefer_floor").decode()
    # For a whole factor f, output pixel i reads floor(i / f) under asymmetric+floor and under the
    # half-pixel modes with rounding ((i + 0.5) / f - 0.5 rounds to floor(i / f)); not otherwise.
    if n.op_type == "Resize" and not ((mode == "asymmetric" and nearest == "floor") or
                                      (mode in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round"))):
        raise NotImportable(f"coordinate_transformation_mode={mode} with nearest_mode={nearest} does not "
                            f"repeat each pixel")
    return one("upsample", f"upsample {y[1] // x[1]}", n)


# --- recurrent -------------------------------------------------------------------------------------

def recurrent(kind: str) -> Pattern:
    """An ONNX RNN/LSTM/GRU between the exporters' transposes: (N, T, D) in, and out either every step
    (N, T, dirs*H) as `sequences` or the final state (N, dirs*H)."""
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        if n.op_type == "Transpose":  # the pattern starts at the transpose to time-major
            after = r.only_consumer(n.output[0])
            if after is None or after.op_type != kind.upper() or list(attributes(n).get("perm", [])) != [1, 0, 2]:
                return None
            n = after
        a = attributes(n)
        if a.get("layout", 0):
            raise NotImportable("layout=1 (batch first inside the operator) is not what dlc's lowering reads")
        for key in ("activations", "clip", "input_forget"):
            if a.get(key):
                raise NotImportable(f"{key}= differs from dlc's {kind}")
        if kind == "gru" and not a.get("linear_before_reset", 0):
            raise NotImportable("linear_before_reset=0; dlc's gru applies the reset gate after the product")
        for i in (4, 5, 6):
            if r.optional(n, i) and (i == 4 or not zeros(r, n.input[i])):
                raise NotImportable("sequence lengths or non-zero initial states have no dlc option")
        before = producer_node(r, n.input[0])
        if before is None or before.op_type != "Transpose" or list(attributes(before)["perm"]) != [1, 0, 2]:
            raise NotImportable("its input is not a batch-first sequence transposed to time-major")
        dirs = 2 if a.get("direction", b"forward") == b"bidirectional" else 1
        if a.get("direction", b"forward") == b"reverse":
            raise NotImportable("direction=reverse has no dlc option")
        hidden = a["hidden_size"]
        tensors = {"W": r.weight(n, 1, "W"), "R": r.weight(n, 2, "R"),
                   "B": r.weight(n, 3, "B") if r.optional(n, 3) else
                   np.zeros((dirs, 2 * r.weight(n, 1, "W").shape[1]), np.float32)}
        flags = " bidirectional" if dirs == 2 else ""
        ys = [o for o in n.output[:2]] + [""] * 2
        t = r.shape(before.input[0])[0]  # steps of the batch-first input
        chain = follow_reshapes(r, ys[0], (t, dirs * hidden)) if ys[0] else None
        if chain is not None:
            last = last_step(r, chain[-1].output[0], t)
            if last is not None and dirs == 1:  # out[:, -1]: a one-way layer's final state
                return Found(Layer(kind, f"{kind} {hidden}", [], tensors, n.name), [before, n, *chain, last],
                             last.output[0])
            return Found(Layer(kind, f"{kind} {hidden}{flags} sequences", [], tensors, n.name),
                         [before, n, *chain], chain[-1].output[0])
        chain = follow_reshapes(r, ys[1], (dirs * hidden,)) if ys[1] else None
        if chain is not None:
            return Found(Layer(kind, f"{kind} {hidden}{flags}", [], tensors, n.name), [before, n, *chain],
                         chain[-1].output[0])
        raise NotImportable("its outputs are not read as every step (N, T, dirs*H) or the final state (N, dirs*H)")
    return match


def zeros(r: Reader, name: str) -> bool:
    """Whether the tensor is all zeros: a stored one, or a zero expanded to a computed shape (the
    TorchScript exporter's initial states)."""
    v = r.value(name)
    if v is not None:
        return not v.any()
    n = producer_node(r, name)
    if n is not None and n.op_type == "Expand":
        v = r.value(n.input[0])
        return v is not None and not v.any()
    if n is not None and n.op_type == "ConstantOfShape":
        value = attributes(n).get("value")
        return value is None or not numpy_helper.to_array(value).any()
    return False


def last_step(r: Reader, name: str, t: int) -> onnx.NodeProto | None:
    """The Gather that takes step -1 (or T-1) of a batch-first sequence, if that is all that reads it."""
    n = r.only_consumer(name)
    if n is None or n.op_type != "Gather" or attributes(n).get("axis", 0) != 1:
        return None
    index = r.value(n.input[1])
    return n if index is not None and index.size == 1 and int(index.reshape(-1)[0]) in (-1, t - 1) \
        and index.ndim == 0 else None


def producer_node(r: Reader, name: str) -> onnx.NodeProto | None:
    return r.producer.get(name)


def follow_reshapes(r: Reader, name: str, target: tuple[int, ...]) -> list[onnx.NodeProto] | None:
    """The shortest chain of Transpose/Reshape/Squeeze nodes, each the only reader of the last, from
    `name` to a tensor shaped `target` per sample (batch first), or None."""
    chain, cur = [], name
    while True:
        nxt = r.only_consumer(cur)
        if nxt is None or nxt.op_type not in ("Transpose", "Reshape", "Squeeze"):
            return None
        chain.append(nxt)
        cur = nxt.output[0]
        if r.shape(cur) == target:
            return chain


# --- merges ----------------------------------------------------------------------------------------

def import_add(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("add", "add", n) if all(i in r.live for i in n.input) else None


def import_posembed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A stored (T, D) table added to a sequence."""
    if len(n.input) != 2 or n.op_type != "Add":
        return None
    x = next((i for i in n.input if i in r.live), None)
    table = next((r.value(i) for i in n.input if i not in r.live), None)
    if x is None or table is None or len(r.shape(x)) != 2 or table.size != math.prod(r.shape(x)):
        return None
    return one("posembed", "posembed", n, {"P": table.reshape(r.shape(x)).astype(np.float32)})


def import_clstoken(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Concat along the steps of a stored token (expanded to the batch) and the sequence."""
    if len(n.input) != 2 or n.input[1] not in r.live or n.input[0] in r.live:
        return None
    x = r.shape(n.input[1])
    token = producer_node(r, n.input[0])
    cls = r.value(token.input[0]) if token is not None and token.op_type == "Expand" else r.value(n.input[0])
    if len(x) != 2 or attributes(n).get("axis") not in (1, -2) or cls is None or cls.size != x[1]:
        return None
    return one("clstoken", "clstoken", n, {"cls": cls.reshape(-1).astype(np.float32)})


def import_concat(r: Reader, n: onnx.NodeProto) -> Found | None:
    if not all(i in r.live for i in n.input):
        return None
    x = r.shape(n.input[0])
    axis = attributes(n)["axis"] % (len(x) + 1)
    if axis != (2 if len(x) == 2 else 1):
        raise NotImportable(f"it joins along axis {axis}; dlc's concat joins the features")
    return one("concat", "concat", n)


def import_layernorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "ReduceMean":
        return layernorm_decomposed(r, n)
    x = r.shape(n.input[0])
    a = attributes(n)
    if a.get("axis", -1) % (len(x) + 1) != len(x) or len(x) not in (1, 2):
        raise NotImportable("dlc's layernorm normalises the last axis of a vector or a sequence")
    if len(n.output) > 1 and any(r.consumers.get(o) for o in n.output[1:] if o):
        raise NotImportable("its mean or inverse deviation is read by the graph")
    gamma = r.weight(n, 1, "scale")
    beta = r.weight(n, 2, "bias") if r.optional(n, 2) else np.zeros_like(gamma)
    return one("layernorm", "layernorm" + options(eps=(float(np.float32(a.get("epsilon", 1e-5))), 1e-5)), n,
               {"gamma": gamma, "beta": beta})


def layernorm_decomposed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """LayerNorm as the TorchScript exporter writes it below opset 17 (and dlc's own lowering): ReduceMean,
    Sub, Pow 2 (or Mul by itself), ReduceMean, Add eps, Sqrt, Div, then Mul gamma and Add beta if it
    has them, every mean over the last axis only and kept as an axis."""
    x = n.input[0]
    shape = r.shape(x)
    if len(shape) not in (1, 2) or not last_axis_mean(r, n, len(shape) + 1):
        return None
    sub = r.only_consumer(n.output[0])
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, n.output[0]]:
        return None
    centred = sub.output[0]
    readers = list({id(c): c for c in r.consumers.get(centred, [])}.values())  # Mul(d, d) reads it twice
    square = next((c for c in readers if c.input[0] == centred and (
        (c.op_type == "Pow" and const_scalar(r, c.input[1]) == 2) or (c.op_type == "Mul" and c.input[1] == centred))),
        None)
    div = next((c for c in readers if c.op_type == "Div" and c.input[0] == centred), None)
    if len(readers) != 2 or square is None or div is None:
        return None
    var = r.only_consumer(square.output[0])
    add = var and r.only_consumer(var.output[0])
    if var is None or var.op_type != "ReduceMean" or not last_axis_mean(r, var, len(shape) + 1) \
            or add is None or add.op_type != "Add":
        return None
    eps = const_scalar(r, other_input(add, var.output[0]))
    sqrt = r.only_consumer(add.output[0])
    if not eps > 0 or sqrt is None or sqrt.op_type != "Sqrt" or div.input[1] != sqrt.output[0]:
        return None
    nodes, out = [n, sub, square, var, add, sqrt, div], div.output[0]
    tensors = {"gamma": np.ones(shape[-1], np.float32), "beta": np.zeros(shape[-1], np.float32)}
    for op_type, key in (("Mul", "gamma"), ("Add", "beta")):
        after = r.only_consumer(out)
        v = None if after is None or after.op_type != op_type else r.value(other_input(after, out))
        if v is not None and v.size == shape[-1]:
            tensors[key] = v.reshape(-1).astype(np.float32)
            nodes.append(after)
            out = after.output[0]
    return one("layernorm", "layernorm" + options(eps=(float(np.float32(eps)), 1e-5)), n, tensors, out, nodes)


def last_axis_mean(r: Reader, n: onnx.NodeProto, rank: int) -> bool:
    """A ReduceMean over the last axis of a rank-`rank` tensor (batch included) that keeps that axis."""
    axes = reduce_axes(r, n)
    return axes is not None and [ax % rank for ax in axes] == [rank - 1] and attributes(n).get("keepdims", 1) == 1


def import_tokens(r: Reader, n: onnx.NodeProto) -> Found | None:
    """An image read as its pixels: Reshape (N, C, H·W) then Transpose to (N, H·W, C)."""
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    after = r.only_consumer(n.output[0])
    if len(x) != 3 or y != (x[0], x[1] * x[2]) or after is None or after.op_type != "Transpose" \
            or list(attributes(after).get("perm", [])) != [0, 2, 1]:
        return None
    return one("tokens", "tokens", n, output=after.output[0], nodes=[n, after])


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
        return one("seqpool", "seqpool first", n) if step == 0 else \
            one("seqpool", "seqpool last", n) if step == x[0] - 1 else None
    axes = reduce_axes(r, n)
    if axes is None or [ax % 3 for ax in axes] != [1] or r.shape(n.output[0]) != x[1:]:
        return None
    return one("seqpool", "seqpool", n)


# --- attention -------------------------------------------------------------------------------------

# Operators that move values without changing them: the layouts between a layer's input and its
# projections, and between the joined heads and the output projection.
LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# Between a projection and the scores (or the values): its bias, the heads split out, one part of a
# packed projection taken, the scale (TorchScript multiplies q and k by the square root of it each).
TO_HEADS = (*LAYOUT, "Add", "Gather", "Slice", "Split", "Mul", "Div", "Cast")
# Between the scores and the softmax: the scale, and a mask added or put in with Where.
TO_SOFTMAX = ("Mul", "Div", "Add", "Sub", "Where", "Cast")
# An attention's own softmax is a few dozen operators after its first one (about 25 in TorchScript's
# layout); a search that goes on longer has left the layer.
SEARCH = 200
# The model's operators and dlc's kernel, run on one random input, agree to float32 rounding (1e-6
# here); a mask, scale or head split dlc's attention does not have differs by tens of percent.
AGREE = 1e-3


def live_inputs(r: Reader, n: onnx.NodeProto) -> list[str]:
    return [i for i in n.input if i in r.live]


def stored_dense(r: Reader, n: onnx.NodeProto | None) -> bool:
    """A MatMul or Gemm by a stored 2-D weight: a projection."""
    if n is None or n.op_type not in ("MatMul", "Gemm") or len(live_inputs(r, n)) != 1 or n.input[0] not in r.live:
        return False
    w = r.value(n.input[1])
    return w is not None and w.ndim == 2


def import_attention(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Multi-head self-attention in whatever layout an exporter writes it (one packed or three
    projections, heads split by Reshape/Transpose or Gather/Slice, the scale anywhere, the causal mask
    as a constant to add or a Where): found by its softmax, the queries, keys and values traced back
    from the two products around it to their projections, and the subgraph from the input to the output
    projection evaluated once beside dlc's kernel on a random input, so that a mask, scale or head
    layout that dlc's attention does not have is refused, never imported wrongly."""
    inputs = live_inputs(r, n)
    if len(inputs) != 1 or len(r.shape(inputs[0])) != 2:
        return None
    x = inputs[0]
    softmax = nearest_softmax(r, n)
    core = softmax and attention_core(r, softmax)
    if core is None:
        return None
    scores, weighted, masked = core
    branches = {"queries": scores.input[0], "keys": scores.input[1], "values": weighted.input[1]}
    projections = {role: projection_of(r, t) for role, t in branches.items()}
    if None in projections.values():
        return None
    paths = {role: layout_path(r, p.input[0], x) for role, p in projections.items()}
    own = [role for role, path in paths.items() if path is not None]
    if not any(m is n for role in own for m in [*paths[role], projections[role]]):
        return None  # n is not where this attention starts (an fc before it, say)
    if len(own) < 3:
        other = [role for role in projections if role not in own]
        raise Refused(f"its {' and '.join(other)} are not computed from the tensor its {' and '.join(own)} are "
                      f"(cross-attention); dlc's attention attends over its own input")
    computed = next((p for p in projections.values() if not stored_dense(r, p)), None)
    if computed is not None:
        raise Refused(f"its projection `{computed.name}` multiplies by a weight the graph computes, not a stored one")
    y, out_proj = attention_output(r, weighted, x)
    region, shape_only = attention_region(r, x, y)
    t, d = r.shape(x)
    values = elements(r, scores.output[0])
    if values is None:
        raise Refused(f"ONNX shape inference gives no shape for its scores {scores.output[0]}")
    heads, rest = divmod(values, full_shape(r, x)[0] * t * t)  # the batch, t x t scores per head
    if rest or not heads or d % heads:
        raise Refused(f"its scores hold {values} values, not {t}x{t} for each of a number of heads dividing "
                      f"its {d} features")
    tensors, stored = attention_weights(r, projections, out_proj, d)
    # Layers laid out alike (every block of one model) are run once: what the run checks is the layout.
    layout = (heads, layout_key(r, region, x, stored))
    causal = r.checked.get(layout)
    if causal is None:
        causal = r.checked[layout] = attention_checked(r, region, shape_only, x, y, tensors, heads, masked)
    text = f"attention {heads}" + (" causal" if causal else "") + options(bias=("bo" in tensors, True))
    computing = [m for m in region if any(o in r.live for o in m.output)]
    return Found(Layer("attention", text, [], tensors, n.name), computing, y)


def nearest_softmax(r: Reader, n: onnx.NodeProto) -> onnx.NodeProto | None:
    """The first Softmax computed from n's output, breadth first, within SEARCH operators."""
    queue, seen = list(n.output), set()
    while queue and len(seen) < SEARCH:
        for c in r.consumers.get(queue.pop(0), []):
            if id(c) in seen or not any(o in r.live for o in c.output):
                continue
            if c.op_type == "Softmax":
                return c
            seen.add(id(c))
            queue += c.output
    return None


def attention_core(r: Reader, softmax: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto, bool] | None:
    """(the product of queries and keys, the product of the weights and the values, whether a mask
    lies between the first and the softmax) around a Softmax over the last axis, or None."""
    rank = len(full_shape(r, softmax.input[0]) or ())
    if attributes(softmax).get("axis", -1) % max(rank, 1) != rank - 1:
        return None
    found = scores_before(r, softmax.input[0])
    probs = softmax.output[0]
    after = r.only_consumer(probs)
    while after is not None and after.op_type in ("Cast", "Identity", "Dropout"):
        probs = after.output[0]
        after = r.only_consumer(probs)
    # other readers of the weights (returned with need_weights) are refused with the region
    weighted = next((c for c in r.consumers.get(probs, []) if c.op_type == "MatMul" and c.input[0] == probs
                     and len(live_inputs(r, c)) == 2), None)
    if found is None or weighted is None:
        return None
    scores, path = found
    scale_only = all(p.op_type == "Cast" or (p.op_type in ("Mul", "Div") and len(live_inputs(r, p)) == 1
                                              and elements(r, other_input(p, live_inputs(r, p)[0])) == 1)
                     for p in path)
    return scores, weighted, not scale_only


def full_shape(r: Reader, name: str) -> tuple[int | None, ...] | None:
    """The tensor's shape with the batch (1) in it, as the model's operators see it; None if unknown."""
    t = r.g.tensors.get(name)
    return t.shape if t is not None else None


def elements(r: Reader, name: str) -> int | None:
    t = r.g.tensors.get(name)
    return t.elements if t is not None else None


def scores_before(r: Reader, name: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The MatMul of two computed tensors that `name` comes from through scaling and masking, with the
    operators on the way."""
    p = producer_node(r, name)
    if p is None:
        return None
    if p.op_type == "MatMul" and len(live_inputs(r, p)) == 2:
        return p, []
    if p.op_type not in TO_SOFTMAX:
        return None
    for i in live_inputs(r, p):
        found = scores_before(r, i)
        if found is not None:
            return found[0], [p, *found[1]]
    return None


def projection_of(r: Reader, name: str) -> onnx.NodeProto | None:
    """The MatMul or Gemm that queries, keys or values come from, back through the ops that split heads."""
    p = producer_node(r, name)
    while p is not None and not (p.op_type in ("MatMul", "Gemm") and p.input[0] in r.live):
        inputs = live_inputs(r, p)
        if p.op_type not in TO_HEADS or len(inputs) != 1:
            return None
        p = producer_node(r, inputs[0])
    return p


def layout_path(r: Reader, name: str, x: str) -> list[onnx.NodeProto] | None:
    """The layout operators that make `name` from x (none if it is x), or None if it is not x so moved."""
    path = []
    while name != x:
        p = producer_node(r, name)
        if p is None or p.op_type not in LAYOUT or len(live_inputs(r, p)) != 1:
            return None
        path.append(p)
        name = live_inputs(r, p)[0]
    return path


def attention_output(r: Reader, weighted: onnx.NodeProto, x: str) -> tuple[str, onnx.NodeProto]:
    """(the output, back in the input's layout, and the output projection) after the weighted sum."""
    after = r.only_consumer(weighted.output[0])
    while after is not None and after.op_type in LAYOUT:
        after = r.only_consumer(after.output[0])
    if not stored_dense(r, after):
        raise Refused("its heads, joined, are not projected by a stored weight (dlc's attention ends with Wo)")
    _, _, y = dense_parts(r, after)
    while full_shape(r, y) != full_shape(r, x):
        nxt = r.only_consumer(y)
        if nxt is None or nxt.op_type not in LAYOUT:
            raise Refused(f"its output is not brought back to its input's layout {full_shape(r, x)}")
        y = nxt.output[0]
    return y, after


def attention_region(r: Reader, x: str, y: str) -> tuple[list[onnx.NodeProto], list[str]]:
    """The operators that compute y from x (helpers included), in the model's order, and the other
    computed tensors they read only the shape of. Reading another computed tensor's values (a second
    sequence, a padding mask from the data), or letting one of its own be read outside (the attention
    weights), is not dlc's attention."""
    downstream, queue = {x}, [x]
    while queue:
        for c in r.consumers.get(queue.pop(), []):
            new = [o for o in c.output if o in r.live and o not in downstream]
            downstream.update(new)
            queue += new
    region, shape_only, seen, stack = set(), set(), set(), [y]
    while stack:
        t = stack.pop()
        if t in seen or t == x:
            continue
        seen.add(t)
        p = producer_node(r, t)
        if t in r.live and (p is None or t not in downstream):
            raise Refused(f"it reads `{t}` besides its input: a second sequence or a mask computed from the "
                          f"data, which dlc's attention does not have")
        if p is None:
            continue
        region.add(id(p))
        if p.op_type in ("Shape", "Size") and p.input[0] in r.live and p.input[0] not in downstream:
            shape_only.add(p.input[0])
            continue
        stack += [i for i in p.input if i]
    nodes = [m for m in r.g.nodes if id(m) in region]
    for m in nodes:
        for o in m.output:
            if o == y or o not in r.live:
                continue
            outside = [c for c in r.consumers.get(o, []) if id(c) not in region and c.op_type not in ("Shape", "Size")]
            if outside or o in r.g.outputs:
                raise Refused(f"`{o}`, computed inside it, is read outside it" +
                              (f" by node `{outside[0].name}`" if outside else " as a model output") +
                              "; dlc's attention gives its output only")
    return nodes, sorted(shape_only)


def attention_weights(r: Reader, projections: dict[str, onnx.NodeProto], out_proj: onnx.NodeProto,
                      d: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """Wq, Wk, Wv, Wo (D, D) and, if any projection has one, every bias (zeros where one has none), with
    the names of the stored tensors they come from. A packed projection holds the parts it feeds in the
    order queries, keys, values, as PyTorch's in_proj_weight does (the evaluation afterwards checks that)."""
    roles = {"queries": "q", "keys": "k", "values": "v"}
    tensors: dict[str, np.ndarray] = {}
    stored: set[str] = set()
    for node in {id(p): p for p in projections.values()}.values():
        parts, nodes, _ = dense_parts(r, node)
        stored.update(i for m in nodes for i in m.input if i and i not in r.live)
        mine = [roles[role] for role, p in projections.items() if p is node]
        if parts["W"].shape != (len(mine) * d, d):
            raise Refused(f"its projection `{node.name}` is {parts['W'].shape[1]} -> {parts['W'].shape[0]}; dlc's "
                          f"attention projects {d} features to {d} for each of queries, keys and values")
        for k, w in enumerate(mine):
            tensors["W" + w] = parts["W"][k * d:(k + 1) * d]
            if "b" in parts:
                tensors["b" + w] = parts["b"][k * d:(k + 1) * d]
    out, nodes, _ = dense_parts(r, out_proj)
    stored.update(i for m in nodes for i in m.input if i and i not in r.live)
    if out["W"].shape != (d, d):
        raise Refused(f"its output projection is {out['W'].shape[1]} -> {out['W'].shape[0]}, not {d} -> {d}")
    tensors["Wo"] = out["W"]
    if "b" in out:
        tensors["bo"] = out["b"]
    if any(k.startswith("b") for k in tensors):
        tensors.update({"b" + w: tensors.get("b" + w, np.zeros(d, np.float32)) for w in "qkvo"})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, stored


def layout_key(r: Reader, nodes: list[onnx.NodeProto], x: str, stored: set[str]) -> tuple:
    """What two attentions must share for one run to check both: operators, settings and wiring, the
    shapes of their weights, and every other constant (mask, scale, shapes) by value."""
    weights = set(stored)
    stack = list(stored)
    while stack:  # and what the graph computes them from: a Transpose, Identity or Split of a stored one
        p = producer_node(r, stack.pop())
        for i in p.input if p is not None else ():
            if i and i not in weights:
                weights.add(i)
                stack.append(i)
    made: dict[str, tuple[int, int]] = {}
    key = [full_shape(r, x)]
    for k, m in enumerate(nodes):
        inputs = []
        for i in m.input:
            v = None if i in made or i == x or i in weights else r.value(i)
            inputs.append(made.get(i) or ("x" if i == x else ("weight", full_shape(r, i)) if i in weights else
                                          (v.dtype.str, v.shape, v.tobytes()) if v is not None else
                                          ("shape of", full_shape(r, i))))
        made.update((o, (k, j)) for j, o in enumerate(m.output))
        settings = tuple(sorted((a, value_key(v)) for a, v in attributes(m).items()))
        key.append((m.domain, m.op_type, tuple(inputs), settings))
    return tuple(key)


def value_key(v):
    """An attribute's value as a comparable key; a tensor by its values, not its name."""
    if isinstance(v, onnx.TensorProto):
        a = numpy_helper.to_array(v)
        return a.dtype.str, a.shape, a.tobytes()
    if isinstance(v, list):
        return tuple(value_key(e) for e in v)
    return v.SerializeToString() if hasattr(v, "SerializeToString") else v


def attention_checked(r: Reader, region: list[onnx.NodeProto], shape_only: list[str], x: str, y: str,
                      tensors: dict[str, np.ndarray], heads: int, masked: bool) -> bool:
    """Whether the attention is causal, from running its operators and dlc's kernel on one random input;
    a Refused if neither kind of dlc's attention computes what they do."""
    probe = np.random.default_rng(0).standard_normal(full_shape(r, x)).astype(np.float32)
    feeds = {x: probe}
    for name in shape_only:  # read for their shape only: zeros of that shape do
        t = r.g.tensors.get(name)
        if t is None or not t.known:
            raise Refused(f"it reads the shape of {name}, which ONNX shape inference does not give")
        feeds[name] = np.zeros(t.shape, helper.tensor_dtype_to_np_dtype(t.elem_type))
    want = run_operators(r, region, feeds, y)
    t, d = r.shape(x)
    errors = []
    for causal in (True, False) if masked else (False,):
        layer = f"attention {heads}" + (" causal" if causal else "") + options(bias=("bo" in tensors, True))
        attrs = compile_spec(f"input seq {t} of {d}\n{layer}\n").nodes[1].attrs
        got, _ = KERNELS["attention"](attrs, tensors, {}, [probe], Ctx())
        errors.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
        if errors[-1] <= AGREE:
            return causal
    computes = f"softmax(Q Kᵀ / sqrt(head_dim)) V over {heads} heads with the weights it holds"
    if masked:
        raise Refused(f"its scores are masked, and it does not compute {computes}, with the causal mask (each step "
                      f"sees itself and the steps before it) or without one, as dlc's attention does (relative "
                      f"difference {min(errors):.2g} on a random input)")
    raise Refused(f"it does not compute {computes}, as dlc's attention does (relative difference {errors[0]:.2g} "
                  f"on a random input)")


def run_operators(r: Reader, nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray], y: str) -> np.ndarray:
    """y computed by the model's own operators from the tensors fed, with onnx's reference evaluator (plain
    NumPy, beside onnx already)."""
    from onnx.reference import ReferenceEvaluator

    used = {i for m in nodes for i in m.input}
    graph = helper.make_graph(
        nodes, "part", [helper.make_tensor_value_info(k, r.g.tensors[k].elem_type, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(r.value(k), k) for k in sorted(used) if k in r.init])
    model = helper.make_model(graph, opset_imports=r.g.model.opset_import, ir_version=r.g.model.ir_version)
    try:
        return ReferenceEvaluator(model).run(None, feeds)[0]
    except Exception as e:  # the evaluator raises whatever its operator implementations do
        raise Refused(f"its operators could not be run to check them against dlc's kind: {e}")


def import_identity(r: Reader, n: onnx.NodeProto) -> Found | None:
    return Found(None, [n], n.output[0])


IMPORT: dict[str, Import] = {
    # first: attention starts at a MatMul or Gemm that fc would take alone, or a Transpose or Reshape
    "attention": Import(("Transpose", "Reshape", "MatMul", "Gemm"), import_attention),
    "conv": Import(("Conv", "Pad"), import_conv),
    "dwconv": Import(("Conv", "Pad"), import_dwconv),
    "upconv": Import(("ConvTranspose",), import_upconv),
    "maxpool": Import(("MaxPool",), pool("maxpool")),
    "avgpool": Import(("AveragePool",), pool("avgpool")),
    "gap": Import(("GlobalAveragePool", "ReduceMean"), global_pool("gap", ("GlobalAveragePool", "ReduceMean"))),
    "gmp": Import(("GlobalMaxPool", "ReduceMax"), global_pool("gmp", ("GlobalMaxPool", "ReduceMax"))),
    "fc": Import(("Gemm", "MatMul"), import_fc),
    "flatten": Import(("Flatten", "Reshape", "Squeeze"), import_flatten),
    "dropout": Import(("Dropout",), import_dropout),
    "bn": Import(("BatchNormalization",), import_bn),
    "lrn": Import(("LRN",), import_lrn),
    "relu": Import(("Relu", "Clip"), import_relu),
    "relu6": Import(("Clip",), import_relu6),
    "sigmoid": Import(("Sigmoid",), unary("sigmoid")),
    "tanh": Import(("Tanh",), unary("tanh")),
    "softmax": Import(("Softmax",), import_softmax),
    "elu": Import(("Elu",), import_elu),
    "selu": Import(("Selu",), import_selu),
    "gelu": Import(("Gelu", "Div", "Mul"), import_gelu),
    "leaky": Import(("LeakyRelu",), import_leaky),
    # An Identity operator passes its tensor on: it imports as no layer at all.
    "identity": Import(("Identity",), import_identity),
    "upsample": Import(("Resize", "Upsample"), import_upsample),
    "embed": Import(("Gather",), import_embed),
    "rnn": Import(("Transpose", "RNN"), recurrent("rnn")),
    "lstm": Import(("Transpose", "LSTM"), recurrent("lstm")),
    "gru": Import(("Transpose", "GRU"), recurrent("gru")),
    "add": Import(("Add", "Sum"), import_add),
    "concat": Import(("Concat",), import_concat),
    "layernorm": Import(("LayerNormalization", "ReduceMean"), import_layernorm),
    "posembed": Import(("Add",), import_posembed),
    "clstoken": Import(("Concat",), import_clstoken),
    "tokens": Import(("Reshape",), import_tokens),
    "seqpool": Import(("Gather", "ReduceMean"), import_seqpool),
}
# Kinds no ONNX operator pattern gives: `input` is the graph's input itself; `noise` acts in training
# only, so exporters write nothing for it.
NOT_IMPORTED = ("input", "noise")

BY_OP: dict[str, list[str]] = {}
for _kind, _entry in IMPORT.items():
    for _op in _entry.ops:
        BY_OP.setdefault(_op, []).append(_kind)


# --- the model's layers ----------------------------------------------------------------------------

@dataclass
class Imported:
    spec: str
    graph: Graph
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


def input_step(r: Reader, name: str) -> str:
    t = r.g.tensors[name]
    shape = r.shape(name)
    if not t.is_float:
        if len(shape) != 1:
            raise DlcError(f"the model's input {name} holds {len(shape)}-D integers; dlc reads token ids as "
                           f"(batch, T)")
        return f"input seq {shape[0]}"
    if len(shape) == 2:
        return f"input seq {shape[0]} of {shape[1]}"
    if len(shape) not in (1, 3):
        raise DlcError(f"the model's input {name} is {show(shape)} per sample; dlc's inputs are images C@HxW, "
                       f"vectors and sequences")
    return f"input {show(shape)}"


def read_layers(r: Reader) -> tuple[str, list[Layer], int]:
    """(the input step, the layers with the input at 0, the position of the output's layer)."""
    g = r.g
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise DlcError(f"{g.path} has {len(g.inputs)} inputs and {len(g.outputs)} outputs; a dlc spec has one of each")
    layers = [Layer("input", input_step(r, g.inputs[0]), [])]
    producer = {g.inputs[0]: 0}
    used: set[int] = set()
    for n in g.nodes:
        if id(n) in used or not any(i in producer for i in n.input if i) or not any(o in r.live for o in n.output):
            continue  # a helper (constant or shape arithmetic, Shape of a layer's output), or taken already
        found = match(r, n)
        used.update(id(m) for m in found.nodes)
        live = [i for i in n.input if i in producer]
        if found.layer is None:
            producer[found.output] = producer[live[0]]
            continue
        layer = found.layer
        if found.tied in producer and layers[producer[found.tied]].kind == "embed":
            layer.tied = producer[found.tied]
        if KINDS[layer.kind].merge:
            if len(live) != len([i for i in n.input if i]):
                raise DlcError(node_error(n, f"one operand is a stored tensor; dlc's {layer.kind} merges layer "
                                             f"outputs"))
            layer.inputs = [producer[i] for i in n.input]
        else:
            if len(live) != 1:
                raise DlcError(node_error(n, f"it reads {len(live)} layer outputs; dlc's {layer.kind} reads one"))
            layer.inputs = [producer[live[0]]]
        layers.append(layer)
        producer[found.output] = len(layers) - 1
    out = g.outputs[0]
    if out not in producer:
        raise DlcError(f"{g.path}'s output {out} does not depend on its input")
    return layers[0].text, layers, producer[out]


def match(r: Reader, n: onnx.NodeProto) -> Found:
    reasons = []
    for kind in BY_OP.get(n.op_type, []) if n.domain in ("", "ai.onnx") else []:
        try:
            found = IMPORT[kind].match(r, n)
        except Refused as e:
            raise DlcError(node_error(n, str(e)))
        except NotImportable as e:
            reasons.append(str(e))
            continue
        if found is not None:
            return found
    why = "; ".join(reasons) or (f"dlc has no layer kind for {n.op_type}" if n.op_type not in BY_OP else
                                 f"this {n.op_type} is none of the forms dlc imports ("
                                 f"{', '.join(BY_OP[n.op_type])})")
    raise DlcError(node_error(n, why))


def node_error(n: onnx.NodeProto, why: str) -> str:
    return f"cannot import operator {n.op_type} (node `{n.name or n.output[0]}`): {why}"


# --- layers to a spec ------------------------------------------------------------------------------

@dataclass
class Merge:
    layer: int
    branches: list[list]  # each a list of layer positions and Merges


def dominator_paths(layers: list[Layer]) -> list[list[int]]:
    """Each layer's dominators from the input to itself: every path from the input passes them. In a
    DAG in topological order, a layer's are the common prefix of its inputs' paths, then itself."""
    paths: list[list[int]] = []
    for i, layer in enumerate(layers):
        if not layer.inputs:
            paths.append([i])
            continue
        common = paths[layer.inputs[0]]
        for j in layer.inputs[1:]:
            other = paths[j]
            k = 0
            while k < min(len(common), len(other)) and common[k] == other[k]:
                k += 1
            common = common[:k]
        paths.append([*common, i])
    return paths


def chain(layers: list[Layer], paths: list[list[int]], start: int, end: int) -> list:
    """The steps that take layer `start`'s output to layer `end`'s, in order."""
    items = []
    cur = end
    while cur != start:
        if cur == 0:
            raise ValueError(end)
        layer = layers[cur]
        if len(layer.inputs) == 1:
            items.append(cur)
            cur = layer.inputs[0]
            continue
        fork = paths[cur][-2]
        items.append(Merge(cur, [chain(layers, paths, fork, i) for i in layer.inputs]))
        cur = fork
    return items[::-1]


def flatten_items(items: list) -> list[int]:
    out = []
    for it in items:
        if isinstance(it, Merge):
            for b in it.branches:
                out += flatten_items(b)
            out.append(it.layer)
        else:
            out.append(it)
    return out


# Suffix layers keep their input's shape (bn, activations); pools and flatten stand on their own lines.
SUFFIX = {name for name, k in KINDS.items() if k.suffixable} - {"gap", "gmp", "flatten", "identity"}


def skip_fork(layers: list[Layer], m: Merge) -> int | None:
    """The fork of an add whose other branch is the tensor itself (a residual), written `add LABEL`;
    None for merges written with branches (a skip from the input has no line to carry `as`)."""
    if layers[m.layer].kind != "add" or len(m.branches) != 2 or [] not in m.branches or m.branches == [[], []]:
        return None
    fork = layers[m.layer].inputs[m.branches.index([])]
    return fork or None


def render(layers: list[Layer], items: list, labels: dict[int, str], readers: dict[int, int],
           indent: str = "") -> list[tuple[str, int | None]]:
    """Spec lines: a layer whose kind can be a suffix joins the line of the layer it reads (when that
    output goes nowhere else); a residual is `as LABEL` ... `add LABEL`, other merges `add( A | B )`.
    Each line comes with the layer whose output it ends at (None for a merge's opening line)."""
    lines: list[list] = []  # [text, last layer on the line, may take suffixes]
    for it in items:
        if isinstance(it, Merge):
            kind = layers[it.layer].kind
            fork = skip_fork(layers, it)
            if fork is not None:
                body = next(b for b in it.branches if b)
                lines += [[t, last, False] for t, last in render(layers, body, labels, readers, indent)]
                lines.append([f"{indent}{kind} {labels[fork]}", it.layer, False])
                continue
            lines.append([f"{indent}{kind}(", None, False])
            for k, b in enumerate(it.branches):
                inner = render(layers, b, labels, readers, indent + "    ") if b else [(f"{indent}    identity", None)]
                if k:
                    inner[0] = (f"{indent}  | {inner[0][0].lstrip()}", inner[0][1])
                lines += [[t, last, False] for t, last in inner]
            lines.append([f"{indent})", it.layer, False])
            continue
        layer = layers[it]
        src = layer.inputs[0]
        bare = all("=" in w for w in layer.text.split()[1:])  # a suffix takes options, never a size
        if (lines and layer.kind in SUFFIX and bare and lines[-1][2] and lines[-1][1] == src and readers[src] == 1
                and src not in labels):
            lines[-1][0] += f" {layer.text}"
            lines[-1][1] = it
        elif layer.tied is not None:  # `fc N tied=LABEL ...`: the size first, as the language's examples write it
            kind, size, *rest = layer.text.split()
            lines.append([" ".join([f"{indent}{kind}", size, f"tied={labels[layer.tied]}", *rest]), it, True])
        else:
            lines.append([f"{indent}{layer.text}", it, True])
    return [(text + (f" as {labels[last]}" if last in labels else ""), last) for text, last, _ in lines]


def labels_for(layers: list[Layer], items: list) -> dict[int, str]:
    """A label for each fork that an `add LABEL` reads back, numbered in order, and for each embed whose
    table a tied fc reuses (`tok`, as GPT-2's spec names it; numbered if there are several)."""
    forks: list[int] = []

    def visit(its):
        for it in its:
            if isinstance(it, Merge):
                for b in it.branches:
                    visit(b)
                fork = skip_fork(layers, it)
                if fork is not None:
                    forks.append(fork)
    visit(items)
    labels = {f: f"skip{k}" for k, f in enumerate(sorted(set(forks)), start=1)}
    tables = sorted({layer.tied for layer in layers if layer.tied is not None} - set(labels))
    labels.update((t, "tok" if len(tables) == 1 else f"tok{k}") for k, t in enumerate(tables, start=1))
    return labels


def to_spec(layers: list[Layer], output: int, source: str) -> tuple[list[tuple[str, int | None]], list[int]]:
    """The spec's lines after the input (each with the layer it ends at), and the layers in the order
    the compiler makes their nodes."""
    paths = dominator_paths(layers)
    try:
        items = chain(layers, paths, 0, output)
    except ValueError:
        raise DlcError(f"{source}: the model's layers do not form a chain of merges that a spec can write")
    order = flatten_items(items)
    if len(order) != len(set(order)):
        raise DlcError(f"{source}: a layer's output is read by merges at different levels, which a spec's "
                       f"nested add( … )/concat( … ) cannot write")
    readers: dict[int, int] = {}
    for layer in layers:
        for i in layer.inputs:
            readers[i] = readers.get(i, 0) + 1
    return render(layers, items, labels_for(layers, items), readers), order


def bias_defaults(layers: list[Layer]) -> list[str]:
    """`default conv bias=off` (and dwconv) where most of those layers have no bias, as a network with
    bn after every conv does; the few with one then say bias=on."""
    lines = []
    for kind in ("conv", "dwconv"):
        mine = [layer for layer in layers if layer.kind == kind]
        if sum(layer.text.endswith(" bias=off") for layer in mine) * 2 <= len(mine):
            continue
        lines.append(f"default {kind} bias=off")
        for layer in mine:
            layer.text = layer.text.removesuffix(" bias=off") if layer.text.endswith(" bias=off") else \
                layer.text + " bias=on"
    return lines


def comment(text: str) -> str:
    """`# text`, kept one comment line whatever the model's file says: a producer name or file name
    holding a line break would otherwise end the comment and put its own statements (a `train` line)
    into the spec. Every character that is not printable is escaped (`\\n`): the line breaks of the
    grammar (\\n) and of dlc's spec reader (\\r too), the others str.splitlines breaks at (\\v, \\f,
    \\x1c-\\x1e, \\x85, \\u2028, \\u2029), which editors show as new lines, and control characters,
    NUL (a spec with one is refused as not text) and undecodable bytes of a file name."""
    return "# " + "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def import_onnx(path: str, shapes: dict | None = None) -> Imported:
    """The spec and the checkpoint tensors of the model at `path`."""
    model = read_model(path)
    check_weights(model, path)
    validate(model, path, input_shapes(model, shapes or {}))
    g = from_model(model, path, shapes)
    r = Reader(g)
    _, layers, output = read_layers(r)
    producer = " ".join(filter(None, [model.producer_name, model.producer_version])) or "unknown producer"
    head = comment(f"imported from {Path(path).name} ({producer}, opset {g.opset}) by dlc import") + "\n"
    defaults = bias_defaults(layers)
    lines, order = to_spec(layers, output, path)
    lines = [(t, None) for t in defaults] + lines
    graph = compile_spec("\n".join([layers[0].text, *(t for t, _ in lines)]) + "\n", file=path)
    nodes = graph.nodes[1:]
    if [n.kind for n in nodes] != [layers[i].kind for i in order]:
        raise DlcError(f"{path}: the written spec compiles to other layers than the model's (an importer bug)")
    # each line's output shape as a comment, as the language's examples write them
    shape_of = {i: node.out_shape for node, i in zip(nodes, order)}
    width = max(len(t) for t, _ in [(layers[0].text, 0), *lines]) + 2
    text = "\n".join(t if last is None else f"{t:<{width}}{comment(show(shape_of[last]))}"
                     for t, last in [(layers[0].text, None), *lines]) + "\n"
    graph = compile_spec(head + text, file=path)
    params, state = {}, {}
    for node, i in zip(nodes, order):
        kind = KINDS[node.kind]
        shapes_in = [graph.node(x).out_shape for x in node.inputs]
        want = {**kind.params(node.attrs, shapes_in), **kind.state(node.attrs, shapes_in)}
        trainable = set(kind.params(node.attrs, shapes_in))
        for key, shape in want.items():
            arr = layers[i].tensors[key]
            if tuple(arr.shape) != tuple(shape):
                raise DlcError(f"{path}: node {layers[i].node} gives {key} shaped {arr.shape}; "
                               f"{node.name} needs {shape}")
            (params if key in trainable else state)[f"{node.name}.{key}"] = np.ascontiguousarray(arr, np.float32)
    return Imported(head + text, graph, params, state)
