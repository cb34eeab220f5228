"""Kinds that keep their input's shape: activations, softmax, dropout, noise, bn, lrn.

Resolved attributes: dropout p; noise sigma; leaky/elu alpha; bn eps, momentum, channels (bn normalises
axis 1 of the batch tensor: channels of a signal, image or volume, features of a vector; gamma, beta trainable;
mean, var non-trainable); instancenorm eps, channels (gamma, beta trainable, per channel); groupnorm groups,
eps, channels (gamma, beta per channel; statistics per sample and group of C/groups channels); lrn size, alpha,
beta, k (across channels: x / (k + alpha/size * sum x^2)^beta).
softmax runs over channels of an image, signal or volume, features of a vector, the last axis of a
sequence, or over `axis` (the index in the shape, batch left out; negative from the end): resolved `axis` >= 0.
The math kinds (issue 28): prelu `alpha` slopes and shift `b` values, one or (flag `channels`) one per
feature, stored in ONNX's broadcast layout (C, 1, 1) for an image; logsoftmax like softmax; clip `min`,
`max`; glu halves `axis` (resolved) and gates the first half by the sigmoid of the second; reduce (flag
`sum`, else the mean) removes `axis` (resolved), or keeps it at 1 with `keep`.
Issue 21's kinds: hardsigmoid, hardswish (PyTorch's); scale `init` and its gamma, one per feature in the
broadcast layout (C, 1, 1) of an image; droppath `p` (one draw per sample in training, the identity after).
"""

from __future__ import annotations

import math
from typing import Callable

from dlc.errors import ShapeError
from dlc.layers import (AXIS, BIAS, SCALE, SHIFT, CostRule, LayerKind, Role, Shape, elements, feature_axis, register,
                        statistic)
from dlc.layers.spatial import image, is_spatial, show, spatial


