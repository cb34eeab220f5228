"""Kinds that keep their input's shape: activations, softmax, dropout, noise, bn, lrn.

Resolved attributes: dropout p; noise sigma; leaky/elu alpha; bn eps, momentum, channels (bn normalises
axis 1 of the batch tensor: channels of a signal, image or volume, features of a vector; gamma, beta trainable; mean,
var non-trainable); lrn size, alpha, beta, k (across channels: x / (k + alpha/size * sum x^2)^beta).
softmax runs over `axis` (batch left out): channels of an image, signal or volume, features of a vector,
the last axis of a sequence.
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import SCALE, SHIFT, CostRule, LayerKind, Shape, elements, feature_axis, register, statistic
from dlc.layers.spatial import image, is_spatial, show


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

# Softmax: exponential, sum and division, 3 per element (the max shift for stability is not counted).
register(LayerKind("softmax", lambda a, ins: (ins[0], dict(a, axis=feature_axis(ins[0]))), flops=per_element(3)))


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
