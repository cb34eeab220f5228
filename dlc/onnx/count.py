"""MACs, FLOPs and receptive-field windows of ONNX operators: one function per op type, one dict (COUNT).

The rules are dlc's (docs/conventions.md), applied operator by operator on shapes at batch 1:
Conv, ConvTranspose (by C_in), Gemm, MatMul (batched, weights or two activations), Einsum of two
operands, Attention (its two products) and RNN/LSTM/GRU (per step, times T, per direction) are MACs; bias adds are FLOPs, not MACs;
elementwise ops cost one FLOP per output element and per extra input; data movement and arithmetic on
integer (shape) tensors costs nothing. An operator without a rule, or whose shapes inference left
unknown, raises NotCounted: the analysis shows the node as "not counted" and warns, never a silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from math import prod
from typing import Callable

import onnx

from dlc.layers import GLOBAL, Window
from dlc.layers.recurrent import GATES, recurrent_flops, recurrent_macs
from dlc.onnx.model import OnnxValue, attributes


class NotCounted(Exception):
    """The operator's cost is unknown to dlc; the message says why."""


@dataclass
class Op:
    node: onnx.NodeProto
    ins: list[OnnxValue | None]  # None for an omitted optional input
    outs: list[OnnxValue | None]

    @property
    def attrs(self) -> dict:
        return attributes(self.node)

    def shape(self, tensor: OnnxValue | None) -> tuple[int, ...]:
        if tensor is None or not tensor.known:
            what = "an omitted input" if tensor is None else tensor.name
            raise NotCounted(f"ONNX shape inference gives no shape for {what}")
        return tensor.shape

    def out_elements(self) -> int:
        return prod(self.shape(self.outs[0]))

    def floats_out(self) -> bool:
        return self.outs[0] is None or self.outs[0].is_float

    def has(self, i: int) -> bool:
        return len(self.ins) > i and self.ins[i] is not None


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    flops: int = 0
    window: Window | str | None = None  # for the receptive field; GLOBAL where the op sees everything


FREE = Cost()


def _window(op: Op, kernel: tuple[int, ...], transposed: bool = False) -> Window:
    """The window of a spatial op over its 1, 2 or 3 axes."""
    a, ones = op.attrs, (1,) * len(kernel)
    return Window(tuple(kernel), tuple(a.get("strides", ones)), tuple(a.get("dilations", ones)), transposed)


def count_conv(op: Op, w: int = 1, bias: int | None = 2) -> Cost:
    """Conv, and its quantized forms with the weight and bias at other inputs (QLinearConv, ConvInteger)."""
    kernel = op.shape(op.ins[w])  # (C_out, C_in/groups, *kernel)
    out = op.out_elements()
    macs = out * prod(kernel[1:])
    return Cost(macs, 2 * macs + (out if bias is not None and op.has(bias) else 0), _window(op, kernel[2:]))


def count_conv_transpose(op: Op) -> Cost:
    # Every input pixel scatters a (C_out/groups)*k*k window: MACs follow C_in, not C_out.
    w = op.shape(op.ins[1])  # (C_in, C_out/groups, *kernel)
    macs = prod(op.shape(op.ins[0])) * prod(w[1:])
    return Cost(macs, 2 * macs + (op.out_elements() if op.has(2) else 0), _window(op, w[2:], transposed=True))


def count_gemm(op: Op, bias: int = 2) -> Cost:
    a = op.shape(op.ins[0])
    k = a[0] if op.attrs.get("transA", 0) else a[1]
    out = op.out_elements()
    macs = out * k
    return Cost(macs, 2 * macs + (out if op.has(bias) else 0), GLOBAL)


def count_matmul(op: Op) -> Cost:
    # numpy's matmul: every output element is a K-long dot product, however many batch axes there are.
    k = op.shape(op.ins[0])[-1]
    macs = op.out_elements() * k
    return Cost(macs, 2 * macs, GLOBAL)


