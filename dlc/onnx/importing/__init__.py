"""ONNX in: a model's operators mapped to dlc's layer kinds, written as a spec with its weights.

One function per kind, one dict (IMPORT) keyed by the kind's name, as the exporter's LOWER is: each
entry names the ONNX operators its pattern starts at and returns the layer it found there (its size
and options, for dlc.decompile to write, and its tensors, already in the registry's layouts, which are
ONNX's), or None when the operator is not that kind's. Helper nodes (Constants, shape arithmetic,
Identity on weights) are read as values, never imported. An operator no kind takes is a DlcError
naming it, its node and why.

The package: `reader` (the model as the patterns read it), one module of patterns per group of kinds as
in dlc/layers (conv, pool, dense, elementwise, recurrent, merge, sequence, resample), `attention` (the search
and its numerical check), `quantized` (a quantized model read as its float twin, before any pattern
sees it), `halves` (a projection chunked in two, diffusers' GEGLU, read as two) and `layout` (PyTorch's
channels-last stretches read channels first), which rewrite the model before the patterns too, and `importer` (the model's layers, then the spec dlc.decompile writes).
"""

from __future__ import annotations

from dlc.onnx.importing.attention import import_attention
from dlc.onnx.importing.conv import import_conv, import_dwconv, import_upconv, import_upsample
from dlc.onnx.importing.dense import import_embed, import_fc, import_flatten
from dlc.onnx.importing.elementwise import (import_bn, import_clip, import_dropout, import_elu, import_gelu,
                                            import_glu, import_groupnorm, import_identity, import_instancenorm, import_leaky,
                                            import_logsoftmax, import_lrn, import_prelu, import_reduce, import_relu,
                                            import_relu6, import_selu, import_shift, import_silu, import_softmax,
                                            import_softplus, import_softsign, unary)
from dlc.onnx.importing.elementwise import import_hardsigmoid, import_hardswish, import_scale
from dlc.onnx.importing.merge import elementwise_merge, import_add, import_concat, import_matmul, import_mul
from dlc.onnx.importing.mixture import import_experts
from dlc.onnx.importing.pool import global_pool, pool
from dlc.onnx.importing.reader import Import
from dlc.onnx.importing.recurrent import recurrent
from dlc.onnx.importing.resample import import_pad, import_pixelshuffle, import_reshape, import_slice, import_tile
from dlc.onnx.importing.sequence import (import_clstoken, import_image, import_layernorm, import_patchmerge,
                                         import_posembed, import_rmsnorm, import_seqpool, import_tokens)


