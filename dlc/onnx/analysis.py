"""The analysis of an ONNX model in dlc's terms: its nodes grouped into layers, each layer counted.

A layer is one operator that computes on the model's data, together with the helper nodes that only
feed it (Constants, Shape arithmetic, casts of weights). In a model dlc exported, a layer is one node
of the spec: the lowering names its helper nodes "<layer>/<what>" and writes the step's text in the
doc string, so the analysis gives exactly the spec's figures and rows. Layers fold into table rows as
suffix layers do: a bn or activation reading the previous layer's output joins its row.

Activations are the tensors that leave a layer (read by another layer, or a graph output), as a spec
counts each layer's output and not the intermediates inside it. Parameters are the stored float tensors
of rank >= 1 (initializers, and the Constants, ConstantOfShape fills, Identities, Casts and Reshapes old
writers make weights with: dlc.onnx.model.stored_weights), each counted once, at the first layer that
reads it; BatchNormalization's mean and variance are non-trainable; attention's stored tables and masks
(attention_tables) are constants, counted apart (docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from math import ceil, prod

import onnx

from dlc.analysis import Analysis, NodeStats, ReceptiveField, receptive_field, totals
from dlc.graph import Graph, Node
from dlc.layers import Signal
from dlc.onnx.count import Cost, NotCounted, Op, count
from dlc.onnx.model import (CHANNEL_OPS, Initializer, OnnxGraph, OnnxValue, attributes, dtype_name, element_bits,
                            stored_value)

# Ops shown in the row of the layer they follow, like a spec's suffix layers.
SUFFIX_OPS = {"BatchNormalization", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu",
              "Gelu", "PRelu", "HardSigmoid", "HardSwish", "Swish", "Softplus", "Softsign", "Mish", "Dropout",
              "Identity"}
AFFINE_OPS = {"Add", "Sub", "Mul", "Div"}
NEVER_LIVE = {"Shape", "Size"}  # they read the data's shape, not its values
# Inputs read for their element type only: CastLike's target (dynamo's unoptimised graphs cast the
# attention scale, computed from the queries' shape, like the queries).
TYPE_ONLY_INPUTS = {"CastLike": (1,)}
# The --dtype name of a stored float type; a model whose weights are in another type, or several, is
# reported as stored, tensor by tensor ("mixed").
STORED_DTYPES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
NON_TRAINABLE_INPUTS = {"BatchNormalization": (3, 4)}  # running mean and variance
# A recurrent op's sequence lengths and initial states are inputs given as constants, not weights
# (given_states).
CONSTANT_INPUTS = {"LSTM": (4, 5, 6), "GRU": (4, 5), "RNN": (4, 5)}

# Attention's stored tables and masks (attention_tables): the elementwise operators through which such a
# table meets the activations; the operators between the scores' product and the Softmax (scale, mask);
# and those between the queries' and keys' projections and that product (heads split, rotary positions:
# x * cos + rotate_half(x) * sin); the opset-23 operators that take the tables as inputs.
TABLE_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Max", "Min"}
SCORE_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape"}  # Reshape: Swin's scores seen by window
QUERY_KEY_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Slice", "Split",
                 "Gather", "Concat", "Expand", "Neg", "Add", "Sub", "Mul", "Div", "Where"}
TABLE_INPUTS = {"Attention": (3,), "RotaryEmbedding": (1, 2)}  # the mask; the cos and sin caches

# Quantized operators' inputs (onnxruntime's and ONNX's definitions): where a weight's stored values go
# (its parameters, whatever their type: int8, int4, packed bits, int32 biases) and where its scales and
# zero points go (quantization overhead: bytes, not parameters). QLinearConcat's are per input, below.
QUANT_WEIGHT_INPUTS = {"DequantizeLinear": (0,), "QLinearConv": (3, 8), "QLinearMatMul": (0, 3), "QGemm": (3, 6),
                       "ConvInteger": (1,), "MatMulInteger": (1,), "MatMulNBits": (1,), "GatherBlockQuantized": (0,),
                       "QLinearAdd": (0, 3), "QLinearMul": (0, 3)}
# The (activation, weight) inputs of the operators whose products are MACs, for their precision.
PRODUCT_OPERANDS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1), "Einsum": (0, 1),
                    "LSTM": (0, 1), "GRU": (0, 1), "RNN": (0, 1), "QLinearConv": (0, 3), "QLinearMatMul": (0, 3),
                    "QGemm": (0, 3), "ConvInteger": (0, 1), "MatMulInteger": (0, 1), "MatMulNBits": (0, 1)}
LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
PRECISION_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16",
                   onnx.TensorProto.DOUBLE: "fp64", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                   onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4",
                   onnx.TensorProto.FLOAT8E4M3FN: "fp8", onnx.TensorProto.FLOAT8E5M2: "fp8"}
# The peak a product's activations' precision runs at (dlc.choices.DTYPE_BYTES' names), for the roofline.
COMPUTE_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8", "int8": "int8", "uint8": "int8", "int4": "int4",
                     "uint4": "int4"}
# Element types that hold quantized values, never shapes or indices: an initializer of one is a weight
# wherever it is not a zero point.
QUANTIZED_TYPES = {getattr(onnx.TensorProto, name) for name in (
    "INT8", "UINT8", "INT4", "UINT4", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
    "FLOAT4E2M1") if hasattr(onnx.TensorProto, name)}
INTEGER_PRODUCTS = {"ConvInteger", "MatMulInteger"}
# Operators that only change an activation's precision: in the row of the layer they feed, so a quantized
# file has its float twin's layers and rows.
QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
QUANT_OVERHEAD_INPUTS = {
    "DequantizeLinear": (1, 2), "QuantizeLinear": (1, 2), "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QGemm": (1, 2, 4, 5, 7, 8), "ConvInteger": (2, 3), "MatMulInteger": (2, 3),
    "MatMulNBits": (2, 3, 4), "GatherBlockQuantized": (2, 3), "QLinearAdd": (1, 2, 4, 5, 6, 7),
    "QLinearMul": (1, 2, 4, 5, 6, 7),
    **{op: (1, 2, 3, 4) for op in ("QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
                                   "QLinearSigmoid", "QLinearLeakyRelu")}}


@dataclass
class Uncounted:
    node: str
    op: str
    reason: str


@dataclass
class OnnxLayer:
    name: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    main: onnx.NodeProto | None = None  # the node whose output the layer shows


def is_rescale(n: onnx.NodeProto, nodes: list[onnx.NodeProto], producer: dict[str, int], input_side: bool) -> bool:
    """Whether n is part of the float rescaling of an integer product, as onnxruntime's quantize_dynamic
    writes it: Cast(ConvInteger|MatMulInteger) * (input scale * weight scale). The input side is the
    product of scales (reading DynamicQuantizeLinear's scale); the output side the Cast and the Mul."""
    made = [nodes[producer[t]] for t in n.input if t in producer]
    if input_side:
        return n.op_type == "Mul" and any(p.op_type == "DynamicQuantizeLinear" and p.output[0] not in n.input
                                          for p in made)
    if n.op_type == "Cast":
        return any(p.op_type in INTEGER_PRODUCTS for p in made)
    return n.op_type == "Mul" and any(p.op_type == "Cast" and is_rescale(p, nodes, producer, False) for p in made)


def node_names(nodes: list[onnx.NodeProto]) -> list[str]:
    """Each node's name, made unique and non-empty (ONNX allows both)."""
    seen: dict[str, int] = {}
    names = []
    for i, n in enumerate(nodes):
        name = n.name or f"{n.op_type}_{i}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def live_tensors(g: OnnxGraph) -> set[str]:
    """Tensors computed from the model's inputs; the rest (weights, constants, shape arithmetic) are
    fixed once the shapes are."""
    live = set(g.inputs)
    for n in g.nodes:
        skip = TYPE_ONLY_INPUTS.get(n.op_type, ())
        if n.op_type not in NEVER_LIVE and any(i in live for k, i in enumerate(n.input) if i and k not in skip):
            live.update(o for o in n.output if o)
    return live


def group(g: OnnxGraph, live: set[str]) -> list[OnnxLayer]:
    nodes, names = g.nodes, node_names(g.nodes)
    if g.dlc_spec is not None:
        key = [name.split("/")[0] for name in names]
    else:
        consumers: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for t in n.input:
                consumers.setdefault(t, []).append(i)
        index = {id(n): i for i, n in enumerate(nodes)}
        producer = {o: index[id(n)] for n in nodes for o in n.output if o}
        joins: dict[int, int] = {}  # node -> the node whose layer it belongs to
        for i, n in enumerate(nodes):
            fed = sorted(j for o in n.output for j in consumers.get(o, []))
            made = [producer[t] for t in n.input if t in producer]
            if not any(o in live for o in n.output) or n.op_type in QUANTIZE_OPS \
                    or is_rescale(n, nodes, producer, input_side=True):
                # A helper, or the quantizing of a layer's input, joins the layer of its first consumer;
                # one that feeds no layer stands alone, but the dequantizing of an output is its producer's.
                if fed:
                    joins[i] = fed[0]
                elif n.op_type in QUANTIZE_OPS and made:
                    j = made[0]
                    while nodes[j].op_type in QUANTIZE_OPS and nodes[j].input[0] in producer:
                        j = producer[nodes[j].input[0]]
                    joins[i] = j
            elif is_rescale(n, nodes, producer, input_side=False) and made:
                joins[i] = made[0]  # the float result of an integer product: the product's layer
        root: dict[int, int] = {}
        for start in range(len(nodes)):
            path, i = [], start
            while i in joins and i not in root and i not in path:  # a cycle of joins ends where it closes
                path.append(i)
                i = joins[i]
            end = root.get(i, i)
            root.update((j, end) for j in path)
        key = [names[root.get(i, i)] for i in range(len(nodes))]
    layers: dict[str, OnnxLayer] = {}
    for i, (n, k) in enumerate(zip(nodes, key)):
        layer = layers.setdefault(k, OnnxLayer(k))
        layer.nodes.append(n)
        if names[i] == k or (g.dlc_spec is not None and k in n.output):
            layer.main = n
    for layer in layers.values():
        layer.main = layer.main or layer.nodes[-1]
    # Order by the main node, so a helper computed early sits with the layer it feeds.
    position = {id(n): i for i, n in enumerate(nodes)}
    return sorted(layers.values(), key=lambda layer: position[id(layer.main)])


def describe(n: onnx.NodeProto, g: OnnxGraph) -> str:
    """The operator and its size in the spec language's words: `Conv 64@7x7/2`, `MaxPool 3x3/2`."""
    a = attributes(n)
    w = g.tensors.get(n.input[1]) if len(n.input) > 1 else None
    if n.op_type in ("Conv", "ConvTranspose") and w is not None and w.known:
        channels = w.shape[0] if n.op_type == "Conv" else w.shape[1] * a.get("group", 1)
        return f"{n.op_type} {channels}@{_window(w.shape[2:], a.get('strides'))}"
    if n.op_type in ("MaxPool", "AveragePool") and "kernel_shape" in a:
        return f"{n.op_type} {_window(a['kernel_shape'], a.get('strides'))}"
    if n.op_type in ("LSTM", "GRU", "RNN"):
        return f"{n.op_type} {a.get('hidden_size')}"
    out = g.tensors.get(n.output[0])
    if n.op_type in ("Gemm", "MatMul") and w is not None and n.input[1] in g.weights and out and out.shape:
        return f"{n.op_type} {out.shape[-1]}"
    return n.op_type


def _window(kernel, strides) -> str:
    k = "x".join(str(d) for d in kernel)
    s = set(strides or [1])
    return k + (f"/{s.pop()}" if s != {1} and len(s) == 1 else "")


def step_text(n: onnx.NodeProto) -> str | None:
    """The spec text dlc's exporter put in the doc string (`file:line: text`)."""
    return n.doc_string.split(": ", 1)[1] if ": " in n.doc_string else None


def shown(t: OnnxValue, signals: set[str]) -> tuple:
    """A tensor's shape per sample as dlc shows it: C@L for a signal."""
    shape = t.per_sample or ()
    return Signal(shape) if t.name in signals and len(shape) == 2 else shape


def node_costs(g: OnnxGraph) -> dict[int, Cost | NotCounted]:
    """Each node's cost (by id), or why it has none."""
    costs: dict[int, Cost | NotCounted] = {}
    for n in g.nodes:
        try:
            # a tensor inference did not type is named in the message, unlike an omitted input
            costs[id(n)] = count(Op(n, [g.tensors.get(i, OnnxValue(i, None, 0)) if i else None for i in n.input],
                                    [g.tensors.get(o, OnnxValue(o, None, 0)) if o else None for o in n.output]))
        except NotCounted as e:
            costs[id(n)] = e
    return costs


@dataclass
class LayerValues:
    """The stored values a layer reads first: parameter counts, and bytes in their stored types."""

    params: int = 0
    frozen: int = 0  # non-trainable
    constants: int = 0  # attention's tables and masks
    params_bytes: int = 0
    frozen_bytes: int = 0
    constant_bytes: int = 0
    overhead_bytes: int = 0  # quantization scales and zero points
    types: set[int] = field(default_factory=set)  # the weights' stored element types


def stored_bytes(init: Initializer) -> int:
    """The bytes an initializer's values take in the file: int4 and 4-bit floats pack two in a byte."""
    return ceil(prod(init.dims) * element_bits(init.elem_type) / 8)


def quant_role(n: onnx.NodeProto, i: int) -> str | None:
    """"weight" if input i of a quantized operator holds a weight's stored values, "overhead" if it holds
    scales or zero points, None for any other input."""
    if n.op_type == "QLinearConcat":  # Y_scale, Y_zero_point, then (tensor, scale, zero point) per input
        return "weight" if i >= 2 and (i - 2) % 3 == 0 else "overhead"
    if i in QUANT_WEIGHT_INPUTS.get(n.op_type, ()):
        return "weight"
    return "overhead" if i in QUANT_OVERHEAD_INPUTS.get(n.op_type, ()) else None


def weight_values(n: onnx.NodeProto, i: int, init: Initializer) -> int:
    """The values a stored weight holds: MatMulNBits packs its K x N weight in bytes of blocks, and
    GatherBlockQuantized may pack 8/bits values in each uint8."""
    if n.op_type == "MatMulNBits":
        a = attributes(n)
        return a["K"] * a["N"]
    if n.op_type == "GatherBlockQuantized" and init.elem_type == onnx.TensorProto.UINT8:
        return prod(init.dims) * 8 // attributes(n).get("bits", 4)
    return prod(init.dims)


def integer_product_scales(g: OnnxGraph) -> set[str]:
    """The initializers that scale an integer product back to floats: onnxruntime's quantize_dynamic casts
    a ConvInteger's or MatMulInteger's output to float and multiplies it by the product of the weight's
    and the input's scales (each an initializer, or the input's computed by DynamicQuantizeLinear)."""
    producer = {o: n for n in g.nodes for o in n.output if o}
    products = {n.output[0] for n in g.nodes if n.op_type in INTEGER_PRODUCTS}
    casts = {n.output[0] for n in g.nodes if n.op_type == "Cast" and n.input[0] in products}
    found, stack = set(), [t for n in g.nodes if n.op_type == "Mul" and casts & set(n.input)
                           for t in n.input if t not in casts]
    while stack:
        t = stack.pop()
        if t in g.initializers:
            found.add(t)
        elif t in producer and producer[t].op_type == "Mul":
            stack += producer[t].input
    return found


def layer_params(layer: OnnxLayer, g: OnnxGraph, owner: dict[str, str], tables: set[str],
                 scales: set[str], states: set[str]) -> LayerValues:
    """The values of the initializers this layer reads first: the float ones (weights, biases, tables) and
    a quantized weight's stored values, whatever their type, as parameters of the network the file holds;
    scales and zero points (`scales`: the dynamic ones) as overhead bytes. `owner` records which layer took
    each, so a shared weight counts once; `tables` are the constants, `states` are counted nowhere
    (given_states). A weight counts where an operator reads it, not where a Cast or Identity passes it on,
    so a bn's mean is its mean behind them too."""
    found = LayerValues()
    for n in layer.nodes:
        if n.output and n.output[0] in g.weights:
            continue
        for i, t in enumerate(n.input):
            # a float weight however it is stored (g.weights), else a quantized weight's codes or its scales
            init = g.weights.get(t) or g.initializers.get(t)
            if init is None or init.name in owner or init.name in states:
                continue
            role = "overhead" if init.name in scales else quant_role(n, i)
            if role is None and init.elem_type in QUANTIZED_TYPES:
                role = "weight"  # an int8 embedding table read by a Gather, as quantize_dynamic writes it
            if role is None and not init.is_float or role != "overhead" and not init.dims:
                continue
            owner[init.name] = layer.name
            size = stored_bytes(init)
            if role == "overhead":
                found.overhead_bytes += size
            elif init.name in tables:
                found.constants += prod(init.dims)
                found.constant_bytes += size
            elif i in NON_TRAINABLE_INPUTS.get(n.op_type, ()):
                found.types.add(init.elem_type)
                found.frozen += prod(init.dims)
                found.frozen_bytes += size
            else:
                found.types.add(init.elem_type)
                found.params += weight_values(n, i, init) if role == "weight" else prod(init.dims)
                found.params_bytes += size
    return found


def given_states(g: OnnxGraph) -> set[str]:
    """The stored weights whose every use is a recurrent op's sequence lengths or initial state
    (CONSTANT_INPUTS), read directly or broadcast to the batch by an Expand (TorchScript writes zero
    states so): values given to the op, not parameters."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.nodes:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    states = set()
    for name, weight in g.weights.items():
        if name != weight.name:  # a view of a stored weight: the walk from the weight itself passes it
            continue
        uses, stack = [], [name]
        while stack:
            for n, i in consumers.get(stack.pop(), []):
                if (n.op_type == "Expand" and i == 0) or n.output[0] in g.weights:  # the same values, passed on
                    stack += [o for o in n.output if o]
                else:
                    uses.append(i in CONSTANT_INPUTS.get(n.op_type, ()))
        if uses and all(uses):
            states.add(name)
    return states


def attention_tables(g: OnnxGraph, live: set[str]) -> set[str]:
    """The stored weights that are attention's tables and masks, not parameters (docs/conventions.md):
    every value computed from one meets the activations only in an elementwise operator (TABLE_OPS) on
    attention's scores, queries or keys as a table (two or more axes longer than 1) or a single value
    (the scale, stored with shape [1]), or as the mask of an Attention operator or the cos and sin caches
    of a RotaryEmbedding. A vector there (a projection's bias) stays a parameter, and so does a table met
    elsewhere (a learned position table added to the embeddings), and so does a table read by a Gather at
    stored indices (Swin's relative position bias table, read at each pair's offset in a window)."""
    scored = attention_activations(g, live)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.nodes:
        for t in dict.fromkeys(n.input):
            consumers.setdefault(t, []).append(n)

    def as_table(t: str, n: onnx.NodeProto) -> bool:
        if n.op_type in TABLE_INPUTS:
            return any(n.input[i] == t for i in TABLE_INPUTS[n.op_type] if i < len(n.input))
        shape = g.tensors[t].shape if t in g.tensors else None
        return n.op_type in TABLE_OPS and any(i in scored for i in n.input) and shape is not None \
            and sum(d is None or d > 1 for d in shape) != 1

    tables = set()
    for name, init in g.weights.items():
        if name != init.name:  # a view of a stored weight: the walk from the weight itself passes it
            continue
        if any(n.op_type == "Gather" and n.input[0] == name and n.input[1] not in live for n in consumers.get(name, [])):
            continue  # learned entries looked up at fixed places, not a computed table
        meetings, stack, seen = [], [name], set()  # whether each use by an activation is a table's
        while stack:
            t = stack.pop()
            for n in consumers.get(t, []):
                if any(i in live for i in n.input):
                    meetings.append(as_table(t, n))
                elif id(n) not in seen:  # computed from constants only: follow what it computes
                    seen.add(id(n))
                    stack += [o for o in n.output if o]
        if meetings and all(meetings):
            tables.add(name)
    return tables


def expanded_biases(g: OnnxGraph, tables: set[str]) -> tuple[int, int, int]:
    """(how many, their stored values, their learned values) of the attention tables that are Swin's
    relative position bias as an exporter folds its lookup: (1, heads, N, N) values that repeat a
    ((2·wh-1)·(2·ww-1), heads) table at each pair's offset in a wh x ww window (N = wh·ww, both above 1:
    a sequence's band masks depend on offsets too). A table of one value throughout is not one."""
    from dlc.engine.kernels.attention import bias_table

    found = [0, 0, 0]
    for name in sorted(tables) if g.weights_error is None else ():  # values unreadable: the analysis warns
        dims = g.weights[name].dims
        if len(dims) < 3 or dims[-1] != dims[-2] or prod(dims[:-3]) != 1:
            continue
        values, n = stored_value(name, g.stored, g.path), dims[-1]
        table = next((t for t in (bias_table(values, (wh, n // wh)) for wh in range(2, n // 2 + 1) if n % wh == 0)
                      if t is not None), None)
        if table is not None:
            found = [found[0] + 1, found[1] + values.size, found[2] + table.size]
    return found[0], found[1], found[2]


def attention_activations(g: OnnxGraph, live: set[str]) -> set[str]:
    """The activations of every attention's scores: from each Softmax back to the product of two
    activations (the scores), then from that product's operands back to their projections (the queries
    and keys)."""
    producer = {o: n for n in g.nodes for o in n.output if o}

    def back(start: list[str], ops: set[str]) -> tuple[set[str], list[onnx.NodeProto]]:
        """The tensors computed from `start` back through `ops`, and the nodes where the way stops."""
        tensors, stops, stack = set(), [], list(start)
        while stack:
            t = stack.pop()
            p = producer.get(t)
            if t in tensors or p is None:
                continue
            tensors.add(t)
            if p.op_type in ops:
                stack += [i for i in p.input if i in live]
            else:
                stops.append(p)
        return tensors, stops

    found: set[str] = set()
    for n in g.nodes:
        if n.op_type != "Softmax" or n.input[0] not in live:
            continue
        scores, stops = back([n.input[0]], SCORE_OPS)
        products = [p for p in stops if p.op_type == "MatMul" and all(i in live for i in p.input)]
        for p in products:
            found |= scores | back(list(p.input), QUERY_KEY_OPS)[0]
    return found


def analyse_onnx(g: OnnxGraph, batch: int = 1, optimizer: str = "sgd", dtype: str | None = None,
                 act_dtype: str | None = None) -> tuple[Analysis, list[Uncounted]]:
    """dlc's figures for an ONNX model, per layer and in total, and the nodes they leave out. Bytes in
    `dtype` and `act_dtype`; by default the weights' stored types, and activations in the weights'
    type where they have one type, else float32 (docs/conventions.md)."""
    live = live_tensors(g)
    layers = group(g, live)
    costs = node_costs(g)
    names = dict(zip(map(id, g.nodes), node_names(g.nodes)))
    producer = {o: layer.name for layer in layers for n in layer.nodes for o in n.output if o}
    producer.update({name: name for name in g.inputs})
    read_by: dict[str, set[str]] = {}
    for layer in layers:
        for n in layer.nodes:
            for t in n.input:
                read_by.setdefault(t, set()).add(layer.name)
    # the spatial sizes of an image or volume input, or of a signal's where the model has 1-D windows (a
    # rank-3 input is otherwise a sequence)
    signals = g.signals
    spatial = [t for t in map(g.tensors.get, g.inputs) if t and t.known and (len(t.shape) in (4, 5) or t.name in signals)]
    image = spatial[0].shape[2:] if spatial else None
    # a field for each spatial input; none for a vector or a sequence beside it (a diffusion block's time
    # embedding and text), as the spec's analysis has it
    fields: dict[str, ReceptiveField | None] = dict.fromkeys(g.inputs)
    fields.update((t.name, ReceptiveField((1,) * len(image), (Fraction(1),) * len(image))) for t in spatial)

    producer_node = {o: n for n in g.nodes for o in n.output if o}
    stats, uncounted, owner, types = [], [], {}, set()
    tables, states = attention_tables(g, live), given_states(g)
    scales = integer_product_scales(g)
    steps: dict[str, str] | None = {} if g.dlc_spec is not None else None  # layer -> its spec step
    in_mixture = standby_layers(layers, g) if g.dlc_spec is not None else {}
    act_types = set()
    for name in g.inputs:
        t = g.tensors[name]
        node = Node(name, "input", {}, [], shown(t, signals), dtype_name(t.elem_type), text="input")
        act_types.add(t.elem_type)
        stats.append(NodeStats(node, 0, 0, 0, 0, t.elements or 0, fields[name],
                               stored_activation_bytes=activation_bytes(g, name, t.elements)))
    for layer in layers:
        macs = flops = 0
        reasons = []
        for n in layer.nodes:
            cost = costs[id(n)]
            if isinstance(cost, NotCounted):
                reasons.append(str(cost))
                uncounted.append(Uncounted(names[id(n)], n.op_type, str(cost)))
                cost = Cost()
            macs, flops = macs + cost.macs, flops + cost.flops
            field_in = [fields.get(i) for i in n.input if i in live]
            for o in n.output:
                fields[o] = receptive_field(cost.window, field_in, image) if image else None
        values = layer_params(layer, g, owner, tables, scales, states)
        params, frozen = values.params, values.frozen
        types |= values.types
        leaving = [o for n in layer.nodes for o in n.output
                   if o in live and (o in g.outputs or read_by.get(o, set()) - {layer.name})]
        sizes = [g.tensors[o].elements if o in g.tensors and g.tensors[o].known else sequence_size(g, producer_node[o])
                 for o in leaving]
        act_types |= {g.tensors[o].elem_type for o in leaving if o in g.tensors}
        if None in sizes and not reasons:
            reasons.append("ONNX shape inference leaves an output's size unknown")
            uncounted.append(Uncounted(layer.name, layer.main.op_type, reasons[-1]))
        out = layer.main.output[0] if g.dlc_spec is None else (layer.name if layer.name in g.tensors else
                                                                 layer.main.output[0])
        t = g.tensors.get(out) or OnnxValue(out, None, 0)
        inputs = list(dict.fromkeys(producer[i] for n in layer.nodes for i in n.input
                                    if i in live and producer.get(i, layer.name) != layer.name))
        # a layer of dlc's export is named after its weightiest operator (LSTM, not the Transposes round it)
        main = max(layer.nodes, key=lambda n: weight(costs[id(n)])) if g.dlc_spec is not None else layer.main
        text = (step_text(main) if steps is not None else None) or describe(main, g)
        if steps is not None:
            steps[layer.name] = main.doc_string
        # a Conv's or pool's rank-3 output is a signal, as is what such an operator reads
        node = Node(layer.name, main.op_type, attributes(main), inputs,
                    shown(t, signals | ({t.name} if main.op_type in CHANNEL_OPS else set())), dtype_name(t.elem_type),
                    text=text, standby=in_mixture.get(layer.name) == "standby")
        runs = not node.standby
        products = [(weight(costs[id(n)]), p) for n in layer.nodes if (p := precision(n, g, producer_node, live))]
        precise = max(products, key=lambda found: found[0])[1] if products else (None, None)
        stats.append(NodeStats(node, params, frozen, macs * batch * runs, flops * batch * runs,
                               sum(s or 0 for s in sizes), fields.get(out), "; ".join(reasons) or None,
                               params * runs, values.constants, (values.params_bytes, values.frozen_bytes),
                               constant_bytes=values.constant_bytes, overhead_bytes=values.overhead_bytes,
                               stored_activation_bytes=sum(activation_bytes(g, o, size) for o, size in zip(leaving, sizes)),
                               precision=precise[0], compute=precise[1]))
    fold_rows(stats, steps)
    mixture_rows(stats, in_mixture)
    graph = Graph([s.node for s in stats], g.dlc_spec or "", g.path)
    named = {s.node.name for s in stats}
    if len(g.outputs) > 1 and all(producer.get(o) in named for o in g.outputs):  # each graph output by its name
        graph.output_labels = {o: producer[o] for o in g.outputs}
    stored_as = STORED_DTYPES.get(types.pop()) if len(types) == 1 else "fp32" if not types else None
    weights = dtype or stored_as or "mixed"
    # activations each in their own tensor's type (issue 20 priced them all in the weights' one)
    acts = STORED_DTYPES.get(act_types.pop(), "mixed") if len(act_types) == 1 else "mixed"
    summed = totals(stats, batch, optimizer, None, weights, act_dtype or dtype or acts)
    return Analysis(graph, stats, replace(summed, expanded_biases=expanded_biases(g, tables))), uncounted


def activation_bytes(g: OnnxGraph, name: str, size: int | None) -> int:
    """The bytes of `size` values of tensor `name` in its element type (float32 where it has none: a
    sequence's)."""
    t = g.tensors.get(name)
    return ceil((size or 0) * (element_bits(t.elem_type) if t is not None and t.elem_type else 32) / 8)


def operand_precision(t: str, g: OnnxGraph, producer: dict[str, onnx.NodeProto],
                      stored: bool) -> tuple[str, int | None]:
    """The precision an operand is held in, and its block size: through layout operators, the type a
    DequantizeLinear read it in (or, for a `stored` weight, a Cast: a float16 weight cast to float32 is
    stored in float16; an activation cast is computed on in its new type), else its own."""
    while t in producer and producer[t].op_type in LAYOUT_OPS:
        t = producer[t].input[0]
    made = producer.get(t)
    block = None
    if made is not None and made.op_type in ("DequantizeLinear", "Cast") and (stored or made.op_type != "Cast"):
        block = attributes(made).get("block_size") or None if made.op_type == "DequantizeLinear" else None
        t = made.input[0]
    value = g.tensors.get(t)
    return (precision_name(value.elem_type) if value is not None else "fp32"), block


def precision_name(elem_type: int) -> str:
    return PRECISION_NAMES.get(elem_type) or dtype_name(elem_type)


def precision(n: onnx.NodeProto, g: OnnxGraph, producer: dict[str, onnx.NodeProto],
              live: set[str]) -> tuple[str, str] | None:
    """The precision of a product's operands in the words of the table ("fp32", "fp16 w / fp32 a",
    "int8 w / uint8 a", "int4 w, block 32", "int8 a / int8 a" between two activations), and the precision
    it computes in (DTYPE_BYTES' names: a
    weight-only quantized product computes in its activations' float type); None for another operator."""
    if n.op_type not in PRODUCT_OPERANDS or len(n.input) <= max(PRODUCT_OPERANDS[n.op_type]):
        return None
    x, w = PRODUCT_OPERANDS[n.op_type]
    act, _ = operand_precision(n.input[x], g, producer, stored=False)
    if n.op_type == "MatMulNBits":
        a = attributes(n)
        stored, block = f"int{a.get('bits', 4)}", a.get("block_size")
    else:
        stored, block = operand_precision(n.input[w], g, producer, stored=n.input[w] not in live)
    floats = set(STORED_DTYPES.values())
    if stored == act and act in floats and not block:
        label = act
    elif n.input[w] in live:  # a product of two activations (attention's scores)
        label = f"{act} a / {stored} a"
    elif act in floats and stored not in floats:
        label = f"{stored} w"
    else:
        label = f"{stored} w / {act} a"
    return label + (f", block {block}" if block else ""), COMPUTE_PRECISION.get(act, "fp32")


def sequence_size(g: OnnxGraph, n: onnx.NodeProto) -> int | None:
    """The values of a SplitToSequence's output (a sequence, which shape inference does not give as a
    tensor): its input's, split; None for any other untyped output."""
    t = g.tensors.get(n.input[0]) if n.op_type == "SplitToSequence" else None
    return t.elements if t is not None else None


def standby_layers(layers: list[OnnxLayer], g: OnnxGraph) -> dict[str, str]:
    """In a dlc export, the layers of each mixture of experts (`<mixture>.router`, `<mixture>.expert<e>.…`)
    -> the mixture: its join is the layer with the TopK, whose K the kept values' inferred shape gives.
    Experts past the top K map to "standby": they count in params, not in active params, MACs or FLOPs
    (docs/conventions.md). Other layers are not in the dict."""
    tops = {}
    for layer in layers:
        for n in layer.nodes:
            t = g.tensors.get(n.output[0]) if n.op_type == "TopK" else None
            if t is not None and t.known:
                tops[layer.name] = t.shape[-1]
    found = {}
    for layer in layers:
        mixture, _, rest = layer.name.rpartition(".expert")
        number = rest.split(".", 1)[0]
        if mixture in tops and number.isdigit():
            found[layer.name] = "standby" if int(number) > tops[mixture] else mixture
        elif layer.name.endswith(".router") and layer.name[:-len(".router")] in tops:
            found[layer.name] = layer.name[:-len(".router")]
    return found


def weight(cost: Cost | NotCounted) -> tuple[int, int]:
    return (0, 0) if isinstance(cost, NotCounted) else (cost.macs, cost.flops)


def mixture_rows(stats: list[NodeStats], in_mixture: dict[str, str]) -> None:
    """A mixture is one row, as in its spec: its router, experts and join share the join's row."""
    if not in_mixture:
        return
    joins = {s.node.name for s in stats if s.node.name in in_mixture.values()}
    for s in stats:
        name = s.node.name
        for j in joins:
            if name == j or name.startswith(f"{j}."):
                s.node.row = j


def fold_rows(stats: list[NodeStats], steps: dict[str, str] | None) -> None:
    """Set each node's row: suffix ops join the row of the layer they read (for a dlc export, `steps`
    gives each layer's spec step, and the layers of one step share its row); the row's first node
    carries the row's text."""
    first, row_ops = None, set()
    for prev, s in zip([None, *stats], stats):
        node = s.node
        if prev is None or node.kind == "input" or prev.node.kind == "input":
            joins = False
        elif steps is not None:
            # A repeated step (`conv 64@3x3 relu x2`) starts a new row where its first op comes again.
            joins = steps[node.name] == steps[prev.node.name] and node.kind not in row_ops
        else:
            # an activation, or a bias add or scale: one live input, the other operand a constant
            joins = node.kind in SUFFIX_OPS | AFFINE_OPS and node.inputs == [prev.node.name]
        if joins:
            node.row = first.node.row
            row_ops.add(node.kind)
            if steps is None:
                first.node.text += f" {node.text}"
        else:
            first, row_ops = s, {node.kind}