def count_matmul_nbits(op: Op) -> Cost:
    """com.microsoft MatMulNBits: A [..., K] times the dequantized [K, N] weight, plus its optional bias."""
    out = op.out_elements()
    macs = out * op.attrs["K"]
    return Cost(macs, 2 * macs + (out if op.has(5) else 0), GLOBAL)


def quantized(n: int, rule: Callable[[Op], Cost]) -> Callable[[Op], Cost]:
    """A QLinear operator (QLinearAdd, QLinearAveragePool, ...): the float operator's rule on the same
    shapes, its inputs at every n-th place (each data input comes with its scale and zero point), and its
    integer output counted as the float one it stands for."""
    def count(op: Op) -> Cost:
        ins = op.ins[::n]
        float_out = [replace(t, elem_type=onnx.TensorProto.FLOAT) if t is not None else None for t in op.outs]
        return rule(Op(op.node, ins, float_out))
    return count


def count_einsum(op: Op) -> Cost:
    equation = op.attrs["equation"].decode().replace(" ", "")
    terms = equation.split("->")[0].split(",")
    if "..." in equation or len(terms) != len(op.ins):
        raise NotCounted(f"Einsum `{equation}`: only equations without `...` are counted")
    sizes = {}
    for term, tensor in zip(terms, op.ins):
        sizes.update(zip(term, op.shape(tensor)))
    if len(terms) == 2:
        # Every combination of the letters is one multiply-accumulate (a contraction over the rest).
        macs = prod(sizes.values())
        return Cost(macs, 2 * macs, GLOBAL)
    if len(terms) == 1:
        return Cost(0, prod(op.shape(op.ins[0])) if op.floats_out() else 0)  # a sum over dropped letters
    raise NotCounted(f"Einsum `{equation}` of {len(terms)} operands")


def count_attention(op: Op) -> Cost:
    """ONNX's Attention (opset 23): dlc's attention rule less the projections (the model's own MatMuls
    around it): Q·Kᵀ and the weighted sum of V as MACs; per score the scale and the softmax (4, as dlc's
    attention counts them) and the add of a float mask (1, as its Add would count); a causal flag costs
    nothing, as dlc's causal attention counts the whole square."""
    q, k, v = (op.shape(t) for t in op.ins[:3])
    a = op.attrs
    if a.get("softcap", 0.0) or op.has(4):
        raise NotCounted("Attention with a softcap or past keys and values: dlc's attention has neither")
    if len(q) == 4:  # (batch, heads, T, head_dim)
        heads, width_qk, width_v = q[1], q[3], v[3]
    else:  # (batch, T, heads * head_dim)
        heads, width_qk, width_v = a["q_num_heads"], q[2] // a["q_num_heads"], v[2] // a["kv_num_heads"]
    scores = q[0] * heads * q[-2] * k[-2]
    macs = scores * (width_qk + width_v)
    mask = op.has(3) and op.ins[3].is_float
    return Cost(macs, 2 * macs + (4 + mask) * scores, GLOBAL)


def count_recurrent(op: Op) -> Cost:
    """Per step, times T, per direction: the rules of dlc's rnn/lstm/gru kinds (dlc.layers.recurrent)."""
    kind = op.node.op_type.lower()
    x = op.shape(op.ins[0])
    t, n, d = (x[1], x[0], x[2]) if op.attrs.get("layout", 0) else x
    a = {"directions": 2 if op.attrs.get("direction", b"forward") == b"bidirectional" else 1,
         "gates": GATES[kind], "hidden": op.attrs["hidden_size"], "in_features": d}
    return Cost(n * recurrent_macs(a, [(t, d)], None), n * recurrent_flops(kind)(a, [(t, d)], None), GLOBAL)


def count_pool(op: Op) -> Cost:
    kernel = tuple(op.attrs["kernel_shape"])
    return Cost(0, op.out_elements() * prod(kernel), _window(op, kernel))


