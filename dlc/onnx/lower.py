"""Each layer kind lowered to standard ONNX operators: one function per kind, one dict (LOWER).

A lowering reads the node's resolved attributes (the contract in dlc/layers/*.py) and returns the ONNX
nodes that compute it; the last one writes a tensor named after the layer. Parameters are initializers
named "<layer>.<param>", already in ONNX's layouts (the registry chose them so). Helper tensors
(shapes, clip bounds, resize scales) are Constant nodes, so the initializers hold exactly dlc's
parameters and the exporter can count them. Tensors are batch-first as in dlc: NCHW images, (N, F)
vectors, (N, T, D) sequences, (N, T) token ids.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from dlc.engine.kernels.attention import hidden_keys, relative_index, rotary_tables, window_mask, window_order
from dlc.engine.kernels.sequence import sinusoids
from dlc.graph import Node
from dlc.layers import KINDS
from dlc.layers.sequence import attention_biases
from dlc.onnx import GELU_OPSET, MIN_OPSET, RMSNORM_OPSET, ROTARY_OPSET

LAYERNORM_OPSET = 17  # the first opset with LayerNormalization
REDUCE_AXES_INPUT_OPSET = 18  # ReduceMean takes its axes as an input from here on, an attribute before

# Kinds whose own ONNX operator is newer than MIN_OPSET; below it they lower to a decomposition.
NATIVE_OPSET = {"gelu": GELU_OPSET, "layernorm": LAYERNORM_OPSET, "rmsnorm": RMSNORM_OPSET}
# The same for an option of a kind, when it is set: (kind, option) -> opset.
NATIVE_OPTION_OPSET = {("attention", "rope"): ROTARY_OPSET}


def native_opset(n: Node) -> int:
    """The first opset in which the node's kind and its options have their own operators."""
    options = [opset for (kind, option), opset in NATIVE_OPTION_OPSET.items() if kind == n.kind and n.attrs[option]]
    return max([NATIVE_OPSET.get(n.kind, MIN_OPSET), *options])


def lowest_opset(graph) -> int:
    """The lowest opset in which every kind of the graph has its own operator: dlc's default, so that
    older runtimes and converters (onnx2torch and the like stop near 18) read the model."""
    return max([MIN_OPSET, *(native_opset(n) for n in graph.nodes)])


class Lowering(Protocol):
    def __call__(self, n: Node, x: list[str], opset: int, /) -> list[NodeProto]:
        """(the node, its input tensor names, the target opset) -> the ONNX nodes that compute it."""


def op(kind: str, inputs: list[str], output: str, name: str, **attrs: Any) -> NodeProto:
    return helper.make_node(kind, inputs, [output], name=name, **attrs)


def const(name: str, values: float | list[int] | list[float],
          dtype: type[np.generic] = np.int64) -> NodeProto:
    """A Constant node for a helper tensor (not a parameter, so not an initializer)."""
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.asarray(values, dtype=dtype), name))


def param(n: Node, key: str) -> str:
    """The initializer a node reads as `key`: its own, or the one it shares (tied weights, read twice)."""
    return KINDS[n.kind].shared(n.attrs).get(key, f"{n.name}.{key}")


def matmul_by_transposed(x: str, n: Node, key: str, out: str) -> list[NodeProto]:
    """x @ Wᵀ for a weight stored (out, in) as Gemm's transB reads it; MatMul because x is (N, T, in)."""
    wt = f"{out}/{key}T"
    return [op("Transpose", [param(n, key)], wt, wt, perm=[1, 0]), op("MatMul", [x, wt], out, out)]


def linear(x: str, n: Node, weight: str, bias: str | None, out: str) -> list[NodeProto]:
    """x @ Wᵀ + b on a sequence (N, T, in): the bias add only when the layer has one."""
    if bias is None:
        return matmul_by_transposed(x, n, weight, out)
    product = f"{out}/product"
    return [*matmul_by_transposed(x, n, weight, product), op("Add", [product, param(n, bias)], out, out)]


def reduce_mean(x: str, axes: list[int], out: str, opset: int, keepdims: int) -> list[NodeProto]:
    if opset >= REDUCE_AXES_INPUT_OPSET:
        return [const(f"{out}/axes", axes), op("ReduceMean", [x, f"{out}/axes"], out, out, keepdims=keepdims)]
    return [op("ReduceMean", [x], out, out, axes=axes, keepdims=keepdims)]


def unary(onnx_op: str, **fixed: Any) -> Lowering:
    def lower(n: Node, x: list[str], opset: int) -> list[NodeProto]:
        return [op(onnx_op, x[:1], n.name, n.name, **fixed)]
    return lower


