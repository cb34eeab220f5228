"""A projection cut in two halves reads as two projections, before any pattern sees the model.

diffusers' GEGLU projects to twice its width and chunks the result: `hidden, gate = proj(x).chunk(2, -1)`,
then `hidden * gelu(gate)`. The dynamo exporter writes the chunk as a Split, TorchScript as two Slices whose
ends it computes from the projection's shape. dlc writes the same numbers as `mul( fc F | fc F gelu )`: the
stored weight's first half of columns (and of the bias) is the `hidden` fc, the second the gate's. So each
MatMul by a stored (C_in, 2F) weight (and the Add of its stored bias) whose output is read only by such a
halving is rewritten as two, one per half, and the halves' readers read them. nn.GLU's Split (the second
half's sigmoid times the first) is left to the `glu` kind, which imports it whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx.external_data_helper import load_external_data_for_model

from dlc.onnx.importing.layout import Stretches, stored_tensor
from dlc.onnx.model import attributes, infer, input_shapes, shape_values, skeleton


def split_halves(model: onnx.ModelProto, path: str, shapes: dict | None = None) -> onnx.ModelProto:
    """The model (read from `path`) with each projection cut in halves rewritten as two projections; the
    model itself when it has none."""
    s = Stretches(model, path)
    if not any(projection(s, n) for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model stays as it was
    load_external_data_for_model(model, str(Path(path).parent))  # held whole, as layout.channels_first does
    values = infer(skeleton(model, input_shapes(model, shapes or {}), 1, path))
    known = shape_values(model, values)
    s = Stretches(model, path)
    for n in list(model.graph.node):
        found = projection(s, n)
        cut = found and halves(s, *found[1:], values, known)
        if cut:
            rewrite(s, n, *found, cut)
            s = Stretches(model, path)  # afresh: the rewrite changed the nodes it maps
    return model


def projection(s: Stretches, n: onnx.NodeProto) -> tuple[onnx.NodeProto | None, str, int] | None:
    """For a MatMul by a stored 2-D weight: the Add of its stored bias (if one follows), the tensor the
    projection gives and its width, when that tensor is cut by a Split or Slices; else None."""
    if n.op_type != "MatMul" or not s.is_weight(n.input[1]):
        return None
    out, add = n.output[0], None
    after = s.consumers.get(out, [])
    if len(after) == 1 and after[0].op_type == "Add":
        b = next((s.stored(i) for i in after[0].input if i != out), None)
        if b is not None and b.shape == (s.stored(n.input[1]).shape[1],):
            add, out = after[0], after[0].output[0]
    readers = [c for c in s.consumers.get(out, []) if c.op_type != "Shape"]
    if not readers or any(c.op_type not in ("Split", "Slice") or c.input[0] != out for c in readers):
        return None
    return add, out, s.stored(n.input[1]).shape[1]


def halves(s: Stretches, out: str, width: int, values: dict, known: dict) -> tuple[str, str] | None:
    """The tensors holding the first and the second half of `out`'s last axis, if its readers cut it so
    (and not as nn.GLU does); else None."""
    dims = values.get(out)
    rank = len(dims.type.tensor_type.shape.dim) if dims is not None else 0
    readers = [c for c in s.consumers.get(out, []) if c.op_type != "Shape"]
    if rank < 2 or out in {v.name for v in s.model.graph.output}:  # the whole is needed as it is
        return None
    kinds = sorted(c.op_type for c in readers)
    if kinds not in (["Split"], ["Slice", "Slice"]):  # each half taken once, by one operator
        return None
    half = width // 2
    parts: dict[tuple[int, int], str] = {}
    for c in readers:
        a = attributes(c)
        if c.op_type == "Split":
            given = known.get(c.input[1]) if len(c.input) > 1 and c.input[1] else a.get("split")
            if a.get("axis", 0) % rank != rank - 1 or len(c.output) != 2 or width % 2 or \
                    given is not None and list(np.asarray(given).reshape(-1)) != [half, half]:
                return None
            parts.update({(0, half): c.output[0], (half, width): c.output[1]})
            continue
        inputs = [known.get(i) if i else None for i in list(c.input[1:5]) + [""] * (5 - len(c.input))]
        starts, ends, axes, steps = inputs
        if starts is None or ends is None or len(c.input) > 3 and axes is None or len(c.input) > 4 and steps is None:
            return None
        if starts.size != 1 or axes is None or int(axes.reshape(-1)[0]) % rank != rank - 1 or \
                steps is not None and int(steps.reshape(-1)[0]) != 1:
            return None
        begin, stop = (min(max(int(v.reshape(-1)[0]) + (width if v.reshape(-1)[0] < 0 else 0), 0), width)
                       for v in (starts, ends))
        parts[(begin, stop)] = c.output[0]
    if set(parts) != {(0, half), (half, width)}:
        return None
    first, second = parts[(0, half)], parts[(half, width)]
    gate = s.consumers.get(second, [])
    if kinds == ["Split"] and len(gate) == 1 and gate[0].op_type == "Sigmoid" and \
            any(c.op_type == "Mul" and first in c.input for c in s.consumers.get(gate[0].output[0], [])):
        return None  # nn.GLU: the glu kind's
    return first, second


def rewrite(s: Stretches, n: onnx.NodeProto, add: onnx.NodeProto | None, out: str, width: int,
            cut: tuple[str, str]) -> None:
    g = s.model.graph
    w = s.stored(n.input[1])
    b = None if add is None else next(s.stored(i) for i in add.input if s.stored(i) is not None)
    half = width // 2
    nodes = []
    for k, (name, cols) in enumerate(zip(cut, (slice(0, half), slice(half, None)))):
        weight = stored_tensor(s, f"{n.input[1]}/half{k}", w[:, cols])
        product = name if b is None else f"{name}/product"
        nodes.append(helper.make_node("MatMul", [n.input[0], weight], [product], name=f"{n.name or name}/half{k}"))
        if b is not None:
            bias = stored_tensor(s, f"{out}/bias/half{k}", b[cols])
            nodes.append(helper.make_node("Add", [product, bias], [name], name=f"{add.name or name}/half{k}"))
    at = list(g.node).index(n)
    for m in reversed(nodes):
        g.node.insert(at, m)
    cutters = {id(c) for c in s.consumers.get(out, []) if c.op_type != "Shape"}
    unread(s.model, [c for c in g.node if id(c) in cutters])
    keep = [v for v in g.value_info if v.name != out]  # the whole's tensor is gone
    del g.value_info[:]
    g.value_info.extend(keep)


def unread(model: onnx.ModelProto, gone: list[onnx.NodeProto]) -> None:
    """Remove the nodes `gone`, then those only they read (the projection cut in two, the Shape of it and
    TorchScript's arithmetic of the halves' ends), until none is left."""
    g = model.graph
    while gone:
        for n in gone:
            g.node.remove(n)
        freed = {i for n in gone for i in n.input}
        read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        gone = [n for n in g.node if any(o in freed for o in n.output) and not any(o in read for o in n.output if o)]
