"""Patterns of fc (Gemm, or MatMul by a stored weight and its bias; tied to an embedding's table),
flatten and embed.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dlc.onnx.importing.reader import Found, NotImportable, Reader, one
from dlc.onnx.model import attributes


def import_fc(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Gemm on a vector; MatMul by a stored weight (plus an Add of a stored bias) on a vector or on each
    step of a sequence. A weight equal to an embedding's table is that table (`tied=`, GPT-2's output
    layer): the layer keeps W only for the case that the embedding is not imported before it."""
    x = r.shape(n.input[0])
    if len(x) != 1 and not (len(x) == 2 and n.op_type == "MatMul") and not (n.input[0] in r.grids and
                                                                          n.op_type == "MatMul"):
        return None
    dense = dense_parts(r, n)
    if dense is None:
        return None
    tensors, nodes, out = dense
    units = tensors["W"].shape[0]
    found = one("fc", n, str(units), {"bias": "b" in tensors}, tensors, out, nodes)
    found.tied = tied_embedding(r, tensors["W"])
    return found


def tied_embedding(r: Reader, w: np.ndarray) -> str:
    """The output of the embedding (a Gather on a stored (vocab, D) table) whose table equals w, an fc's
    (units, in) weight; "" if none does. Equal values, not the same initializer, tie them: PyTorch's two
    exporters both store a tied weight again, transposed for its MatMul, and a trained table equals
    another tensor in every element only when it is the same parameter."""
    for n in r.g.nodes:
        if n.op_type != "Gather" or n.output[0] not in r.live or attributes(n).get("axis", 0) != 0:
            continue
        t = r.g.tensors.get(n.input[0])
        if t is not None and t.shape == w.shape and r.is_constant(n.input[0]) and \
                np.array_equal(r.value(n.input[0]).astype(np.float32), w):
            return n.output[0]
    return ""


def dense_parts(r: Reader, n: onnx.NodeProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto], str] | None:
    """W (out, in) and maybe b of a Gemm, or of a MatMul by a stored (in, out) weight with maybe an Add
    of a stored bias after it; with the nodes that hold them and the tensor that carries the result."""
    if n.op_type == "Gemm":
        a = attributes(n)
        if a.get("transA", 0):
            raise NotImportable("transA=1 transposes the activations")
        w = r.weight(n, 1, "weight")
        w = w if a.get("transB", 0) else w.T
        tensors = {"W": np.ascontiguousarray(w * np.float32(a.get("alpha", 1.0)))}
        if r.optional(n, 2):
            b = r.weight(n, 2, "bias") * np.float32(a.get("beta", 1.0))
            tensors["b"] = np.broadcast_to(b.reshape(-1), (w.shape[0],)).copy()
        nodes, out = [n], n.output[0]
    else:  # MatMul by a stored (in, out) weight, maybe followed by Add of a stored bias
        w = r.value(n.input[1])
        if w is None or w.ndim != 2:
            return None
        tensors = {"W": np.ascontiguousarray(w.T.astype(np.float32))}
        nodes, out = [n], n.output[0]
        add = r.only_consumer(out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = r.value(other)
            if b is not None and b.size == w.shape[1]:
                tensors["b"] = b.reshape(-1).astype(np.float32)
                nodes, out = [n, add], add.output[0]
    return tensors, nodes, out


def import_flatten(r: Reader, n: onnx.NodeProto) -> Found | None:
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    if y == x:
        return Found(None, [n], n.output[0])  # already a vector: nothing to do
    if len(x) != 1 and y == (math.prod(x),):  # an image, a sequence, or a scalar per sample (a vector of 1)
        return one("flatten", n)
    return None


def import_embed(r: Reader, n: onnx.NodeProto) -> Found | None:
    table = r.value(n.input[0])
    if table is None or attributes(n).get("axis", 0) != 0 or table.ndim != 2:
        return None
    return one("embed", n, str(table.shape[1]), {"vocab": table.shape[0]}, {"W": table.astype(np.float32)})
