"""A quantized model's float twin: the same network on float tensors, with its stored weights dequantized
(w = (q - zero_point) * scale), which the patterns then read as they read any float model.

onnxruntime's quantizer writes three forms, and each is read back here:
- QDQ: DequantizeLinear on stored weights (int8, uint8, int4; per tensor, per channel along `axis`, or in
  blocks of `block_size`), and QuantizeLinear -> DequantizeLinear pairs on activations, read as the float
  tensor they round;
- QOperator: QLinearConv, QLinearMatMul, QGemm, QLinearAdd and friends, whose float operator takes the
  float tensors their quantized inputs stand for, with QuantizeLinear and DequantizeLinear at the edges;
- dynamic: DynamicQuantizeLinear before ConvInteger or MatMulInteger, whose integer output onnxruntime
  casts and multiplies by the activation's and the weight's scales: one float Conv or MatMul with the
  dequantized weight computes that product;
- weight-only: com.microsoft's MatMulNBits (4-bit language models), a MatMul by its dequantized weight.

The twin computes what the quantized model approximates: its outputs differ from onnxruntime's on the
quantized file by the activations' rounding only, since the weights are exactly the file's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlc.errors import DlcError
from dlc.onnx.importing.reader import node_error, other_input
from dlc.onnx.model import attributes, tensor_values


@dataclass(frozen=True)
class QLinear:
    """A QOperator operator's float form: its float operator, the (data, scale, zero point) input positions,
    and the int32 bias whose scale is the product of the two data inputs' scales (zero point 0)."""

    op: str
    data: tuple[tuple[int, int, int], ...]
    out: tuple[int, int]  # the output's scale and zero point
    bias: int | None = None


QUANTIZED_ATTRIBUTES = ("channels_last", "opset")  # the contrib operators' own, which the float ones lack


ONE = ((0, 1, 2),)
TWO = ((0, 1, 2), (3, 4, 5))
QLINEAR = {
    "QLinearConv": QLinear("Conv", TWO, (6, 7), bias=8),
    "QLinearMatMul": QLinear("MatMul", TWO, (6, 7)),
    "QGemm": QLinear("Gemm", TWO, (7, 8), bias=6),
    "QLinearAdd": QLinear("Add", TWO, (6, 7)),
    "QLinearMul": QLinear("Mul", TWO, (6, 7)),
    "QLinearGlobalAveragePool": QLinear("GlobalAveragePool", ONE, (3, 4)),
    "QLinearAveragePool": QLinear("AveragePool", ONE, (3, 4)),
    "QLinearSoftmax": QLinear("Softmax", ONE, (3, 4)),
    "QLinearLeakyRelu": QLinear("LeakyRelu", ONE, (3, 4)),
    "QLinearSigmoid": QLinear("Sigmoid", ONE, (3, 4)),
}

# Operators that move or select values without arithmetic: on quantized codes they give the codes of the
# same operator on the float values (onnxruntime runs them on int8 tensors between QLinear operators).
MOVES = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "GlobalMaxPool", "Gather",
         "Slice", "Split", "Resize", "DepthToSpace", "SpaceToDepth", "Expand", "Tile"}

# Operators whose output is never negative, and those whose output is not when no input is (a Relu after
# them would change nothing, so none is added where their output's quantization clips below 0)
NON_NEGATIVE = {"Relu", "Softmax", "Sigmoid"}
KEEP_SIGN = {"AveragePool", "GlobalAveragePool", "Concat", "Add", "Max"}

FOUR_BIT_RANGE = {"int4": (-8, 7), "uint4": (0, 15)}  # numpy's iinfo does not know onnx's 4-bit types
RELU6_TOP = 6.0

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 *QLINEAR, "QLinearConcat", "MatMulNBits"}


