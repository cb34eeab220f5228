"""Each layer kind as PyTorch source: one function per kind, one dict (MODULES).

A mapping reads the node's resolved attributes (the contract in dlc/layers/*.py) and returns a
`TorchLayer`: the module the network holds for the node (a constructor expression, or None for a pure
function), the forward expression, and where each of the node's dlc tensors lives among the
module's parameters and buffers. Nothing here imports torch: the generated file does
(dlc.torch.export), and both `dlc export --format pytorch` and the torch trainer run that file.

PyTorch keeps the layouts dlc takes from ONNX (conv W (C_out, C_in/g, kh, kw), upconv W (C_in,
C_out/g, kh, kw), fc W (units, in), embed W (vocab, dim)) except for the recurrent kinds: torch
holds one matrix per direction, its gates in another order (LSTM i, f, g, o against ONNX's i, o, f,
c; GRU r, z, n against z, r, h) and the two biases apart. A `TorchParam` names that conversion.
attention, rmsnorm, posembed, clstoken, scale, noise and droppath use modules of the generated file (dlc/torch/netlib.py) whose
Parameters carry dlc's names and layouts (Wq (out, in), P, cls); `fc tied=LABEL` shares the embed's.
`input` has no entry: it is the batch that forward receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from dlc.graph import Node
from dlc.layers import KINDS, Shape
from dlc.layers.sequence import attention_biases

# Torch's block order, as indices of ONNX's blocks: torch block k is ONNX block GATE_ORDER[kind][k].
GATE_ORDER = {"rnn": (0,), "lstm": (0, 2, 3, 1), "gru": (1, 0, 2)}
RECURRENT_MODULES = {"rnn": "nn.RNN", "lstm": "nn.LSTM", "gru": "nn.GRU"}


@dataclass(frozen=True)
class TorchParam:
    """One torch tensor of a node (a Parameter, or a buffer such as running_mean): `module.<attr>` holds
    dlc's `<node>.<param>`, or part of it."""

    param: str  # dlc's name within the node: "W", "mean"
    attr: str  # torch's name within the module: "weight", "running_mean", "weight_ih_l0_reverse"
    direction: int | None = None  # recurrent: which slice of dlc's leading direction axis
    rows: tuple[int, int] | None = None  # recurrent B: the input-side or hidden-side half
    gates: tuple[int, ...] | None = None  # recurrent: GATE_ORDER, the blocks' order in torch


@dataclass(frozen=True)
class TorchLayer:
    """A node in PyTorch: `module` builds self.<name> (None: no module); `forward` is an expression in
    {m} (the module), {x} (the first input), {xs} (every input, comma-separated) and {plus} (their sum)."""

    forward: str
    module: str | None = None
    tensors: tuple[TorchParam, ...] = ()
    shared: tuple[tuple[str, str], ...] = ()
    """(module attribute, dlc's name within the node) of each tensor read from another node (the
    registry's LayerKind.shared): the export makes the attribute the owner's Parameter itself."""


def _same(*pairs: tuple[str, str]) -> tuple[TorchParam, ...]:
    return tuple(TorchParam(p, a) for p, a in pairs)


def _pad_call(pads: tuple[int, ...], x: str = "{x}", value: str = "") -> str:
    """F.pad of the input with explicit pads (every axis's before, then every axis's after), which
    torch's layers take only when they are symmetric (`pad=same` with an even total puts the odd
    pixel at the end). F.pad lists the last axis first."""
    n = len(pads) // 2
    pairs = ", ".join(f"{pads[i]}, {pads[n + i]}" for i in reversed(range(n)))
    return f"F.pad({x}, ({pairs}){value})"


def _size(v) -> object:
    """A pair as torch's layers take it: one int when both are equal."""
    v = tuple(v)
    return v[0] if len(set(v)) == 1 else v


def _call(fn: str, *args, **options: tuple) -> str:
    """A constructor call with its options written only where they differ from torch's defaults;
    each option is (value, default)."""
    written = [repr(a) for a in args] + [f"{k}={v!r}" for k, (v, default) in options.items() if v != default]
    return f"{fn}({', '.join(written)})"


def _symmetric(pads) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


def _rank(node: Node) -> int:
    """The spatial axes of a conv or pool: torch's Conv1d, Conv2d or Conv3d (and their pools)."""
    return len(node.attrs["kernel"])


def _crop(out: Shape) -> str:
    """Indexing that keeps the first `out` cells of every spatial axis."""
    return "[..., " + ", ".join(f":{o}" for o in out[1:]) + "]"