IMPORT: dict[str, Import] = {
    # first: attention starts at a MatMul or Gemm that fc would take alone, or a Transpose or Reshape;
    # Slice: the roll of Swin's shifted windows; Gather: dlc's own windows, the steps gathered into them;
    # and the preparation of a padding mask (Unsqueeze, Cast, 1 - mask, times the lowest float) passes it on
    "attention": Import(("Transpose", "Reshape", "MatMul", "Gemm", "Slice", "Gather", "Unsqueeze", "Cast", "Sub", "Mul",
                         "Not", "Equal", "Where", "Expand"), import_attention),
    # before the other Reshape patterns and instancenorm: PyTorch's group norm starts at a Reshape to
    # (N, G, -1) and reads an InstanceNormalization (issue 22)
    "groupnorm": Import(("Reshape", "GroupNormalization"), import_groupnorm),
    # before sigmoid, which takes any Sigmoid, and before gelu: rmsnorm's square is a Mul of x by itself,
    # the product of SiLU is a Mul, and mul takes what is left of Mul (in this order)
    "rmsnorm": Import(("RMSNormalization", "Pow", "Mul"), import_rmsnorm),
    "silu": Import(("Sigmoid", "Swish"), import_silu),
    "mul": Import(("Mul", "Unsqueeze"), import_mul),
    "conv": Import(("Conv", "Pad"), import_conv),
    "dwconv": Import(("Conv", "Pad"), import_dwconv),
    "upconv": Import(("ConvTranspose",), import_upconv),
    # or an Unsqueeze to a 2-D pool and a Squeeze back: the old exporters' 1-D pools
    "maxpool": Import(("MaxPool", "Unsqueeze"), pool("maxpool")),
    "avgpool": Import(("AveragePool", "Unsqueeze"), pool("avgpool")),
    "gap": Import(("GlobalAveragePool", "ReduceMean", "Unsqueeze"),
                  global_pool("gap", ("GlobalAveragePool", "ReduceMean"))),
    "gmp": Import(("GlobalMaxPool", "ReduceMax", "Unsqueeze"),
                  global_pool("gmp", ("GlobalMaxPool", "ReduceMax"))),
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
    # An Identity operator passes its tensor on: it imports as no layer at all (and so does the dynamo
    # exporter's as_strided view of a whole tensor, a Reshape and a Gather).
    "identity": Import(("Identity", "Reshape"), import_identity),
    "upsample": Import(("Resize", "Upsample"), import_upsample),
    "embed": Import(("Gather",), import_embed),
    "rnn": Import(("Transpose", "RNN"), recurrent("rnn")),
    "lstm": Import(("Transpose", "LSTM"), recurrent("lstm")),
    "gru": Import(("Transpose", "GRU"), recurrent("gru")),
    "add": Import(("Add", "Sum"), import_add),
    "concat": Import(("Concat",), import_concat),
    "layernorm": Import(("LayerNormalization", "ReduceMean", "Transpose"), import_layernorm),
    "posembed": Import(("Add",), import_posembed),
    "clstoken": Import(("Concat",), import_clstoken),
    # a Transpose to (N, H, W, C) (Swin's token grid), or back and pooled; after attention, whose starts
    # these are too
    # a sequence back to an image (a Transpose and a Reshape, either order): before tokens, whose signal
    # form is a lone Transpose (0, 2, 1)
    "image": Import(("Transpose", "Reshape"), import_image),
    "tokens": Import(("Reshape", "Transpose"), import_tokens),
    "seqpool": Import(("Gather", "ReduceMean", "Transpose"), import_seqpool),
    # before slice, which takes any Slice: Swin's four strided Slices of a grid and their Concat; before
    # pixelshuffle and reshape: dlc's own Reshape, Transpose, Reshape
    "patchmerge": Import(("Slice", "Reshape"), import_patchmerge),
    "experts": Import(("TopK",), import_experts),
    # the math kinds of issue 28; after relu and relu6, which take their Clips, and after gap, layernorm and
    # seqpool, which take their ReduceMeans; softsign before abs, whose Abs its old form starts at
    "logsoftmax": Import(("LogSoftmax",), import_logsoftmax),
    "softplus": Import(("Softplus", "Greater"), import_softplus),
    "softsign": Import(("Softsign", "Abs"), import_softsign),
    "exp": Import(("Exp",), unary("exp")),
    "sqrt": Import(("Sqrt",), unary("sqrt")),
    "abs": Import(("Abs",), unary("abs")),
    "neg": Import(("Neg",), unary("neg")),
    "clip": Import(("Clip",), import_clip),
    "prelu": Import(("PRelu",), import_prelu),
    "shift": Import(("Add",), import_shift),
    "glu": Import(("Split",), import_glu),
    "reduce": Import(("ReduceMean", "ReduceSum"), import_reduce),
    # after conv and dwconv, which take a zero Pad that only feeds them
    "pad": Import(("Pad",), import_pad),
    "instancenorm": Import(("InstanceNormalization",), import_instancenorm),
    "pixelshuffle": Import(("DepthToSpace", "Reshape"), import_pixelshuffle),
    "tile": Import(("Tile", "Expand"), import_tile),
    "slice": Import(("Slice",), import_slice),
    # the elementwise merges of several inputs (issue 22); after rmsnorm and gelu, whose Pow and Div
    # read a stored exponent or divisor
    "maximum": Import(("Max",), elementwise_merge("maximum")),
    "minimum": Import(("Min",), elementwise_merge("minimum")),
    "pow": Import(("Pow",), elementwise_merge("pow")),
    "sub": Import(("Sub",), elementwise_merge("sub")),
    "div": Import(("Div",), elementwise_merge("div")),
    # after fc, which takes a MatMul or Gemm by a stored weight
    "matmul": Import(("MatMul", "Gemm"), import_matmul),
    # last of the Reshape patterns: what attention, flatten, tokens and pixelshuffle leave
    "reshape": Import(("Reshape", "Unsqueeze"), import_reshape),
    # the kinds of today's vision networks (issue 21); hardswish before hardsigmoid, which takes any
    # HardSigmoid, and scale after rmsnorm and mul, which take a square and a product of layers
    "hardswish": Import(("HardSwish", "HardSigmoid"), import_hardswish),
    "hardsigmoid": Import(("HardSigmoid",), import_hardsigmoid),
    "scale": Import(("Mul",), import_scale),
}


# Kinds no ONNX operator pattern gives: `input` is the graph's input itself; `noise` and `droppath` act in
# training only, so exporters write nothing for them.
NOT_IMPORTED = ("input", "noise", "droppath")


BY_OP: dict[str, list[str]] = {}


for _kind, _entry in IMPORT.items():
    for _op in _entry.ops:
        BY_OP.setdefault(_op, []).append(_kind)