@dataclass
class Dequantized:
    """What the twin read as float: the stored types of the weights it dequantized, with their value counts,
    how their scales were laid out, and the forms of quantization the file used."""

    values: dict[str, int] = field(default_factory=dict)  # "int8" -> values dequantized from it
    tensors: int = 0
    layouts: set[str] = field(default_factory=set)  # "per tensor", "per channel", "blocks of 32"
    forms: set[str] = field(default_factory=set)  # "QDQ", "QOperator", "dynamic"

    def line(self) -> str:
        kinds = " and ".join(sorted(self.values, key=lambda k: -self.values[k]))
        # a QOperator file quantizes at its edges with QuantizeLinear too: that is not the QDQ form
        forms = self.forms - {"QDQ"} if len(self.forms) > 1 else self.forms
        plural = "s" if self.tensors != 1 else ""
        rounding = (f"; activations' {' and '.join(sorted(forms))} quantization read as float: outputs differ "
                    f"from the quantized file's by its rounding" if forms else "")
        return (f"weights dequantized from {kinds} (w = (q - zero_point) * scale, {', '.join(sorted(self.layouts))}; "
                f"{sum(self.values.values()):,} values in {self.tensors} tensor{plural}){rounding}")


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 1,
               block: int = 0) -> np.ndarray:
    """(q - zero_point) * scale as ONNX's DequantizeLinear computes it: a scale per tensor, per slice along
    `axis` (1-D scale), or per block of `block` values along it (a scale of q's rank)."""
    values = q.astype(np.float32)
    scale = scale.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.size > 1 or block:
        axis = axis % q.ndim
        if block:
            scale, zero = (np.repeat(v, block, axis=axis).take(range(q.shape[axis]), axis=axis)
                           for v in (scale, zero))
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


