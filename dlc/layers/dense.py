"""fc, flatten, embed.

fc: units, bias, in_features; W (units, in_features) as ONNX Gemm with transB=1, b (units).
The compiler puts an explicit `flatten` node before an fc whose input is not a vector, so fc itself
always reads a vector. embed: dim, vocab; W (vocab, dim); its input is token ids (T,).
"""

from __future__ import annotations

from math import prod

from dlc.errors import ShapeError
from dlc.layers import GLOBAL, LayerKind, register
from dlc.layers.spatial import show


def resolve_fc(attrs: dict, ins):
    if len(ins[0]) != 1:
        raise ShapeError(f"fc expects a vector, got {show(ins[0])}")
    a = dict(attrs, in_features=ins[0][0])
    if a["units"] < 1:
        raise ShapeError(f"fc needs at least one unit (received {a['units']})")
    return (a["units"],), a


def fc_params(a, ins):
    p = {"W": (a["units"], a["in_features"])}
    if a["bias"]:
        p["b"] = (a["units"],)
    return p


register(LayerKind(
    "fc", resolve_fc, aliases=("dense", "linear"), size="int", size_required=True, size_attr="units",
    options={"bias": True}, params=fc_params,
    macs=lambda a, ins, out: a["in_features"] * a["units"],
    flops=lambda a, ins, out: 2 * a["in_features"] * a["units"] + (a["units"] if a["bias"] else 0),
    window=lambda a: GLOBAL,
))

register(LayerKind("flatten", lambda attrs, ins: ((prod(ins[0]),), dict(attrs))))


def resolve_embed(attrs: dict, ins):
    a = dict(attrs)
    if a["vocab"] is None:
        raise ShapeError("embed needs its vocabulary size: vocab=V")
    if a["vocab"] < 1 or a["dim"] < 1:
        raise ShapeError(f"embed needs vocab >= 1 and D >= 1 (received vocab={a['vocab']}, D={a['dim']})")
    return (ins[0][0], a["dim"]), a


register(LayerKind(
    "embed", resolve_embed, size="int", size_required=True, size_attr="dim", options={"vocab": None},
    params=lambda a, ins: {"W": (a["vocab"], a["dim"])}, reads_tokens=True,
))