def conv(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    pads = a["pads"]
    padding = pads[:_rank(node)] if _symmetric(pads) else (0,)
    module = _call(f"nn.Conv{_rank(node)}d", a["in_channels"], a["channels"], _size(a["kernel"]),
                   stride=(_size(a["stride"]), 1),
                   padding=(_size(padding), 0), dilation=(_size(a["dilation"]), 1), groups=(a["groups"], 1),
                   bias=(bool(a["bias"]), True))
    x = "{x}" if _symmetric(pads) else _pad_call(pads)
    tensors = _same(("W", "weight"), ("b", "bias")) if a["bias"] else _same(("W", "weight"))
    return TorchLayer(f"{{m}}({x})", module, tensors)


def upconv(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    module = _call("nn.ConvTranspose2d", a["in_channels"], a["channels"], _size(a["kernel"]),
                   stride=(_size(a["stride"]), 1), padding=(a["pads"][0], 0), dilation=(_size(a["dilation"]), 1),
                   groups=(a["groups"], 1), bias=(bool(a["bias"]), True), output_padding=(a["outpad"], 0))
    tensors = _same(("W", "weight"), ("b", "bias")) if a["bias"] else _same(("W", "weight"))
    return TorchLayer("{m}({x})", module, tensors)


def upsample(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer(f"F.interpolate({{x}}, scale_factor={node.attrs['factor']}, mode='nearest')")


def _pool_pads(node: Node, ins: list[Shape]) -> tuple[int, ...]:
    """Pads grown at the far ends so that floor-mode windows are exactly dlc's windows (those of
    `ceil` included): the rule of the NumPy kernel, for the asymmetric case torch's pools cannot take."""
    a, n = node.attrs, _rank(node)
    befores, afters = a["pads"][:n], a["pads"][n:]
    grown = tuple(max(afters[i], (node.out_shape[1 + i] - 1) * a["stride"][i] + a["dilation"][i] * (a["kernel"][i] - 1)
                      + 1 - befores[i] - ins[0][1 + i]) for i in range(n))
    return (*befores, *grown)


def maxpool(node: Node, ins: list[Shape]) -> TorchLayer:
    a, cls = node.attrs, f"nn.MaxPool{_rank(node)}d"
    k, s, pads = _size(a["kernel"]), _size(a["stride"]), a["pads"]
    dil = (_size(a["dilation"]), 1)
    if _symmetric(pads):
        return TorchLayer("{m}({x})", _call(cls, k, s, padding=(_size(pads[:_rank(node)]), 0), dilation=dil,
                                       ceil_mode=(bool(a["ceil"]), False)))
    padded = _pad_call(_pool_pads(node, ins), value=", value=-math.inf")
    return TorchLayer(f"{{m}}({padded}){_crop(node.out_shape)}", _call(cls, k, s, dilation=dil))


def avgpool(node: Node, ins: list[Shape]) -> TorchLayer:
    a, cls = node.attrs, f"nn.AvgPool{_rank(node)}d"
    k, s, pads = _size(a["kernel"]), _size(a["stride"]), a["pads"]
    if _symmetric(pads):
        # count_include_pad=False: each window divides by its cells inside the input, as ONNX's default
        return TorchLayer("{m}({x})", _call(cls, k, s, padding=(_size(pads[:_rank(node)]), 0),
                                       ceil_mode=(bool(a["ceil"]), False), count_include_pad=(False, True)))
    # Asymmetric pads: window sums over the zero-padded input, divided by the windows' cells that
    # lie inside the input (the same pool over a padded plane of ones).
    grown = _pool_pads(node, ins)
    ones = _pad_call(grown, "torch.ones_like({x}[:1, :1])")
    return TorchLayer(f"({{m}}({_pad_call(grown)}) / {{m}}({ones})){_crop(node.out_shape)}", _call(cls, k, s))


def fc(node: Node, ins: list[Shape]) -> TorchLayer:
    # nn.Linear acts on the last axis, so on a sequence it acts on each step, as dlc's fc does
    a = node.attrs
    module = _call("nn.Linear", a["in_features"], a["units"], bias=(bool(a["bias"]), True))
    bias = _same(("b", "bias")) if a["bias"] else ()
    if a["tied"] is not None:  # the weight is the embed's table: one Parameter, gradients summed
        return TorchLayer("{m}({x})", module, bias, shared=(("weight", "W"),))
    return TorchLayer("{m}({x})", module, _same(("W", "weight")) + bias)


def embed(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    return TorchLayer("{m}({x})", f"nn.Embedding({a['vocab']}, {a['dim']})", _same(("W", "weight")))


def bn(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    # a vector (N, C) and a signal (N, C, L) are BatchNorm1d's, an image 2d's, a volume 3d's
    cls = f"nn.BatchNorm{max(len(ins[0]) - 1, 1)}d"
    return TorchLayer("{m}({x})", _call(cls, a["channels"], eps=(a["eps"], 1e-5), momentum=(a["momentum"], 0.1)),
                 _same(("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"), ("var", "running_var")))


def lrn(node: Node, ins: list[Shape]) -> TorchLayer:
    # ONNX LRN puts floor((size-1)/2) channels before and the rest after; nn.LocalResponseNorm does
    # the opposite for an even size, so the window sum is written out.
    a = node.attrs
    size = a["size"]
    before = (size - 1) // 2
    return TorchLayer(f"lrn({{x}}, {size}, {before}, {a['alpha']}, {a['beta']}, {a['k']})")


def recurrent(node: Node, ins: list[Shape]) -> TorchLayer:
    a, kind = node.attrs, node.kind
    g, order = a["gates"] * a["hidden"], GATE_ORDER[kind]
    tensors = []
    for d in range(a["directions"]):
        suffix = "_l0" + ("_reverse" if d else "")
        tensors += [TorchParam("W", "weight_ih" + suffix, d, None, order),
                    TorchParam("R", "weight_hh" + suffix, d, None, order),
                    TorchParam("B", "bias_ih" + suffix, d, (0, g), order),  # ONNX B = [Wb, Rb]
                    TorchParam("B", "bias_hh" + suffix, d, (g, 2 * g), order)]
    bidirectional = ", bidirectional=True" if a["directions"] == 2 else ""
    module = f"{RECURRENT_MODULES[kind]}({a['in_features']}, {a['hidden']}, batch_first=True{bidirectional})"
    # without `sequences`: each direction's last state (the backward one's is after reading x[0])
    state = "[1][0]" if kind == "lstm" else "[1]"
    forward = "{m}({x})[0]" if a["sequences"] else f"last_states({{m}}({{x}}){state})"
    return TorchLayer(forward, module, tuple(tensors))


def layernorm(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    # `channels`: the channels-last view's last axis and back, as torchvision's ConvNeXt LayerNorm2d
    forward = "{m}({x}.movedim(1, -1)).movedim(-1, 1)" if a["channels"] else "{m}({x})"
    return TorchLayer(forward, _call("nn.LayerNorm", a["features"], eps=(a["eps"], 1e-5)),
                 _same(("gamma", "weight"), ("beta", "bias")))


def rmsnorm(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    return TorchLayer("{m}({x})", _call("RMSNorm", a["features"], eps=(a["eps"], 1e-5)), _same(("gamma", "weight")))


def attention(node: Node, ins: list[Shape]) -> TorchLayer:
    # netlib's SelfAttention holds dlc's four (out, in) projections under dlc's names: nn.MultiheadAttention
    # would stack Wq, Wk and Wv into one tensor
    a = node.attrs
    names = ("Wq", "Wk", "Wv", "Wo") + attention_biases(a)
    keybias = (bool(a["keybias"]), True)
    if isinstance(a["window"], tuple):  # Swin's windows, with their bias table B
        module = _call("WindowAttention", a["dim"], a["heads"], a["grid"], a["window"], shift=(a["shift"], (0, 0)),
                       bias=(bool(a["bias"]), True), keybias=keybias, dropout=(a["dropout"], 0.0))
        return TorchLayer("{m}({x})", module, _same(*((n, n) for n in names + ("B",))))
    module = _call("SelfAttention", a["dim"], a["heads"], causal=(bool(a["causal"]), False),
                   bias=(bool(a["bias"]), True), keybias=keybias, dropout=(a["dropout"], 0.0),
                   kv=(a["kv"], a["heads"]), rope=(float(a["rope"]), 0.0), window=(a["window"], None),
                   source=(a["source_dim"] if a["from"] is not None else None, None),
                   masked=(a["mask"] is not None, False))
    # {xs}: the current tensor, then the labelled ones in the order of the options (from=, mask=)
    return TorchLayer("{m}({xs})", module, _same(*((n, n) for n in names)))


def posembed(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    if a["fixed"]:
        return TorchLayer(f"{{x}} + sinusoids({a['steps']}, {a['dim']}, {{x}})")
    rows = "" if a["positions"] == a["steps"] else f"[:{a['steps']}]"  # a longer table's first T rows
    return TorchLayer(f"{{x}} + {{m}}.P{rows}", f"Weights(P=({a['positions']}, {a['dim']}))", _same(("P", "P")))


def clstoken(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer("torch.cat([{m}.cls.expand(len({x}), 1, -1), {x}], 1)", f"Weights(cls=({node.attrs['dim']},))",
                 _same(("cls", "cls")))


def seqpool(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer({"first": "{x}[:, 0]", "last": "{x}[:, -1]", "mean": "{x}.mean(1)"}[node.attrs["mode"]])


def softmax(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer(f"torch.softmax({{x}}, {node.attrs['axis'] + 1})")  # +1: the batch axis


# ---- the math kinds of issue 28 ----

def logsoftmax(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer(f"torch.log_softmax({{x}}, {node.attrs['axis'] + 1})")


def clip(node: Node, ins: list[Shape]) -> TorchLayer:
    bounds = ", ".join(f"{k}={v!r}" for k, v in node.attrs.items() if v not in (-math.inf, math.inf))
    return TorchLayer(f"torch.clamp({{x}}, {bounds})" if bounds else "{x}")


def prelu(node: Node, ins: list[Shape]) -> TorchLayer:
    # nn.PReLU's slopes run along axis 1, not a sequence's features: dlc's alpha in its broadcast layout
    shape = tuple(KINDS["prelu"].params(node.attrs, ins)["alpha"])
    return TorchLayer("torch.where({x} > 0, {x}, {m}.alpha * {x})", f"Weights(alpha={shape})",
                      _same(("alpha", "alpha")))


def shift(node: Node, ins: list[Shape]) -> TorchLayer:
    shape = tuple(KINDS["shift"].params(node.attrs, ins)["b"])
    return TorchLayer("{x} + {m}.b", f"Weights(b={shape})", _same(("b", "b")))


def reduce(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    keep = ", keepdim=True" if a["keep"] else ""
    return TorchLayer(f"{{x}}.{'sum' if a['sum'] else 'mean'}({a['axis'] + 1}{keep})")


def dropout(node: Node, ins: list[Shape]) -> TorchLayer:
    # modules, not F.dropout of the Net's flag: eval() on the layers up to --freeze switches them off
    return TorchLayer("{m}({x})", f"nn.Dropout({node.attrs['p']})")


def noise(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer("{m}({x})", f"GaussianNoise({node.attrs['sigma']})")


def concat(node: Node, ins: list[Shape]) -> TorchLayer:
    return TorchLayer(f"torch.cat([{{xs}}], {node.attrs['axis'] + 1})")


def pad(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    mode = f", mode={a['mode']!r}" if a["mode"] != "constant" else f", value={a['value']!r}" if a["value"] else ""
    return TorchLayer(_pad_call(a["pads"], value=mode))


def instancenorm(node: Node, ins: list[Shape]) -> TorchLayer:
    # affine: ONNX's operator always scales and shifts, and so does dlc's kind
    a = node.attrs
    return TorchLayer("{m}({x})", _call("nn.InstanceNorm2d", a["channels"], eps=(a["eps"], 1e-5), affine=(True, False)),
                      _same(("gamma", "weight"), ("beta", "bias")))


def groupnorm(node: Node, ins: list[Shape]) -> TorchLayer:
    a = node.attrs
    return TorchLayer("{m}({x})", _call("nn.GroupNorm", a["groups"], a["channels"], eps=(a["eps"], 1e-5)),
                      _same(("gamma", "weight"), ("beta", "bias")))
# ---- the kinds of today's vision networks (issue 21) ----

def global_pool(reduction: str) -> Callable[[Node, list[Shape]], TorchLayer]:
    """gap/gmp over every spatial axis of a signal, image or volume; `keep` leaves them at 1 (C@1x1)."""
    def mapping(node: Node, ins: list[Shape]) -> TorchLayer:
        if not node.attrs["keep"]:
            return TorchLayer(f"{{x}}.flatten(2).{reduction}(2)")
        axes = tuple(range(2, len(ins[0]) + 1))
        return TorchLayer(f"{{x}}.{reduction}({axes}, keepdim=True)")
    return mapping


def scale(node: Node, ins: list[Shape]) -> TorchLayer:
    shape = tuple(KINDS["scale"].params(node.attrs, ins)["gamma"])
    return TorchLayer("{x} * {m}.gamma", f"Weights(gamma={shape})", _same(("gamma", "gamma")))


def function(expression: str) -> Callable[[Node, list[Shape]], TorchLayer]:
    """A kind computed by one expression of its input and attributes, with no tensors."""
    return lambda node, ins: TorchLayer(expression.format(x="{x}", xs="{xs}", plus="{plus}", **node.attrs))


MODULES: dict[str, Callable[[Node, list[Shape]], TorchLayer]] = {
    "conv": conv,
    "dwconv": conv,
    "upconv": upconv,
    "upsample": upsample,
    "maxpool": maxpool,
    "avgpool": avgpool,
    "gap": global_pool("mean"),
    "gmp": global_pool("amax"),
    "fc": fc,
    "flatten": function("{x}.flatten(1)"),
    "embed": embed,
    "identity": function("{x}"),
    "relu": function("F.relu({x})"),
    "relu6": function("F.relu6({x})"),
    "leaky": function("F.leaky_relu({x}, {alpha})"),
    "sigmoid": function("torch.sigmoid({x})"),
    "tanh": function("torch.tanh({x})"),
    "elu": function("F.elu({x}, {alpha})"),
    "selu": function("F.selu({x})"),
    "gelu": function("F.gelu({x})"),  # exact, x * Phi(x), as the NumPy kernel and ONNX's default
    "silu": function("F.silu({x})"),
    "softmax": softmax,
    "dropout": dropout,
    "noise": noise,
    "bn": bn,
    "layernorm": layernorm,
    "rmsnorm": rmsnorm,
    "attention": attention,
    "posembed": posembed,
    "clstoken": clstoken,
    # an image's pixels as steps, row by row, its channels the features (ViT's patch sequence)
    "tokens": function("{x}.flatten(2).transpose(1, 2)"),
    "image": function("{x}.transpose(1, 2).unflatten(2, {grid})"),
    "seqpool": seqpool,
    # Swin's 2x2 neighbours joined: x0 (even row, even column), x1 (odd, even), x2 (even, odd), x3 (odd, odd)
    "patchmerge": lambda node, ins: TorchLayer(
        "{x}.view(len({x}), %d, 2, %d, 2, %d).permute(0, 1, 3, 4, 2, 5).reshape(len({x}), %d, %d)"
        % (node.attrs["grid"][0] // 2, node.attrs["grid"][1] // 2, node.attrs["features"], node.out_shape[0],
           node.out_shape[1])),
    "lrn": lrn,
    "rnn": recurrent,
    "lstm": recurrent,
    "gru": recurrent,
    "add": function("{plus}"),
    "mul": function("product({xs})"),  # netlib's: a vector of features repeated over the positions
    "concat": concat,
    # the elementwise merges of several inputs (issue 22); torch broadcasts as dlc does
    "maximum": function("extremum(torch.maximum, {xs})"),
    "minimum": function("extremum(torch.minimum, {xs})"),
    "pow": function("torch.pow({xs})"),
    "sub": function("torch.sub({xs})"),
    "div": function("torch.div({xs})"),
    "matmul": function("torch.matmul({xs})"),
    # the router and experts are nodes of their own; the join holds the load-balancing loss
    "experts": lambda node, ins: TorchLayer("{m}({xs})", f"Mixture({node.attrs['top']}, {node.attrs['balance']})"),
    # the math kinds of issue 28
    "logsoftmax": logsoftmax,
    "softplus": function("F.softplus({x})"),
    "softsign": function("F.softsign({x})"),
    "exp": function("torch.exp({x})"),
    "sqrt": function("torch.sqrt({x})"),
    "abs": function("torch.abs({x})"),
    "neg": function("torch.neg({x})"),
    "clip": clip,
    "prelu": prelu,
    "shift": shift,
    "glu": lambda node, ins: TorchLayer(f"F.glu({{x}}, {node.attrs['axis'] + 1})"),
    "reduce": reduce,
    "pad": pad,
    "instancenorm": instancenorm,
    "groupnorm": groupnorm,  # issue 22
    "pixelshuffle": function("F.pixel_shuffle({x}, {factor})"),
    "reshape": lambda node, ins: TorchLayer(f"{{x}}.reshape(len({{x}}), {', '.join(map(str, node.attrs['shape']))})"),
    "slice": lambda node, ins: TorchLayer(f"{{x}}.narrow({node.attrs['dim'] + 1}, {node.attrs['begin']}, "
                                          f"{node.attrs['length']})"),
    "tile": lambda node, ins: TorchLayer(f"{{x}}.repeat(1, {', '.join(map(str, node.attrs['repeats']))})"),
    # the kinds of today's vision networks (issue 21)
    "hardsigmoid": function("F.hardsigmoid({x})"),
    "hardswish": function("F.hardswish({x})"),
    "scale": scale,
    "droppath": lambda node, ins: TorchLayer("{m}({x})", f"DropPath({node.attrs['p']})"),
}