class FloatTwin:
    """The rewrite, node by node in the model's order: `alias` maps a quantized tensor (or a dropped node's
    output) to the float tensor it stands for, `stored` holds the float tensors it adds (the dequantized
    weights, relu6's bounds), `codes` names the tensors that hold quantized codes in the file (a float
    operator reading one is refused)."""

    def __init__(self, model: onnx.ModelProto, path: str):
        self.model, self.path = model, path
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        g = model.graph
        self.init = {t.name: t for t in g.initializer}
        self.constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.alias: dict[str, str] = {}
        self.codes: set[str] = set()
        self.stored: dict[str, np.ndarray] = {}
        self.taken: set[int] = set()  # nodes a rewrite has used up (the Cast and Muls after ConvInteger)
        self.non_negative: set[str] = set()  # float tensors of the twin that cannot be negative
        self.report = Dequantized()

    def is_stored(self, name: str) -> bool:
        return name in self.init or name in self.constants or name in self.stored

    def value(self, name: str) -> np.ndarray | None:
        if name in self.stored:
            return self.stored[name]
        if name in self.init:
            return tensor_values(self.init[name], self.path)
        a = attributes(self.constants[name]) if name in self.constants else {}
        return numpy_helper.to_array(a["value"]) if "value" in a else None

    def float_of(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def weight(self, n: onnx.NodeProto, q: str, scale: str, zero: str, axis: int = 1, block: int = 0) -> str:
        """The stored tensor q dequantized, as a new float initializer; its name."""
        name = f"{q}/dequantized"
        if name in self.stored:
            return name
        values, s = self.value(q), self.value(scale)
        z = self.value(zero) if zero else None
        if values is None or s is None or (zero and z is None):
            raise DlcError(node_error(n, f"the scale or zero point of its stored input {q} is computed by the graph"))
        if values.dtype.kind == "f":
            raise DlcError(node_error(n, f"its stored input {q} is {values.dtype.name}, not quantized"))
        self.stored[name] = dequantize(values, s, z, axis, block)
        kind = values.dtype.name
        self.report.values[kind] = self.report.values.get(kind, 0) + values.size
        self.report.tensors += 1
        self.report.layouts.add(f"blocks of {block}" if block else "per channel" if s.size > 1 else "per tensor")
        return name

    def data(self, n: onnx.NodeProto, x: str, scale: str, zero: str, axis: int = 1) -> str:
        """The float tensor a quantized operand stands for: a stored one dequantized, or the activation."""
        return self.weight(n, x, scale, zero, axis) if self.is_stored(x) else self.float_of(x)

    def rectifier(self, x: str, out: str, name: str, scale: str, zero: str) -> list[onnx.NodeProto]:
        """The activation a quantization of x into `out` stands for: none, or, when its range starts at 0
        (onnxruntime's quantizer drops a Relu or a Clip whose output it quantizes so: the rounding does
        their work), a Relu, or relu6's Clip when the range ends at 6. A Clip at 6 whose calibration never
        reached 6 leaves no trace in the file: it is read as a Relu."""
        z, s = (self.value(zero) if zero else None), self.value(scale)
        if z is None or s is None or z.size != 1 or s.size != 1 or x in self.non_negative:
            return []
        low, high = FOUR_BIT_RANGE.get(z.dtype.name, (np.iinfo(z.dtype).min, np.iinfo(z.dtype).max)
                                       if z.dtype.kind in "iu" else (None, None))
        zero_point, step = int(z.reshape(-1)[0]), float(s.reshape(-1)[0])
        if low is None or zero_point != low:
            return []
        if abs((high - zero_point) * step - RELU6_TOP) <= step / 2:
            if self.opset < 11:  # Clip's bounds were attributes then
                return [helper.make_node("Clip", [x], [out], name=name, min=0.0, max=RELU6_TOP)]
            bounds = [f"{out}/relu6_{k}" for k in ("min", "max")]
            self.stored.update(zip(bounds, (np.array(0, np.float32), np.array(RELU6_TOP, np.float32))))
            return [helper.make_node("Clip", [x, *bounds], [out], name=name)]
        return [helper.make_node("Relu", [x], [out], name=name)]

    def quantized(self, n: onnx.NodeProto, x: str, out: str, scale: str, zero: str) -> list[onnx.NodeProto]:
        """x quantized into `out`: out stands for x itself, or for the activation its range says (rectifier)."""
        self.codes.add(out)
        x = self.float_of(x)
        # a stored tensor's range is its own: its quantization clips none of its values
        activation = [] if self.is_stored(x) else self.rectifier(x, out, n.name, scale, zero)
        if not activation:
            self.alias[out] = x
        return activation

    def rewrite(self, n: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The node's float form: nothing (its output aliased), the node itself on float inputs, or its
        float operator."""
        op, a = n.op_type, attributes(n)
        if op == "QuantizeLinear":
            self.report.forms.add("QDQ")
            return self.quantized(n, n.input[0], n.output[0], n.input[1], optional(n, 2))
        if op == "Identity":  # TorchScript's copy of a weight it stores once: the weight itself
            self.alias[n.output[0]] = self.float_of(n.input[0])
            if n.input[0] in self.codes:
                self.codes.add(n.output[0])
            return []
        if op == "DynamicQuantizeLinear":  # its range always holds the tensor's own minimum: nothing clips
            self.report.forms.add("dynamic")
            self.codes.add(n.output[0])
            self.alias[n.output[0]] = self.float_of(n.input[0])
            return []
        if op == "DequantizeLinear":
            x = n.input[0]
            if self.is_stored(x):
                self.alias[n.output[0]] = self.weight(n, x, n.input[1], optional(n, 2), a.get("axis", 1),
                                                      a.get("block_size", 0))
            elif x in self.codes:
                self.alias[n.output[0]] = self.float_of(x)
            else:
                raise DlcError(node_error(n, f"its input {x} is not quantized by the graph (a QuantizeLinear or a "
                                             f"quantized operator); dlc imports float inputs"))
            return []
        if op in ("ConvInteger", "MatMulInteger"):
            return [self.integer_product(n)]
        if op == "MatMulNBits":
            return self.nbits_product(n)
        if op in QLINEAR:
            return self.qlinear(n, QLINEAR[op])
        if op == "QLinearConcat":
            self.report.forms.add("QOperator")
            triples = [n.input[i:i + 3] for i in range(2, len(n.input), 3)]
            return self.float_op(n, "Concat", [self.data(n, x, s, z) for x, s, z in triples], n.input[0],
                                 n.input[1])
        reads_codes = [i for i in n.input if i in self.codes]
        if op in MOVES and n.input and self.is_stored(n.input[0]) and not reads_codes:
            scale, zero = self.read_as(n.output[0])
            if scale:  # a stored quantized table read by its codes, as the QOperator form's embedding Gather
                self.alias[n.input[0]] = self.weight(n, n.input[0], scale, zero, axis=0)
                self.codes.update(o for o in n.output if o)
        elif reads_codes and op in MOVES and n.input[0] in self.codes:
            self.codes.update(o for o in n.output if o)
        elif reads_codes:
            why = ("dlc reads no float form of this quantized operator" if n.domain not in ("", "ai.onnx") else
                   f"it computes on the quantized codes of {reads_codes[0]}; dlc reads no float form of that")
            raise DlcError(node_error(n, why))
        twin = onnx.NodeProto()
        twin.CopyFrom(n)
        twin.input[:] = [self.float_of(i) if i else i for i in n.input]
        return [twin]

    def read_as(self, name: str) -> tuple[str, str]:
        """The scale and zero point a QOperator operator or a DequantizeLinear reads a tensor with."""
        for n in self.consumers.get(name, []):
            if n.op_type == "DequantizeLinear":
                return n.input[1], optional(n, 2)
            form = QLINEAR.get(n.op_type)
            for x, s, z in form.data if form else ():
                if optional(n, x) == name:
                    return n.input[s], optional(n, z)
        return "", ""

    def qlinear(self, n: onnx.NodeProto, form: QLinear) -> list[onnx.NodeProto]:
        self.report.forms.add("QOperator")
        a = attributes(n)
        if a.get("channels_last"):
            raise DlcError(node_error(n, "its channels come last; dlc's images are channels first"))
        if n.op_type == "QLinearSoftmax" and (a.get("opset", 13) < 13) != (self.opset < 13):
            raise DlcError(node_error(n, f"it computes Softmax of opset {a.get('opset')}, whose axis means "
                                         f"another thing in the model's opset {self.opset}"))
        if n.op_type == "QGemm" and a.get("transA"):
            raise DlcError(node_error(n, "its first operand is transposed"))
        # a conv's weights have a scale per output channel, axis 0; a MatMul's per column, its last axis
        axis = 0 if n.op_type == "QLinearConv" or (n.op_type == "QGemm" and a.get("transB")) else -1
        inputs = [self.data(n, n.input[x], n.input[s], optional(n, z), axis) for x, s, z in form.data]
        if form.bias is not None and optional(n, form.bias):
            (_, s1, _), (_, s2, _) = form.data
            scale = f"{n.output[0]}/bias_scale"
            va, vb = self.value(n.input[s1]), self.value(n.input[s2])
            if va is None or vb is None:
                raise DlcError(node_error(n, "its scales are computed by the graph"))
            self.init[scale] = numpy_helper.from_array((va.astype(np.float32) * vb.astype(np.float32)).reshape(-1),
                                                       scale)
            inputs.append(self.weight(n, n.input[form.bias], scale, "", axis=0))
        return self.float_op(n, form.op, inputs, optional(n, form.out[0]), optional(n, form.out[1]))

    def float_op(self, n: onnx.NodeProto, op: str, inputs: list[str], scale: str, zero: str) -> list[onnx.NodeProto]:
        """The float operator on float inputs, writing the quantized output's name (the activation its
        range says after it, see rectifier); QGemm without an output scale writes float already."""
        out = n.output[0]
        twin = self.signs(helper.make_node(op, inputs, [f"{out}/float"], name=n.name))
        twin.attribute.extend(x for x in n.attribute if x.name not in QUANTIZED_ATTRIBUTES)
        activation = self.rectifier(twin.output[0], out, f"{n.name}/clip", scale, zero) if scale else []
        if scale:
            self.codes.add(out)
        if not activation:
            twin.output[0] = out
        return [twin, *activation]

    def integer_product(self, n: onnx.NodeProto) -> onnx.NodeProto:
        """ConvInteger or MatMulInteger as onnxruntime's dynamic quantizer writes it: Cast to float, then
        Mul by Mul(activation scale, weight scale); one float product of the dequantized weight replaces
        the three."""
        self.report.forms.add("dynamic")
        cast = self.only_reader(n.output[0], "Cast")
        rescale = self.only_reader(cast.output[0], "Mul") if cast is not None else None
        scales = self.producer.get(other_input(rescale, cast.output[0])) if rescale is not None else None
        weight_scale = next((i for i in scales.input if self.is_stored(i)), None) \
            if scales is not None and scales.op_type == "Mul" else None
        if weight_scale is None:
            raise DlcError(node_error(n, "its integer output is not rescaled by the activation's and the weight's "
                                    "scales as onnxruntime's dynamic quantizer writes it"))
        axis = 0 if n.op_type == "ConvInteger" else -1
        inputs = [self.float_of(n.input[0]), self.weight(n, n.input[1], weight_scale, optional(n, 3), axis)]
        self.taken.update(id(m) for m in (cast, rescale, scales))
        out = rescale.output[0]
        bias = self.only_reader(out, "Add") if n.op_type == "ConvInteger" else None
        made = self.producer.get(other_input(bias, out)) if bias is not None else None
        if made is not None and made.op_type == "Reshape" and made.input[0] in self.init:
            # the conv's bias, added after the rescale as a (1, C, 1, 1) tensor: Conv's own input again
            inputs.append(made.input[0])
            self.taken.add(id(bias))
            out = bias.output[0]
        twin = helper.make_node("Conv" if n.op_type == "ConvInteger" else "MatMul", inputs, [out], name=n.name)
        twin.attribute.extend(n.attribute)
        return twin

    def nbits_product(self, n: onnx.NodeProto) -> list[onnx.NodeProto]:
        """com.microsoft's MatMulNBits, the weight-only form of 4-bit language models: B holds each output
        column's K values in blocks, `bits` to a byte's bits from the lowest up, with a scale per block and a
        zero point per block (packed the same way; 2^(bits-1) when absent). Read as MatMul by the
        dequantized (K, N) weight, then Add of its bias."""
        a = attributes(n)
        k, cols, bits, block = a["K"], a["N"], a.get("bits", 4), a["block_size"]
        if optional(n, 4):
            raise DlcError(node_error(n, "it reorders its weight's rows (g_idx); dlc reads blocks in order"))
        packed, scales = self.value(n.input[1]), self.value(optional(n, 2))
        zeros = self.value(optional(n, 3)) if optional(n, 3) else None
        if packed is None or scales is None or (optional(n, 3) and zeros is None):
            raise DlcError(node_error(n, "its weight, scales or zero points are computed by the graph"))
        if zeros is not None and zeros.dtype != np.uint8:
            raise DlcError(node_error(n, f"its zero points are {zeros.dtype.name}; dlc reads packed uint8 ones"))
        blocks = -(-k // block)
        q = unpack(packed.reshape(cols, -1), bits)[:, :blocks * block]
        zero = unpack(zeros.reshape(cols, -1), bits)[:, :blocks] if zeros is not None else \
            np.full((cols, blocks), 2 ** (bits - 1))
        w = dequantize(q, scales.reshape(cols, blocks), zero, axis=1, block=block)[:, :k].T
        name = f"{n.input[1]}/dequantized"
        self.stored[name] = np.ascontiguousarray(w)
        self.report.values[f"uint{bits}"] = self.report.values.get(f"uint{bits}", 0) + k * cols
        self.report.tensors += 1
        self.report.layouts.add(f"blocks of {block}")
        x, out = self.float_of(n.input[0]), n.output[0]
        if not optional(n, 5):
            return [helper.make_node("MatMul", [x, name], [out], name=n.name)]
        return [helper.make_node("MatMul", [x, name], [f"{out}/product"], name=n.name),
                helper.make_node("Add", [f"{out}/product", n.input[5]], [out], name=f"{n.name}/bias")]

    def only_reader(self, name: str, op: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op else None

    def signs(self, n: onnx.NodeProto) -> onnx.NodeProto:
        """n, its outputs noted as non-negative when they are."""
        def non_negative(name: str) -> bool:
            v = self.value(name) if self.is_stored(name) else None
            return name in self.non_negative or (v is not None and v.dtype.kind in "fiu" and bool((v >= 0).all()))

        clip_min = attributes(n).get("min", -1.0) if len(n.input) < 2 else n.input[1]
        clipped = n.op_type == "Clip" and (non_negative(clip_min) if isinstance(clip_min, str) else clip_min >= 0)
        if n.op_type in NON_NEGATIVE or clipped or (n.op_type in MOVES and n.input[0] in self.non_negative) or \
                (n.op_type in KEEP_SIGN and all(non_negative(i) for i in n.input if i)):
            self.non_negative.update(n.output)
        return n

    def twin(self) -> onnx.ModelProto:
        g = self.model.graph
        nodes = [self.signs(m) for n in g.node if id(n) not in self.taken for m in self.rewrite(n)]
        for o in g.output:
            if o.name in self.codes:
                raise DlcError(f"{self.path}'s output {o.name} holds quantized values; dlc imports float outputs")
            if self.float_of(o.name) != o.name:
                nodes.append(helper.make_node("Identity", [self.float_of(o.name)], [o.name]))
        read = {i for n in nodes for i in n.input}
        weights = [t for name, t in self.init.items() if name in read and name not in self.stored]
        weights += [numpy_helper.from_array(v, k) for k, v in self.stored.items() if k in read]
        inputs = [v for v in g.input if v.name not in self.init]
        twin = helper.make_graph(nodes, g.name, inputs, g.output, initializer=weights)
        return helper.make_model(twin, opset_imports=self.model.opset_import, ir_version=self.model.ir_version,
                                 producer_name=self.model.producer_name, producer_version=self.model.producer_version)


def float_twin(model: onnx.ModelProto, path: str) -> tuple[onnx.ModelProto, Dequantized | None]:
    """The model with its quantization read as float, and what was dequantized; the model itself and None
    when it holds no quantized operator."""
    if not is_quantized(model):
        return model, None
    rewrite = FloatTwin(model, path)
    return rewrite.twin(), rewrite.report


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """The `bits`-wide unsigned values packed along the last axis of uint8 bytes, lowest bits first."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8(2 ** bits - 1)
    return values.reshape(*packed.shape[:-1], -1)


def optional(n: onnx.NodeProto, i: int) -> str:
    return n.input[i] if len(n.input) > i else ""

