"""fc, flatten, embed.

fc: units, bias, in_features; W (units, in_features) as ONNX Gemm with transB=1, b (units).
The compiler puts an explicit `flatten` node before an fc whose input is not a vector, so fc itself
always reads a vector. embed: dim, vocab; W (vocab, dim); its input is token ids (T,).
"""

from __future__ import annotations

from math import prod

from dlc.errors import ShapeError
from dlc.graph import Graph
from dlc.layers import BIAS, GLOBAL, KINDS, LayerKind, Role, Shape, register, weight
from dlc.layers.spatial import show


def resolve_fc(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if len(ins[0]) != 1:
        raise ShapeError(f"fc expects a vector, got {show(ins[0])}")
    a = dict(attrs, in_features=ins[0][0])
    if a["units"] < 1:
        raise ShapeError(f"fc needs at least one unit (received {a['units']})")
    return (a["units"],), a


def fc_params(a: dict, ins: list[Shape]) -> dict[str, Shape]:
    p: dict[str, Shape] = {"W": (a["units"], a["in_features"])}
    if a["bias"]:
        p["b"] = (a["units"],)
    return p


def fc_fans(a: dict, shape: Shape) -> tuple[float, float]:
    units, in_features = shape
    return in_features, units


register(LayerKind(
    "fc", resolve_fc, aliases=("dense", "linear"), size="int", size_required=True, size_attr="units",
    options={"bias": True}, params=fc_params, tensors={"W": weight(fc_fans), "b": BIAS},
    macs=lambda a, ins, out: a["in_features"] * a["units"],
    flops=lambda a, ins, out: 2 * a["in_features"] * a["units"] + (a["units"] if a["bias"] else 0),
    window=lambda a: GLOBAL,
))

register(LayerKind("flatten", lambda attrs, ins: ((prod(ins[0]),), dict(attrs))))


def resolve_embed(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    a = dict(attrs)
    if a["vocab"] is None:
        raise ShapeError("embed needs its vocabulary size: vocab=V")
    if a["vocab"] < 1 or a["dim"] < 1:
        raise ShapeError(f"embed needs vocab >= 1 and D >= 1 (received vocab={a['vocab']}, D={a['dim']})")
    return (ins[0][0], a["dim"]), a


register(LayerKind(
    "embed", resolve_embed, size="int", size_required=True, size_attr="dim", options={"vocab": None},
    params=lambda a, ins: {"W": (a["vocab"], a["dim"])},
    # A lookup is a product with a one-hot vector (fan-in 1): unit-variance rows, as PyTorch's
    # nn.Embedding, give the next layer inputs of the scale he/xavier assume.
    tensors={"W": Role("table", std=1.0, decayed=True)}, reads_tokens=True,
))


def token_vocab(graph: Graph) -> int | None:
    """The smallest vocabulary among the kinds that read the graph's input token ids: every id of an
    input batch must lie below it."""
    vocabs = [n.attrs["vocab"] for n in graph.nodes
              if graph.input.name in n.inputs and KINDS[n.kind].reads_tokens]
    return min(vocabs, default=None)