def count_global_pool(op: Op) -> Cost:
    return Cost(0, prod(op.shape(op.ins[0])), GLOBAL)


def per_element(n: int) -> Callable[[Op], Cost]:
    """n FLOPs per output element of a float result; nothing for integer (shape) arithmetic."""
    def count(op: Op) -> Cost:
        return Cost(0, n * op.out_elements()) if op.floats_out() else FREE
    return count


def per_input(op: Op) -> Cost:
    """Elementwise with several inputs (Add, Sum, ...): one FLOP per output element and extra input."""
    if not op.floats_out():
        return FREE
    return Cost(0, (sum(1 for t in op.ins if t is not None) - 1) * op.out_elements())


def reduce(op: Op) -> Cost:
    """One FLOP per input element (the sum, compare or product that folds it in)."""
    return Cost(0, prod(op.shape(op.ins[0]))) if op.ins[0].is_float else FREE


def count_normalization(op: Op) -> Cost:
    """Layer, group and instance norm: the per-element work of its decomposed form (mean 1, center 1,
    square 1, variance sum 1, divide 1, scale 1, shift 1) plus the eps add and square root per group,
    so the fused operator and the ReduceMean/Sub/Pow/Sqrt/Div form count the same."""
    x = op.shape(op.ins[0])
    if op.node.op_type == "LayerNormalization":
        axis = op.attrs.get("axis", -1) % len(x)
        groups = prod(x[:axis])
    elif op.node.op_type == "GroupNormalization":
        groups = x[0] * op.attrs["num_groups"]
    else:
        groups = x[0] * x[1]
    per = 5 + op.has(1) + op.has(2)
    return Cost(0, per * prod(x) + 2 * groups)


def count_rms_normalization(op: Op) -> Cost:
    """dlc's rmsnorm rule: per element the square, the mean-square sum, the divide and the scale; per
    group the eps add and the square root, as its Mul/ReduceMean/Add/Sqrt/Div/Mul form counts."""
    x = op.shape(op.ins[0])
    groups = prod(x[:op.attrs.get("axis", -1) % len(x)])
    return Cost(0, 4 * prod(x) + 2 * groups)


def count_lrn(op: Op) -> Cost:
    # dlc's lrn rule: a square, size-1 adds over the window, scale and offset, the power, the division
    return Cost(0, (op.attrs["size"] + 4) * op.out_elements())