def keep(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    return ins[0], dict(attrs)


def per_element(n: int) -> CostRule:
    return lambda a, ins, out: n * elements(out)


# Conventions: one FLOP per output element for each elementwise activation.
for _name, _opts in [("relu", {}), ("relu6", {}), ("sigmoid", {}), ("tanh", {}), ("elu", {"alpha": 1.0}),
                     ("selu", {}), ("gelu", {}), ("leaky", {"alpha": 0.01})]:
    register(LayerKind(_name, keep, options=_opts, flops=per_element(1)))

# SiLU (Swish with beta 1), x * sigmoid(x): 2 per element, the sigmoid and the product, as ONNX writes it
# (Sigmoid and Mul; its Swish operator comes at opset 24) and as PyTorch's exporters do.
register(LayerKind("silu", keep, aliases=("swish",), flops=per_element(2)))

register(LayerKind("identity", keep))

# ---- the kinds of today's vision networks (issue 21): MobileNetV3, EfficientNet, ConvNeXt ----
# PyTorch's hard activations (Howard et al., "Searching for MobileNetV3", 2019): hardsigmoid is
# relu6(x + 3) / 6, ONNX's HardSigmoid with alpha 1/6 and beta 1/2, 1 per element as the activations above;
# hardswish is x * hardsigmoid(x), 2 per element by silu's rule (the gate and the product).
register(LayerKind("hardsigmoid", keep, flops=per_element(1)))
register(LayerKind("hardswish", keep, flops=per_element(2)))


def resolve_axis(attrs: dict, ins: list[Shape], kind: str) -> int:
    """The axis a kind works along: `axis` as written (negative from the end), else the features."""
    shape, axis = ins[0], attrs["axis"]
    if axis is None:
        return feature_axis(shape)
    if not -len(shape) <= axis < len(shape):
        raise ShapeError(f"{kind} axis must be one of 0..{len(shape) - 1} of {show(shape)} (batch left out), "
                         f"or counted from the end as -1..-{len(shape)} (received axis={axis})", "axis")
    return axis % len(shape)


def along_axis(kind: str) -> Callable[[dict, list[Shape]], tuple[Shape, dict]]:
    return lambda attrs, ins: (ins[0], dict(attrs, axis=resolve_axis(attrs, ins, kind)))


# Softmax: exponential, sum and division, 3 per element (the max shift for stability is not counted).
register(LayerKind("softmax", along_axis("softmax"), options={"axis": AXIS}, flops=per_element(3)))

# ---- the math kinds of issue 28 ----
# LogSoftmax, x - max - log(sum(exp(x - max))): the exponential, the sum, the log and the subtraction, 4 per
# element (ONNX's LogSoftmax counts so in dlc/onnx/count.py, whoever wrote the model).
register(LayerKind("logsoftmax", along_axis("logsoftmax"), aliases=("log_softmax",), options={"axis": AXIS},
                   flops=per_element(4)))

# One ONNX operator per element each, 1 FLOP, as the activations above: softplus log(1 + exp(x)), softsign
# x / (1 + |x|), exp, sqrt, abs, neg.
for _name in ("softplus", "softsign", "exp", "sqrt", "abs", "neg"):
    register(LayerKind(_name, keep, flops=per_element(1)))


def resolve_clip(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if attrs["min"] > attrs["max"]:
        raise ShapeError(f"clip min must be <= max (received min={attrs['min']:g}, max={attrs['max']:g})", "min")
    return keep(attrs, ins)


# x held within [min, max]: one comparison each side at most, 1 per element as relu6 (ONNX's Clip).
register(LayerKind("clip", resolve_clip, options={"min": -math.inf, "max": math.inf}, flops=per_element(1)))


def features_layout(shape: Shape) -> Shape:
    """The shape of a tensor of one value per feature, laid out as ONNX broadcasts it against the
    batch-first input: (C, 1, 1) for an image, (F,) for a vector, (D,) for each step of a sequence."""
    axis = feature_axis(shape)
    return (shape[axis],) + (1,) * (len(shape) - 1 - axis)


def per_feature(attrs: dict, ins: list[Shape]) -> Shape:
    """The shape of a tensor of one value, or (flag `channels`) one per feature (features_layout)."""
    return features_layout(ins[0]) if attrs["channels"] else (1,)


# PReLU (He et al., "Delving Deep into Rectifiers", 2015): leaky with a learned slope, which starts at 0.25
# as in the paper and PyTorch and takes no weight decay (the paper's point: decay pulls it to relu).
# 1 per element as leaky.
register(LayerKind("prelu", keep, flags=("channels",), params=lambda a, ins: {"alpha": per_feature(a, ins)},
                   tensors={"alpha": Role("scale", constant=0.25)}, flops=per_element(1)))

# A learned value added to the input, one or one per feature (x + c as PyTorch writes it, a stored tensor
# added in an ONNX file): 1 per element, the add, as the bias of a weighted layer.
register(LayerKind("shift", keep, flags=("channels",), params=lambda a, ins: {"b": per_feature(a, ins)},
                   tensors={"b": BIAS}, flops=per_element(1)))


# Layer scale (Touvron et al., "Going deeper with Image Transformers", 2021; ConvNeXt's init 1e-6): a learned
# multiplier per feature, starting at `init` and taking no weight decay as bn's gamma; 1 per element, the
# product, as shift's add.
register(LayerKind("scale", keep, aliases=("layerscale",), options={"init": 1.0},
                   params=lambda a, ins: {"gamma": features_layout(ins[0])},
                   tensors={"gamma": Role("scale", option="init")}, flops=per_element(1)))


def resolve_droppath(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if not 0 <= attrs["p"] < 1:
        raise ShapeError(f"droppath probability must satisfy 0 <= P < 1 (received {attrs['p']})", "p")
    return keep(attrs, ins)


# Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"): in training each sample's
# whole residual branch is dropped with probability P and kept ones scaled by 1/(1-P); the identity at
# inference, so it counts nothing, as dropout.
register(LayerKind("droppath", resolve_droppath, size="number", size_required=True, size_attr="p"))


def resolve_glu(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    axis = resolve_axis(attrs, ins, "glu")
    out = list(ins[0])
    if out[axis] % 2:
        raise ShapeError(f"glu halves axis {axis} of {show(ins[0])}, so its size must be even (received {out[axis]})")
    out[axis] //= 2
    return tuple(out), dict(attrs, axis=axis)


# GLU (Dauphin et al. 2017), a * sigmoid(b) of the two halves along `axis`: 2 per output element, the sigmoid
# and the product (ONNX writes Split, Sigmoid, Mul; the split is a copy).
register(LayerKind("glu", resolve_glu, options={"axis": AXIS}, flops=per_element(2)))


def resolve_reduce(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if attrs["sum"] and attrs["mean"]:
        raise ShapeError("reduce takes one of the flags `mean` (the default) and `sum`, not both")
    axis = resolve_axis(attrs, ins, "reduce")
    out = list(ins[0])
    if attrs["keep"]:
        out[axis] = 1
    else:
        del out[axis]
        if not out:
            raise ShapeError(f"reduce over the only axis of {show(ins[0])} leaves no features: add `keep`")
    return tuple(out), dict(attrs, axis=axis)


# A sum or mean along one axis, removed (or kept at 1 with `keep`): 1 per input element, the add that folds
# it in, as global pooling and ONNX's Reduce* count (the mean's one division per output is not counted).
# The receptive field treats it as pointwise, as the ONNX analysis does every Reduce operator, whose axes
# it does not read.
register(LayerKind("reduce", resolve_reduce, options={"axis": AXIS}, flags=("mean", "sum", "keep"),
                   flops=lambda a, ins, out: elements(ins[0])))


def resolve_dropout(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if not 0 <= attrs["p"] < 1:
        raise ShapeError(f"dropout probability must satisfy 0 <= P < 1 (received {attrs['p']})", "p")
    return keep(attrs, ins)


register(LayerKind("dropout", resolve_dropout, size="number", size_required=True, size_attr="p"))


def resolve_noise(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if attrs["sigma"] < 0:
        raise ShapeError(f"noise sigma must be >= 0 (received {attrs['sigma']})", "sigma")
    return keep(attrs, ins)


# Gaussian noise is training-only, so the inference forward pass counts nothing for it.
register(LayerKind("noise", resolve_noise, size="number", size_required=True, size_attr="sigma"))


def resolve_bn(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if len(ins[0]) != 1 and not is_spatial(ins[0]):
        raise ShapeError(f"bn expects a vector, a signal C@L, an image C@HxW or a volume C@DxHxW, "
                         f"got {show(ins[0])}")
    if attrs["eps"] <= 0:  # it keeps the division by the standard deviation away from zero
        raise ShapeError(f"bn eps must be > 0 (received eps={attrs['eps']})", "eps")
    if not 0 <= attrs["momentum"] <= 1:
        raise ShapeError(f"bn momentum must satisfy 0 <= momentum <= 1 (received momentum={attrs['momentum']})",
                         "momentum")
    return ins[0], dict(attrs, channels=ins[0][0])


register(LayerKind(
    "bn", resolve_bn, aliases=("batchnorm",), options={"eps": 1e-5, "momentum": 0.1},
    params=lambda a, ins: {"gamma": (a["channels"],), "beta": (a["channels"],)},
    state=lambda a, ins: {"mean": (a["channels"],), "var": (a["channels"],)},
    # at the start bn is the identity and its running statistics are those of a standard normal
    tensors={"gamma": SCALE, "beta": SHIFT, "mean": statistic(0.0), "var": statistic(1.0)},
    flops=per_element(2),  # inference: one multiply and one add per element with folded statistics
))


def resolve_instancenorm(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, _, _ = image(ins[0], "instancenorm")
    if attrs["eps"] <= 0:  # it keeps the division by the standard deviation away from zero
        raise ShapeError(f"instancenorm eps must be > 0 (received eps={attrs['eps']})", "eps")
    return ins[0], dict(attrs, channels=c)


# Instance norm (Ulyanov et al. 2016; style transfer, CycleGAN, pix2pix): each sample's channel normalised
# over its own H·W pixels, then scaled and shifted per channel, as ONNX InstanceNormalization. The
# statistics are per sample, so unlike bn nothing folds at inference: layernorm's 7 FLOPs per element, and
# the eps add and square root per channel.
register(LayerKind(
    "instancenorm", resolve_instancenorm, options={"eps": 1e-5},
    params=lambda a, ins: {"gamma": (a["channels"],), "beta": (a["channels"],)},
    tensors={"gamma": SCALE, "beta": SHIFT},
    flops=lambda a, ins, out: 7 * elements(out) + 2 * a["channels"],
))


def resolve_groupnorm(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    c, _ = spatial(ins[0], "groupnorm")
    g = attrs["groups"]
    if g < 1 or c % g:
        raise ShapeError(f"groupnorm {g} splits the {c} channels into groups: {g} must divide {c}", "groups")
    if attrs["eps"] <= 0:  # it keeps the division by the standard deviation away from zero
        raise ShapeError(f"groupnorm eps must be > 0 (received eps={attrs['eps']})", "eps")
    return ins[0], dict(attrs, channels=c)


# Group norm (Wu & He 2018; Stable Diffusion's UNet, 32 groups): each sample's C/G channels of a group
# normalised together over their positions, then scaled and shifted per channel, as PyTorch's GroupNorm.
# FLOPs as the ONNX form both PyTorch exporters and dlc write computes it: instancenorm's rule on the
# (G, C/G·positions) view, its identity scale and shift included (7 per element, the eps add and the
# square root per group), then the channels' gamma and beta (2 per element).
register(LayerKind(
    "groupnorm", resolve_groupnorm, size="int", size_required=True, size_attr="groups", options={"eps": 1e-5},
    params=lambda a, ins: {"gamma": (a["channels"],), "beta": (a["channels"],)},
    tensors={"gamma": SCALE, "beta": SHIFT},
    flops=lambda a, ins, out: 9 * elements(out) + 2 * a["groups"],
))


def resolve_lrn(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    image(ins[0], "lrn")
    if attrs["size"] < 1:
        raise ShapeError(f"lrn size must be >= 1 (received {attrs['size']})", "size")
    for key in ("beta", "k"):  # k > 0 keeps the divisor away from zero; beta <= 0 would not normalise
        if attrs[key] <= 0:
            raise ShapeError(f"lrn {key} must be > 0 (received {key}={attrs[key]})", key)
    if attrs["alpha"] < 0:
        raise ShapeError(f"lrn alpha must be >= 0 (received alpha={attrs['alpha']})", "alpha")
    return keep(attrs, ins)


register(LayerKind(
    "lrn", resolve_lrn, size="int", size_attr="size", size_default=5,
    options={"alpha": 1e-4, "beta": 0.75, "k": 1.0},
    # per element: a square, size-1 adds over the window, scale and offset (2), the power, the division
    flops=lambda a, ins, out: (a["size"] + 4) * elements(out),
))