def lower_conv(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    a = n.attrs
    ins = [x[0], param(n, "W")] + ([param(n, "b")] if a["bias"] else [])
    return [op("Conv", ins, n.name, n.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
               dilations=list(a["dilation"]), pads=list(a["pads"]), group=a["groups"])]


def lower_upconv(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    a = n.attrs
    ins = [x[0], param(n, "W")] + ([param(n, "b")] if a["bias"] else [])
    return [op("ConvTranspose", ins, n.name, n.name, kernel_shape=list(a["kernel"]),
               strides=list(a["stride"]), dilations=list(a["dilation"]), pads=list(a["pads"]),
               group=a["groups"], output_padding=[a["outpad"]] * 2)]


def pool(onnx_op: str, **fixed: Any) -> Lowering:
    def lower(n: Node, x: list[str], opset: int) -> list[NodeProto]:
        a = n.attrs
        # ONNX's ceil_mode drops a window that would start in the right padding: the Caffe/PyTorch
        # rule dlc's shape arithmetic follows, so the output sizes agree.
        # MaxPool has dilations from opset 10, AveragePool only from 19: written only where they are not 1
        dilated = {"dilations": list(a["dilation"])} if max(a["dilation"]) > 1 else {}
        return [op(onnx_op, x[:1], n.name, n.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                   pads=list(a["pads"]), ceil_mode=int(bool(a.get("ceil"))), **dilated, **fixed)]
    return lower


def global_pool(onnx_op: str) -> Lowering:
    def lower(n: Node, x: list[str], opset: int) -> list[NodeProto]:
        # Global*Pool keeps 1x1 spatial axes, as dlc's gap/gmp with `keep`; without it they give a vector.
        if n.attrs["keep"]:
            return [op(onnx_op, x[:1], n.name, n.name)]
        return [op(onnx_op, x[:1], f"{n.name}/pooled", f"{n.name}/pool"),
                op("Flatten", [f"{n.name}/pooled"], n.name, n.name, axis=1)]
    return lower


def lower_fc(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    if n.attrs["steps"] is not None:  # a sequence: every step through the same weight
        return linear(x[0], n, "W", "b" if n.attrs["bias"] else None, n.name)
    ins = [x[0], param(n, "W")] + ([param(n, "b")] if n.attrs["bias"] else [])
    return [op("Gemm", ins, n.name, n.name, transB=1)]


def lower_dropout(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # Without a training_mode input Dropout is the identity; the ratio is kept for readers of the model.
    ratio = f"{n.name}/ratio"
    return [const(ratio, n.attrs["p"], np.float32), op("Dropout", [x[0], ratio], n.name, n.name)]


def lower_bn(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    ins = [x[0]] + [param(n, k) for k in ("gamma", "beta", "mean", "var")]
    return [op("BatchNormalization", ins, n.name, n.name, epsilon=float(n.attrs["eps"]),
               momentum=1.0 - float(n.attrs["momentum"]))]  # ONNX's momentum weighs the old statistic


def lower_instancenorm(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("InstanceNormalization", [x[0], param(n, "gamma"), param(n, "beta")], n.name, n.name,
               epsilon=float(n.attrs["eps"]))]


def lower_groupnorm(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # PyTorch's form (both exporters): InstanceNormalization of the (N, G, rest) view with an identity scale
    # and shift, then the channels' gamma and beta broadcast over the positions. Not GroupNormalization:
    # ONNX's shape inference gives it no shape, and before opset 21 it scales per group.
    a, p = n.attrs, n.name
    g = a["groups"]
    per_channel = [a["channels"]] + [1] * (len(n.out_shape) - 1)
    return [const(f"{p}/groups", [0, g, -1]),
            op("Reshape", [x[0], f"{p}/groups"], f"{p}/grouped", f"{p}/group"),
            const(f"{p}/ones", np.ones(g), np.float32), const(f"{p}/zeros", np.zeros(g), np.float32),
            op("InstanceNormalization", [f"{p}/grouped", f"{p}/ones", f"{p}/zeros"], f"{p}/normalised",
               f"{p}/normalise", epsilon=float(a["eps"])),
            const(f"{p}/shape", [0, *n.out_shape]),  # a constant (PyTorch: Shape of x), which opset 13 infers
            op("Reshape", [f"{p}/normalised", f"{p}/shape"], f"{p}/ungrouped", f"{p}/ungroup"),
            const(f"{p}/per_channel", per_channel),
            op("Reshape", [param(n, "gamma"), f"{p}/per_channel"], f"{p}/gamma", f"{p}/gamma"),
            op("Reshape", [param(n, "beta"), f"{p}/per_channel"], f"{p}/beta", f"{p}/beta"),
            op("Mul", [f"{p}/ungrouped", f"{p}/gamma"], f"{p}/scaled", f"{p}/scale"),
            op("Add", [f"{p}/scaled", f"{p}/beta"], p, p)]


def lower_lrn(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    a, p = n.attrs, n.name
    size, alpha, beta, k = a["size"], float(a["alpha"]), float(a["beta"]), float(a["k"])
    if size % 2:
        return [op("LRN", x[:1], p, p, size=size, alpha=alpha, beta=beta, bias=k)]
    # onnxruntime refuses an even LRN size, which ONNX allows; the same window (floor((size-1)/2)
    # channels before, the rest after) as an average of squares over a (size, 1, 1) box.
    before = (size - 1) // 2
    return [op("Mul", [x[0], x[0]], f"{p}/square", f"{p}/square"),
            const(f"{p}/axis", [1]),
            op("Unsqueeze", [f"{p}/square", f"{p}/axis"], f"{p}/stacked", f"{p}/stack"),
            op("AveragePool", [f"{p}/stacked"], f"{p}/mean_stacked", f"{p}/window", kernel_shape=[size, 1, 1],
               pads=[before, 0, 0, size - 1 - before, 0, 0], count_include_pad=1),
            op("Squeeze", [f"{p}/mean_stacked", f"{p}/axis"], f"{p}/mean", f"{p}/unstack"),
            const(f"{p}/alpha", alpha, np.float32), const(f"{p}/k", k, np.float32),
            const(f"{p}/beta", beta, np.float32),
            op("Mul", [f"{p}/mean", f"{p}/alpha"], f"{p}/scaled", f"{p}/scale"),
            op("Add", [f"{p}/scaled", f"{p}/k"], f"{p}/base", f"{p}/offset"),
            op("Pow", [f"{p}/base", f"{p}/beta"], f"{p}/denominator", f"{p}/power"),
            op("Div", [x[0], f"{p}/denominator"], p, p)]


def lower_relu6(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    lo, hi = f"{n.name}/min", f"{n.name}/max"
    return [const(lo, 0.0, np.float32), const(hi, 6.0, np.float32), op("Clip", [x[0], lo, hi], n.name, n.name)]


def lower_elu(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Elu", x[:1], n.name, n.name, alpha=float(n.attrs["alpha"]))]


def lower_leaky(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("LeakyRelu", x[:1], n.name, n.name, alpha=float(n.attrs["alpha"]))]


def lower_softmax(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Softmax", x[:1], n.name, n.name, axis=n.attrs["axis"] + 1)]  # +1: the batch axis


# ---- the math kinds of issue 28 ----

def lower_logsoftmax(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("LogSoftmax", x[:1], n.name, n.name, axis=n.attrs["axis"] + 1)]


def lower_clip(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # an absent bound (an infinite one) is an omitted input, as PyTorch's exporters write clamp(min=...)
    bounds, nodes = [], []
    for key in ("min", "max"):
        if math.isinf(n.attrs[key]):
            bounds.append("")
        else:
            bounds.append(f"{n.name}/{key}")
            nodes.append(const(bounds[-1], n.attrs[key], np.float32))
    return [*nodes, op("Clip", [x[0], *bounds], n.name, n.name)]


def lower_prelu(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("PRelu", [x[0], param(n, "alpha")], n.name, n.name)]  # alpha is stored in PRelu's layout


def lower_shift(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Add", [x[0], param(n, "b")], n.name, n.name)]


def lower_glu(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    p, axis = n.name, n.attrs["axis"]
    half = n.out_shape[axis]
    return [const(f"{p}/halves", [half, half]),
            helper.make_node("Split", [x[0], f"{p}/halves"], [f"{p}/value", f"{p}/gate_in"], name=f"{p}/split",
                             axis=axis + 1),
            op("Sigmoid", [f"{p}/gate_in"], f"{p}/gate", f"{p}/sigmoid"),
            op("Mul", [f"{p}/value", f"{p}/gate"], p, p)]


def lower_reduce(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    a, p = n.attrs, n.name
    axes, keep = [a["axis"] + 1], int(a["keep"])
    if not a["sum"]:
        return reduce_mean(x[0], axes, p, opset, keepdims=keep)
    # ReduceSum took its axes as an input five opsets before ReduceMean did: from 13, dlc's lowest
    return [const(f"{p}/axes", axes), op("ReduceSum", [x[0], f"{p}/axes"], p, p, keepdims=keep)]


def lower_gelu(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    if opset >= GELU_OPSET:
        return [op("Gelu", x[:1], n.name, n.name)]
    # x * (1 + erf(x / sqrt 2)) / 2, the exact Gelu
    p = n.name
    return [const(f"{p}/rsqrt2", 1 / math.sqrt(2), np.float32), const(f"{p}/one", 1.0, np.float32),
            const(f"{p}/half", 0.5, np.float32),
            op("Mul", [x[0], f"{p}/rsqrt2"], f"{p}/scaled", f"{p}/scale"),
            op("Erf", [f"{p}/scaled"], f"{p}/erf", f"{p}/erf"),
            op("Add", [f"{p}/erf", f"{p}/one"], f"{p}/shifted", f"{p}/shift"),
            op("Mul", [x[0], f"{p}/shifted"], f"{p}/product", f"{p}/product"),
            op("Mul", [f"{p}/product", f"{p}/half"], n.name, n.name)]


def lower_silu(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # x * sigmoid(x), as PyTorch's exporters write SiLU; ONNX's own Swish comes at opset 24, past MAX_OPSET
    return [op("Sigmoid", x[:1], f"{n.name}/sigmoid", f"{n.name}/sigmoid"),
            op("Mul", [x[0], f"{n.name}/sigmoid"], n.name, n.name)]


# ---- the kinds of today's vision networks (issue 21) ----

def lower_hardsigmoid(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # PyTorch's relu6(x + 3) / 6 is HardSigmoid's max(0, min(1, alpha x + beta)) at alpha 1/6, beta 1/2
    return [op("HardSigmoid", x[:1], n.name, n.name, alpha=1 / 6, beta=0.5)]


def lower_hardswish(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # x * hardsigmoid(x) in every opset: HardSwish itself comes at opset 14, past dlc's lowest
    return [op("HardSigmoid", x[:1], f"{n.name}/gate", f"{n.name}/gate", alpha=1 / 6, beta=0.5),
            op("Mul", [x[0], f"{n.name}/gate"], n.name, n.name)]


def lower_scale(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Mul", [x[0], param(n, "gamma")], n.name, n.name)]  # gamma is stored in its broadcast layout


def lower_upsample(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    f = float(n.attrs["factor"])
    scales = f"{n.name}/scales"
    # asymmetric + floor copies input pixel floor(i / f) to output pixel i: plain pixel repetition.
    return [const(scales, [1.0, 1.0, f, f], np.float32),
            op("Resize", [x[0], "", scales], n.name, n.name, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")]


# dlc's pad modes by ONNX Pad's names for them
PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def lower_pad(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    t, l, b, r = n.attrs["pads"]
    pads, value = f"{n.name}/pads", f"{n.name}/value"
    return [const(pads, [0, 0, t, l, 0, 0, b, r]), const(value, n.attrs["value"], np.float32),
            op("Pad", [x[0], pads, value], n.name, n.name, mode=PAD_MODES[n.attrs["mode"]])]


def lower_pixelshuffle(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    # CRD (column, row, depth) is PyTorch's PixelShuffle order; DCR, the default, is TensorFlow's depth_to_space
    return [op("DepthToSpace", x[:1], n.name, n.name, blocksize=n.attrs["factor"], mode="CRD")]


def lower_tile(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    repeats = f"{n.name}/repeats"
    return [const(repeats, [1, *n.attrs["repeats"]]), op("Tile", [x[0], repeats], n.name, n.name)]


def lower_slice(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    a, p = n.attrs, n.name
    return [const(f"{p}/starts", [a["begin"]]), const(f"{p}/ends", [a["begin"] + a["length"]]),
            const(f"{p}/axes", [a["dim"] + 1]),
            op("Slice", [x[0], f"{p}/starts", f"{p}/ends", f"{p}/axes"], p, p)]


def lower_reshape(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    shape = f"{n.name}/shape"  # 0 copies the batch
    return [const(shape, [0, *n.attrs["shape"]]), op("Reshape", [x[0], shape], n.name, n.name)]


def lower_embed(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Gather", [param(n, "W"), x[0]], n.name, n.name, axis=0)]


def lower_layernorm(n: Node, x, opset):
    if not n.attrs["channels"]:
        return normalise_last(n, x[0], n.name, opset)
    # each position's channels: LayerNormalization of the channels-last view, between two Transposes, as
    # PyTorch's exporters write ConvNeXt's LayerNorm2d
    p, rank = n.name, len(n.out_shape) + 1
    last = [0, *range(2, rank), 1]
    back = [0, rank - 1, *range(1, rank - 1)]
    return [op("Transpose", x[:1], f"{p}/channels_last", f"{p}/channels_last", perm=last),
            *normalise_last(n, f"{p}/channels_last", f"{p}/normalised_last", opset),
            op("Transpose", [f"{p}/normalised_last"], p, p, perm=back)]


def normalise_last(n: Node, x: str, out: str, opset: int) -> list[NodeProto]:
    """layernorm over the last axis of tensor x into `out`."""
    p, eps, x = out, float(n.attrs["eps"]), [x]
    if opset >= LAYERNORM_OPSET:
        return [op("LayerNormalization", [x[0], param(n, "gamma"), param(n, "beta")], p, p, axis=-1, epsilon=eps)]
    # (x - mean) / sqrt(variance + eps) * gamma + beta over the last axis, as LayerNormalization defines it
    return [*reduce_mean(x[0], [-1], f"{p}/mean", opset, keepdims=1),
            op("Sub", [x[0], f"{p}/mean"], f"{p}/centred", f"{p}/centre"),
            op("Mul", [f"{p}/centred", f"{p}/centred"], f"{p}/squared", f"{p}/square"),
            *reduce_mean(f"{p}/squared", [-1], f"{p}/variance", opset, keepdims=1),
            const(f"{p}/eps", eps, np.float32),
            op("Add", [f"{p}/variance", f"{p}/eps"], f"{p}/shifted", f"{p}/shift"),
            op("Sqrt", [f"{p}/shifted"], f"{p}/std", f"{p}/std"),
            op("Div", [f"{p}/centred", f"{p}/std"], f"{p}/normalised", f"{p}/normalise"),
            op("Mul", [f"{p}/normalised", param(n, "gamma")], f"{p}/scaled", f"{p}/scale"),
            op("Add", [f"{p}/scaled", param(n, "beta")], p, p)]


def lower_rmsnorm(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    p, eps = n.name, float(n.attrs["eps"])
    if opset >= RMSNORM_OPSET:
        return [op("RMSNormalization", [x[0], param(n, "gamma")], p, p, axis=-1, epsilon=eps)]
    # x / sqrt(mean(x²) + eps) * gamma over the last axis, RMSNormalization's own definition
    return [op("Mul", [x[0], x[0]], f"{p}/squared", f"{p}/square"),
            *reduce_mean(f"{p}/squared", [-1], f"{p}/mean_square", opset, keepdims=1),
            const(f"{p}/eps", eps, np.float32),
            op("Add", [f"{p}/mean_square", f"{p}/eps"], f"{p}/shifted", f"{p}/shift"),
            op("Sqrt", [f"{p}/shifted"], f"{p}/rms", f"{p}/rms"),
            op("Div", [x[0], f"{p}/rms"], f"{p}/normalised", f"{p}/normalise"),
            op("Mul", [f"{p}/normalised", param(n, "gamma")], p, p)]


def lower_attention(n: Node, x, opset):
    """Multi-head attention as MatMul/Softmax: projections (keys and values of the `from=` source for
    cross-attention), heads split by Reshape/Transpose, rope on queries and keys (RotaryEmbedding from
    opset 23, below it Mul/Add with cos and sin tables), grouped key/value heads repeated to the query
    heads (Unsqueeze/Expand/Reshape, PyTorch's repeat_interleave), scaled scores, the causal or window
    mask as a constant (Where to -inf), the padding mask of `mask=` (Cast to bool, Where to the lowest
    float, as the NumPy engine), softmax, the weighted sum, heads joined, the output projection.
    Attention dropout is the identity at inference.
    Swin's windows (window=HxW) gather the steps into windows of the batch axis first (Gather by the
    NumPy engine's window_order, Reshape), add the bias table read at relative_index (Gather, Reshape,
    Transpose) and the shifted windows' -100 mask (a constant) to the scaled scores, and put each
    window's outputs back on their steps (Reshape, Gather by the inverse order)."""
    a, p = n.attrs, n.name
    if not isinstance(a["window"], tuple):
        return attention_nodes(n, x, opset, a["steps"], a["source_steps"], p)
    order = window_order(a["grid"], a["window"], a["shift"])
    tokens = a["window"][0] * a["window"][1]
    nodes = [const(f"{p}/order", order.tolist()),
             op("Gather", [x[0], f"{p}/order"], f"{p}/gathered", f"{p}/gather", axis=1),
             const(f"{p}/windows_shape", [-1, tokens, a["dim"]]),
             op("Reshape", [f"{p}/gathered", f"{p}/windows_shape"], f"{p}/windows", f"{p}/windows")]
    nodes += attention_nodes(n, [f"{p}/windows"], opset, tokens, tokens, f"{p}/windowed")
    return nodes + [const(f"{p}/steps_shape", [-1, a["steps"], a["dim"]]),
                    op("Reshape", [f"{p}/windowed", f"{p}/steps_shape"], f"{p}/in_order", f"{p}/in_order"),
                    const(f"{p}/back", np.argsort(order).tolist()),
                    op("Gather", [f"{p}/in_order", f"{p}/back"], p, p, axis=1)]


def window_bias(n: Node, scores: str) -> tuple[list[NodeProto], str]:
    """Swin's additions to a window's scaled scores (N·windows, heads, N, N): the bias table read at each
    pair's offset, (heads, N, N), then with shifted windows the mask, (windows, 1, N, N), added to the
    scores seen as (N, windows, heads, N, N)."""
    a, p = n.attrs, n.name
    tokens, heads = a["window"][0] * a["window"][1], a["heads"]
    nodes = [const(f"{p}/relative_index", relative_index(a["window"]).tolist()),
             op("Gather", [param(n, "B"), f"{p}/relative_index"], f"{p}/bias_pairs", f"{p}/bias_pairs", axis=0),
             const(f"{p}/bias_shape", [tokens, tokens, heads]),
             op("Reshape", [f"{p}/bias_pairs", f"{p}/bias_shape"], f"{p}/bias_grid", f"{p}/bias_grid"),
             op("Transpose", [f"{p}/bias_grid"], f"{p}/bias", f"{p}/bias", perm=[2, 0, 1]),
             op("Add", [scores, f"{p}/bias"], f"{p}/biased", f"{p}/add_bias")]
    if not any(a["shift"]):
        return nodes, f"{p}/biased"
    mask = window_mask(a["grid"], a["window"], a["shift"])
    return nodes + [const(f"{p}/by_window_shape", [-1, len(mask), heads, tokens, tokens]),
                    op("Reshape", [f"{p}/biased", f"{p}/by_window_shape"], f"{p}/by_window", f"{p}/by_window"),
                    const(f"{p}/mask", mask[:, None], np.float32),
                    op("Add", [f"{p}/by_window", f"{p}/mask"], f"{p}/masked_windows", f"{p}/add_mask"),
                    const(f"{p}/scores_shape", [-1, heads, tokens, tokens]),
                    op("Reshape", [f"{p}/masked_windows", f"{p}/scores_shape"], f"{p}/masked", f"{p}/unwindow")
                    ], f"{p}/masked"


def attention_nodes(n: Node, x: list[str], opset: int, t: int, s: int, out: str) -> list[NodeProto]:
    """lower_attention over the T steps of x[0] (N, T, D), keys from S steps (the source's with
    `from=`): the whole sequence, or Swin's windows."""
    a, p = n.attrs, n.name
    d, h, dh, kv = a["dim"], a["heads"], a["head_dim"], a["kv"]
    biases = attention_biases(a)
    # the labelled inputs follow the current tensor in the order of the options: from=, then mask=
    source = x[1] if a["from"] is not None else x[0]
    nodes = [const(f"{p}/joined_shape", [0, t, d])]
    split = {}  # each projection's heads (N, T, heads, dh), turned and repeated as the options say
    for w, heads, read, steps in (("q", h, x[0], t), ("k", kv, source, s), ("v", kv, source, s)):
        nodes += linear(read, n, f"W{w}", f"b{w}" if f"b{w}" in biases else None, f"{p}/{w}")
        now, turn = f"{p}/{w}", a["rope"] and w != "v"
        if turn and opset >= ROTARY_OPSET:
            nodes += rotary_embedding(n, now, heads, f"{p}/{w}_turned", tables=w == "q")
            now = f"{p}/{w}_turned"
        nodes += [const(f"{p}/{w}_shape", [0, steps, heads, dh]),
                  op("Reshape", [now, f"{p}/{w}_shape"], f"{p}/{w}_split", f"{p}/{w}_split")]
        now = f"{p}/{w}_split"
        if turn and opset < ROTARY_OPSET:
            nodes += rotate_half(n, now, f"{p}/{w}_turned", tables=w == "q")
            now = f"{p}/{w}_turned"
        if w != "q" and kv < h:
            nodes += repeat_heads(n, now, f"{p}/{w}_repeated", steps)
            now = f"{p}/{w}_repeated"
        split[w] = now
    # q, v: (N, H, T, dh); k: (N, H, dh, T), so one MatMul gives the scores
    nodes += [op("Transpose", [split["q"]], f"{p}/q_heads", f"{p}/q_heads", perm=[0, 2, 1, 3]),
              op("Transpose", [split["k"]], f"{p}/k_heads", f"{p}/k_heads", perm=[0, 2, 3, 1]),
              op("Transpose", [split["v"]], f"{p}/v_heads", f"{p}/v_heads", perm=[0, 2, 1, 3]),
              op("MatMul", [f"{p}/q_heads", f"{p}/k_heads"], f"{p}/scores", f"{p}/scores"),
              const(f"{p}/scale", 1 / math.sqrt(dh), np.float32),
              op("Mul", [f"{p}/scores", f"{p}/scale"], f"{p}/scaled", f"{p}/scale_scores")]
    scores = f"{p}/scaled"
    if a["causal"]:
        positions = np.arange(t)
        nodes += [const(f"{p}/future", hidden_keys(positions, positions, a["window"]), np.bool_),
                  const(f"{p}/minus_inf", -np.inf, np.float32),
                  op("Where", [f"{p}/future", f"{p}/minus_inf", scores], f"{p}/masked", f"{p}/mask")]
        scores = f"{p}/masked"
    if isinstance(a["window"], tuple):
        extra, scores = window_bias(n, scores)
        nodes += extra
    if a["mask"] is not None:  # (N, S) -> (N, 1, 1, S): one row of keys for every head and query
        nodes += [op("Cast", [x[-1]], f"{p}/kept", f"{p}/kept", to=TensorProto.BOOL),
                  const(f"{p}/kept_axes", [1, 2]),
                  op("Unsqueeze", [f"{p}/kept", f"{p}/kept_axes"], f"{p}/kept_keys", f"{p}/kept_keys"),
                  const(f"{p}/lowest", np.finfo(np.float32).min, np.float32),
                  op("Where", [f"{p}/kept_keys", scores, f"{p}/lowest"], f"{p}/padded", f"{p}/padding")]
        scores = f"{p}/padded"
    nodes += [op("Softmax", [scores], f"{p}/weights", f"{p}/softmax", axis=-1),
              op("MatMul", [f"{p}/weights", f"{p}/v_heads"], f"{p}/heads", f"{p}/weighted_sum"),
              op("Transpose", [f"{p}/heads"], f"{p}/heads_last", f"{p}/join", perm=[0, 2, 1, 3]),
              op("Reshape", [f"{p}/heads_last", f"{p}/joined_shape"], f"{p}/joined", f"{p}/joined")]
    return nodes + linear(f"{p}/joined", n, "Wo", "bo" if "bo" in biases else None, out)


def rotate_half(n: Node, x: str, out: str, tables: bool) -> list[NodeProto]:
    """Rope on heads (N, T, heads, dh) below opset 23: x·cos + (x2, x1)·(-sin, sin), the tables (T, 1, dh)
    constants from the NumPy engine's rotary_tables, so both compute the same angles. The tables are
    one pair per layer, written with the queries' rotation and read by the keys' too."""
    t, dh, p = n.attrs["steps"], n.attrs["head_dim"], n.name
    cos, sin = rotary_tables(np.arange(t), dh, n.attrs["rope"], np.float32)
    written = [const(f"{p}/cos", cos[:, None, :], np.float32), const(f"{p}/sin", sin[:, None, :], np.float32),
               const(f"{p}/halves", [dh // 2, dh // 2])]
    return [*(written if tables else []),
            op("Mul", [x, f"{p}/cos"], f"{out}/cos", f"{out}/cos"),
            helper.make_node("Split", [x, f"{p}/halves"], [f"{out}/first", f"{out}/second"], name=f"{out}/split",
                             axis=-1),
            op("Concat", [f"{out}/second", f"{out}/first"], f"{out}/swapped", f"{out}/swap", axis=-1),
            op("Mul", [f"{out}/swapped", f"{p}/sin"], f"{out}/sin", f"{out}/sin"),
            op("Add", [f"{out}/cos", f"{out}/sin"], out, out)]


def rotary_embedding(n: Node, x: str, heads: int, out: str, tables: bool) -> list[NodeProto]:
    """Rope from opset 23: RotaryEmbedding on the projection (N, T, heads·dh) with caches (T, dh/2) read
    at positions 0..T-1 of every sample (onnxruntime wants the positions batch-shaped); the caches and
    positions written once per layer, with the queries' rotation."""
    t, dh, p = n.attrs["steps"], n.attrs["head_dim"], n.name
    cos, sin = rotary_tables(np.arange(t), dh, n.attrs["rope"], np.float32)
    written = [const(f"{p}/cos_cache", cos[:, :dh // 2], np.float32),
               const(f"{p}/sin_cache", sin[:, dh // 2:], np.float32),  # the positive half of the table
               const(f"{p}/steps", list(range(t))),
               helper.make_node("Shape", [x], [f"{p}/batch_steps"], name=f"{p}/batch_steps", start=0, end=2),
               op("Expand", [f"{p}/steps", f"{p}/batch_steps"], f"{p}/positions", f"{p}/positions")]
    rotation = op("RotaryEmbedding", [x, f"{p}/cos_cache", f"{p}/sin_cache", f"{p}/positions"], out, out,
                  num_heads=heads)
    return [*(written if tables else []), rotation]


def repeat_heads(n: Node, x: str, out: str, steps: int) -> list[NodeProto]:
    """(N, T, kv, dh) -> (N, T, heads, dh), each key/value head repeated for the heads/kv query heads of its
    group, in a row (PyTorch's repeat_interleave, Hugging Face's repeat_kv)."""
    a = n.attrs
    group = a["heads"] // a["kv"]
    return [const(f"{out}/axis", [3]), op("Unsqueeze", [x, f"{out}/axis"], f"{out}/one", f"{out}/unsqueeze"),
            const(f"{out}/group", [1, 1, 1, group, 1]),
            op("Expand", [f"{out}/one", f"{out}/group"], f"{out}/grouped", f"{out}/expand"),
            const(f"{out}/shape", [0, steps, a["heads"], a["head_dim"]]),
            op("Reshape", [f"{out}/grouped", f"{out}/shape"], out, out)]


def lower_posembed(n: Node, x, opset):
    a, p = n.attrs, n.name
    if a["fixed"]:  # a constant, not an initializer: the sinusoids are no parameters
        return [const(f"{p}/sinusoids", sinusoids(0, a["steps"], a["dim"], np.float32), np.float32),
                op("Add", [x[0], f"{p}/sinusoids"], p, p)]
    if a["positions"] == a["steps"]:
        return [op("Add", [x[0], param(n, "P")], p, p)]
    # the table's first T rows, as Hugging Face's BERT gathers its position ids 0..T-1
    return [const(f"{p}/first", list(range(a["steps"]))),
            op("Gather", [param(n, "P"), f"{p}/first"], f"{p}/rows", f"{p}/rows", axis=0),
            op("Add", [x[0], f"{p}/rows"], p, p)]


def lower_clstoken(n: Node, x, opset):
    # the token, (D,), broadcast to (N, 1, D) for the batch at hand, then put before the first step
    p, d = n.name, n.attrs["dim"]
    return [op("Shape", [x[0]], f"{p}/input_shape", f"{p}/input_shape"),
            const(f"{p}/batch_axis", [0]),
            op("Gather", [f"{p}/input_shape", f"{p}/batch_axis"], f"{p}/batch", f"{p}/batch", axis=0),
            const(f"{p}/step_shape", [1, d]),
            op("Concat", [f"{p}/batch", f"{p}/step_shape"], f"{p}/token_shape", f"{p}/token_shape", axis=0),
            op("Expand", [param(n, "cls"), f"{p}/token_shape"], f"{p}/token", f"{p}/expand"),
            op("Concat", [f"{p}/token", x[0]], p, p, axis=1)]


def lower_tokens(n: Node, x, opset):
    p = n.name
    steps, c = n.out_shape
    return [const(f"{p}/shape", [0, c, steps]),
            op("Reshape", [x[0], f"{p}/shape"], f"{p}/flat", f"{p}/flatten"),
            op("Transpose", [f"{p}/flat"], p, p, perm=[0, 2, 1])]


def lower_image(n: Node, x, opset):
    p = n.name
    return [op("Transpose", [x[0]], f"{p}/channels", f"{p}/transpose", perm=[0, 2, 1]),
            const(f"{p}/shape", [0, 0, *n.attrs["grid"]]),
            op("Reshape", [f"{p}/channels", f"{p}/shape"], p, f"{p}/grid")]


def lower_patchmerge(n: Node, x, opset):
    # the NumPy kernel's view: (N, H/2, row a, W/2, column b, C), neighbours in Swin's order (b, a)
    p, (h, w), c = n.name, n.attrs["grid"], n.attrs["features"]
    return [const(f"{p}/neighbours", [0, h // 2, 2, w // 2, 2, c]),
            op("Reshape", [x[0], f"{p}/neighbours"], f"{p}/grid", f"{p}/grid"),
            op("Transpose", [f"{p}/grid"], f"{p}/joined", f"{p}/join", perm=[0, 1, 3, 4, 2, 5]),
            const(f"{p}/shape", [0, h * w // 4, 4 * c]),
            op("Reshape", [f"{p}/joined", f"{p}/shape"], p, p)]


def lower_seqpool(n: Node, x, opset):
    p, mode = n.name, n.attrs["mode"]
    if mode == "mean":
        return reduce_mean(x[0], [1], p, opset, keepdims=0)
    step = 0 if mode == "first" else n.attrs["steps"] - 1
    # a scalar index: Gather drops the step axis
    return [const(f"{p}/step", step), op("Gather", [x[0], f"{p}/step"], p, p, axis=1)]


RECURRENT_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def lower_recurrent(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    """(N, T, D) -> ONNX's time-major (T, N, D); Y (T, dirs, N, H) or Y_h (dirs, N, H) back to dlc's
    (N, T, dirs*H) or (N, dirs*H). onnxruntime refuses layout=1, hence the transposes."""
    a, p = n.attrs, n.name
    dirs, hidden = a["directions"], a["hidden"]
    extra = {"linear_before_reset": 1} if n.kind == "gru" else {}
    nodes = [op("Transpose", [x[0]], f"{p}/time_major", f"{p}/to_time_major", perm=[1, 0, 2])]
    ins = [f"{p}/time_major", param(n, "W"), param(n, "R"), param(n, "B")]
    direction = "bidirectional" if dirs == 2 else "forward"
    if a["sequences"]:
        nodes += [helper.make_node(RECURRENT_OPS[n.kind], ins, [f"{p}/Y"], name=f"{p}/{n.kind}",
                                   hidden_size=hidden, direction=direction, **extra),
                  op("Transpose", [f"{p}/Y"], f"{p}/batch_major", f"{p}/to_batch_major", perm=[2, 0, 1, 3]),
                  const(f"{p}/shape", [0, n.out_shape[0], dirs * hidden]),
                  op("Reshape", [f"{p}/batch_major", f"{p}/shape"], p, p)]
    else:
        # Y_h holds each direction's final state: the forward pass at step T, the backward one at step 1.
        nodes += [helper.make_node(RECURRENT_OPS[n.kind], ins, ["", f"{p}/Y_h"], name=f"{p}/{n.kind}",
                                   hidden_size=hidden, direction=direction, **extra),
                  op("Transpose", [f"{p}/Y_h"], f"{p}/batch_major", f"{p}/to_batch_major", perm=[1, 0, 2]),
                  const(f"{p}/shape", [0, dirs * hidden]),
                  op("Reshape", [f"{p}/batch_major", f"{p}/shape"], p, p)]
    return nodes


def lower_add(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Add" if len(x) == 2 else "Sum", x, n.name, n.name)]


def lower_mul(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    """The product of the inputs, one Mul per extra input; a vector of features gets the axes it is
    repeated over (N, C) -> (N, C, 1, 1) against an image, (N, 1, C) against a sequence, so that ONNX's
    broadcasting lines its features up with theirs."""
    p, factors = n.name, list(x)
    axes = f"{p}/positions"
    nodes = [const(axes, [2, 3] if len(n.out_shape) == 3 else [1])] if any(n.attrs["broadcast"]) else []
    for i, vector in enumerate(n.attrs["broadcast"]):
        if vector:
            spread = f"{p}/input{i}_spread"
            nodes.append(op("Unsqueeze", [x[i], axes], spread, spread))
            factors[i] = spread
    product = factors[0]
    for i, f in enumerate(factors[1:], start=1):
        out = p if i == len(factors) - 1 else f"{p}/product{i}"
        nodes.append(op("Mul", [product, f], out, out))
        product = out
    return nodes


def lower_concat(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    return [op("Concat", x, n.name, n.name, axis=n.attrs["axis"] + 1)]  # +1: the batch axis


def lower_elementwise(onnx_op: str):
    """maximum, minimum (variadic in ONNX) and pow, sub, div (two inputs): ONNX broadcasts as dlc does."""
    return lambda n, x, opset: [op(onnx_op, x, n.name, n.name)]


def lower_experts(n: Node, x: list[str], opset: int) -> list[NodeProto]:
    """A mixture's join: TopK of the router logits (ties to the lower index, as the engine), Softmax over
    the K kept, and the weighted sum of the K routed experts' outputs, gathered (GatherElements) from all
    E stacked. Every expert's branch runs on every step before it: ONNX has no dispatch of steps to
    experts short of Loop/If, and this dense form is what dlc's engines compute, so the export equals
    them; the gather keeps the join's own work to the K routed experts, as dlc counts it."""
    p, d = n.name, n.out_shape[-1]
    logits, outs = x[0], x[1:]
    return [
        const(f"{p}/k", [n.attrs["top"]]),
        helper.make_node("TopK", [logits, f"{p}/k"], [f"{p}/kept", f"{p}/index"], name=f"{p}/topk", axis=-1,
                         largest=1, sorted=1),
        op("Softmax", [f"{p}/kept"], f"{p}/weights", f"{p}/softmax", axis=-1),
        const(f"{p}/last", [-1]),
        const(f"{p}/expert_axis", [-2]),
        *(op("Unsqueeze", [o, f"{p}/expert_axis"], f"{p}/out{i}", f"{p}/out{i}") for i, o in enumerate(outs)),
        op("Concat", [f"{p}/out{i}" for i in range(len(outs))], f"{p}/stacked", f"{p}/stack", axis=-2),
        op("Unsqueeze", [f"{p}/index", f"{p}/last"], f"{p}/index1", f"{p}/index1"),
        const(f"{p}/features", [d]),
        op("Expand", [f"{p}/index1", f"{p}/features"], f"{p}/index_d", f"{p}/index_d"),
        op("GatherElements", [f"{p}/stacked", f"{p}/index_d"], f"{p}/routed", f"{p}/gather", axis=-2),
        op("Unsqueeze", [f"{p}/weights", f"{p}/last"], f"{p}/weights1", f"{p}/weights1"),
        op("Mul", [f"{p}/routed", f"{p}/weights1"], f"{p}/weighted", f"{p}/weigh"),
        const(f"{p}/axes", [-2]),
        op("ReduceSum", [f"{p}/weighted", f"{p}/axes"], n.name, n.name, keepdims=0),
    ]


LOWER: dict[str, Lowering] = {
    "conv": lower_conv,
    "dwconv": lower_conv,
    "upconv": lower_upconv,
    "maxpool": pool("MaxPool"),
    "avgpool": pool("AveragePool", count_include_pad=0),
    "gap": global_pool("GlobalAveragePool"),
    "gmp": global_pool("GlobalMaxPool"),
    "fc": lower_fc,
    "flatten": unary("Flatten", axis=1),
    "dropout": lower_dropout,
    "noise": unary("Identity"),  # training only
    "bn": lower_bn,
    "lrn": lower_lrn,
    "relu": unary("Relu"),
    "relu6": lower_relu6,
    "sigmoid": unary("Sigmoid"),
    "tanh": unary("Tanh"),
    "softmax": lower_softmax,
    "elu": lower_elu,
    "selu": unary("Selu"),
    "gelu": lower_gelu,
    "leaky": lower_leaky,
    "silu": lower_silu,
    "identity": unary("Identity"),
    "upsample": lower_upsample,
    "embed": lower_embed,
    "rnn": lower_recurrent,
    "lstm": lower_recurrent,
    "gru": lower_recurrent,
    "add": lower_add,
    "mul": lower_mul,
    "concat": lower_concat,
    # the elementwise merges of several inputs (issue 22)
    "maximum": lower_elementwise("Max"),
    "minimum": lower_elementwise("Min"),
    "pow": lower_elementwise("Pow"),
    "sub": lower_elementwise("Sub"),
    "div": lower_elementwise("Div"),
    "matmul": lower_elementwise("MatMul"),
    "layernorm": lower_layernorm,
    "rmsnorm": lower_rmsnorm,
    "attention": lower_attention,
    "posembed": lower_posembed,
    "clstoken": lower_clstoken,
    "tokens": lower_tokens,
    "image": lower_image,
    "seqpool": lower_seqpool,
    "patchmerge": lower_patchmerge,
    "experts": lower_experts,
    # the math kinds of issue 28
    "logsoftmax": lower_logsoftmax,
    "softplus": unary("Softplus"),
    "softsign": unary("Softsign"),
    "exp": unary("Exp"),
    "sqrt": unary("Sqrt"),
    "abs": unary("Abs"),
    "neg": unary("Neg"),
    "clip": lower_clip,
    "prelu": lower_prelu,
    "shift": lower_shift,
    "glu": lower_glu,
    "reduce": lower_reduce,
    "pad": lower_pad,
    "instancenorm": lower_instancenorm,
    "groupnorm": lower_groupnorm,  # issue 22
    "pixelshuffle": lower_pixelshuffle,
    "tile": lower_tile,
    "slice": lower_slice,
    "reshape": lower_reshape,
    # the kinds of today's vision networks (issue 21)
    "hardsigmoid": lower_hardsigmoid,
    "hardswish": lower_hardswish,
    "scale": lower_scale,
    "droppath": unary("Identity"),  # training only
}