def count_resize(op: Op) -> Cost:
    mode = op.attrs.get("mode", b"nearest")
    if mode != b"nearest":
        raise NotCounted(f"Resize mode={mode.decode()}: only nearest-neighbour copies are counted")
    x, y = op.shape(op.ins[0]), op.shape(op.outs[0])
    window = None
    if len(x) == 4 and all(b % a == 0 for a, b in zip(x[2:], y[2:])):
        factor = tuple(b // a for a, b in zip(x[2:], y[2:]))
        window = Window((1, 1), factor, transposed=True)
    return Cost(0, 0, window)


def count_depth_to_space(op: Op) -> Cost:
    # pixelshuffle's rule: copies, each output pixel from one input pixel, the jump shrunk by the block size
    b = op.attrs["blocksize"]
    return Cost(0, 0, Window((1, 1), (b, b), transposed=True))


def free(op: Op) -> Cost:
    return FREE


COUNT: dict[str, Callable[[Op], Cost]] = {
    "Conv": count_conv,
    "ConvTranspose": count_conv_transpose,
    "Gemm": count_gemm,
    "MatMul": count_matmul,
    "Einsum": count_einsum,
    "Attention": count_attention,
    "RNN": count_recurrent,
    "LSTM": count_recurrent,
    "GRU": count_recurrent,
    "MaxPool": count_pool,
    "AveragePool": count_pool,
    "LpPool": count_pool,
    "GlobalAveragePool": count_global_pool,
    "GlobalMaxPool": count_global_pool,
    "GlobalLpPool": count_global_pool,
    # bn at inference: one multiply and one add per element with folded statistics (dlc's bn rule)
    "BatchNormalization": per_element(2),
    "LayerNormalization": count_normalization,
    "GroupNormalization": count_normalization,
    "InstanceNormalization": count_normalization,
    "RMSNormalization": count_rms_normalization,
    "Swish": per_element(2),  # SiLU (opset 24): the sigmoid and the product, dlc's silu rule
    "HardSwish": per_element(2),  # the hard gate and the product, dlc's hardswish rule (as Swish)
    "LRN": count_lrn,
    # Softmax: exponential, sum and division (dlc's softmax rule); LogSoftmax adds the logarithm.
    "Softmax": per_element(3),
    # per element: x1·cos - x2·sin (or x2·cos + x1·sin), two products and an add, as dlc counts rope
    "RotaryEmbedding": per_element(3),
    "LogSoftmax": per_element(4),
    "Resize": count_resize,
    "DepthToSpace": count_depth_to_space,
    "Upsample": count_resize,
    # a mixture's routing picks the K largest logits: a selection, not counted (dlc's experts rule)
    "TopK": free,
    **{name: per_element(1) for name in (
        "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "PRelu", "HardSigmoid",
        "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Clip", "Erf", "Exp", "Log", "Sqrt",
        "Reciprocal", "Neg", "Abs", "Sign", "Floor", "Ceil", "Round", "Sin", "Cos", "Tan", "Atan", "IsNaN",
        "Not")},
    **{name: per_input for name in (
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod", "Equal", "Less", "Greater",
        "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift")},
    **{name: reduce for name in (
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum")},
    # Quantized operators: the products and work of the float ones they stand for, so a quantized file
    # counts as its float twin; converting between precisions is no arithmetic, as Cast is not.
    "QLinearConv": partial(count_conv, w=3, bias=8),
    "ConvInteger": partial(count_conv, w=1, bias=None),
    "QLinearMatMul": count_matmul,
    "MatMulInteger": count_matmul,
    "com.microsoft.QGemm": partial(count_gemm, bias=6),
    "com.microsoft.MatMulNBits": count_matmul_nbits,
    "com.microsoft.GatherBlockQuantized": free,
    **{f"com.microsoft.QLinear{name}": quantized(3, rule) for name, rule in (
        ("Add", per_input), ("Mul", per_input), ("AveragePool", count_pool),
        ("GlobalAveragePool", count_global_pool), ("Softmax", per_element(3)), ("Sigmoid", per_element(1)),
        ("LeakyRelu", per_element(1)))},
    "com.microsoft.QLinearConcat": free,
    **{name: free for name in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                               "com.microsoft.QuantizeLinear", "com.microsoft.DequantizeLinear")},
    # Data movement, constants and shape arithmetic: no floating-point work.
    **{name: free for name in (
        "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Gather",
        "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand", "Tile", "Pad", "Identity",
        "Dropout", "Constant", "ConstantOfShape", "Shape", "Size", "Cast", "CastLike", "Range", "Where",
        "SpaceToDepth", "Trilu", "OneHot", "NonZero", "EyeLike", "SequenceConstruct",
        "SplitToSequence", "SequenceAt", "ConcatFromSequence", "Compress", "ReverseSequence")},
}


def count(op: Op) -> Cost:
    """The operator's cost; NotCounted where dlc has no rule or no shapes for it. COUNT names an operator
    of another domain than ONNX's own with its domain (com.microsoft's Attention is not ONNX's)."""
    domain = op.node.domain
    rule = COUNT.get(op.node.op_type if domain in ("", "ai.onnx") else f"{domain}.{op.node.op_type}")
    if rule is None:
        where = "" if domain in ("", "ai.onnx") else f" of the {domain} domain"
        raise NotCounted(f"{op.node.op_type}{where} has no counting rule")
    return rule(op)
