"""fc, flatten, embed.

fc: units, bias, in_features, steps (T on a sequence, else None), tied (None, or a Ref to the embed
whose table it reuses); W (units, in_features) as ONNX Gemm with transB=1, b (units). On a sequence TxD
fc acts on each step alone (PyTorch's Linear, Keras's Dense). The compiler puts an explicit `flatten`
node before an fc on an image, so fc reads a vector or a sequence. With `tied=LABEL` the weight is the
labelled embed's table (vocab, dim), which is already (units, in_features): GPT-2's output layer.
embed: dim, vocab; W (vocab, dim); its input is token ids (T,).
"""

from __future__ import annotations

from math import prod

from dlc.errors import ShapeError
from dlc.graph import Graph
from dlc.layers import BIAS, GLOBAL, KINDS, LABEL, LayerKind, Role, Shape, register, weight, with_features
from dlc.layers.spatial import is_spatial, show


def resolve_fc(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    if len(ins[0]) not in (1, 2) or is_spatial(ins[0]):
        raise ShapeError(f"fc expects a vector or a sequence, got {show(ins[0])}")
    steps = ins[0][0] if len(ins[0]) == 2 else None
    a = dict(attrs, in_features=ins[0][-1], steps=steps)
    if a["units"] < 1:
        raise ShapeError(f"fc needs at least one unit (received {a['units']})", "units")
    tied = a["tied"]
    if tied is not None:
        table = tied.param("W") if tied.kind == "embed" else None
        if table is None:
            raise ShapeError(f"tied= reuses the table of an embed step; {tied.node} is a {tied.kind}")
        if table != (a["units"], a["in_features"]):
            raise ShapeError(f"tied= reuses {tied.node}'s {table[0]}x{table[1]} table (vocab x D), so fc needs "
                             f"{table[0]} units on {table[1]} features, not {a['units']} on {a['in_features']}")
    return ((a["units"],) if steps is None else with_features(ins[0], a["units"])), a


def fc_params(a: dict, ins: list[Shape]) -> dict[str, Shape]:
    p: dict[str, Shape] = {} if a["tied"] is not None else {"W": (a["units"], a["in_features"])}
    if a["bias"]:
        p["b"] = (a["units"],)
    return p


def fc_fans(a: dict, shape: Shape) -> tuple[float, float]:
    units, in_features = shape
    return in_features, units


def fc_macs(a: dict, ins: list[Shape], out: Shape) -> int:
    return (a["steps"] or 1) * a["in_features"] * a["units"]


def fc_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    return 2 * fc_macs(a, ins, out) + ((a["steps"] or 1) * a["units"] if a["bias"] else 0)


register(LayerKind(
    "fc", resolve_fc, aliases=("dense", "linear"), size="int", size_required=True, size_attr="units",
    options={"bias": True, "tied": LABEL}, params=fc_params, tensors={"W": weight(fc_fans), "b": BIAS},
    macs=fc_macs, flops=fc_flops,
    # on a sequence each step reads only its own features
    window=lambda a: GLOBAL if a["steps"] is None else None,
    shared=lambda a: {"W": f"{a['tied'].node}.W"} if a["tied"] is not None else {},
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


def token_vocab(graph: Graph, name: str | None = None) -> int | None:
    """The smallest vocabulary among the kinds that read the token ids of input `name` (the first
    input's by default): every id of an input batch must lie below it."""
    name = name or graph.input.name
    vocabs = [n.attrs["vocab"] for n in graph.nodes
              if name in n.inputs and KINDS[n.kind].reads_tokens]
    # a padding mask (attention's mask=) holds 1 to keep a step and 0 for padding: ids below 2
    vocabs += [2 for n in graph.nodes if n.attrs.get("mask") == name]
    return min(vocabs, default=None)
