"""Patterns of rnn, lstm and gru: the ONNX operator between the exporters' transposes to and from
time-major, read as every step or the final state.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from dlc.decompile import SpecLayer
from dlc.onnx.importing.reader import Found, NotImportable, Pattern, Reader, producer_node
from dlc.onnx.model import attributes


def recurrent(kind: str) -> Pattern:
    """An ONNX RNN/LSTM/GRU between the exporters' transposes: (N, T, D) in, and out either every step
    (N, T, dirs*H) as `sequences` or the final state (N, dirs*H)."""
    def match(r: Reader, n: onnx.NodeProto) -> Found | None:
        if n.op_type == "Transpose":  # the pattern starts at the transpose to time-major
            after = r.only_consumer(n.output[0])
            if after is None or after.op_type != kind.upper() or list(attributes(n).get("perm", [])) != [1, 0, 2]:
                return None
            n = after
        a = attributes(n)
        if a.get("layout", 0):
            raise NotImportable("layout=1 (batch first inside the operator) is not what dlc's lowering reads")
        for key in ("activations", "clip", "input_forget"):
            if a.get(key):
                raise NotImportable(f"{key}= differs from dlc's {kind}")
        if kind == "gru" and not a.get("linear_before_reset", 0):
            raise NotImportable("linear_before_reset=0; dlc's gru applies the reset gate after the product")
        for i in (4, 5, 6):
            if r.optional(n, i) and (i == 4 or not zeros(r, n.input[i])):
                raise NotImportable("sequence lengths or non-zero initial states have no dlc option")
        before = producer_node(r, n.input[0])
        if before is None or before.op_type != "Transpose" or list(attributes(before)["perm"]) != [1, 0, 2]:
            raise NotImportable("its input is not a batch-first sequence transposed to time-major")
        dirs = 2 if a.get("direction", b"forward") == b"bidirectional" else 1
        if a.get("direction", b"forward") == b"reverse":
            raise NotImportable("direction=reverse has no dlc option")
        hidden = a["hidden_size"]
        tensors = {"W": r.weight(n, 1, "W"), "R": r.weight(n, 2, "R"),
                   "B": r.weight(n, 3, "B") if r.optional(n, 3) else
                   np.zeros((dirs, 2 * r.weight(n, 1, "W").shape[1]), np.float32)}
        ys = [o for o in n.output[:2]] + [""] * 2
        t = r.shape(before.input[0])[0]  # steps of the batch-first input
        chain = follow_reshapes(r, ys[0], (t, dirs * hidden)) if ys[0] else None
        if chain is not None:
            last = last_step(r, chain[-1].output[0], t)
            if last is not None and dirs == 1:  # out[:, -1]: a one-way layer's final state
                return Found(SpecLayer(kind, [], str(hidden)), [before, n, *chain, last], last.output[0], tensors,
                             n.name)
            return Found(SpecLayer(kind, [], str(hidden), {"bidirectional": dirs == 2, "sequences": True}),
                         [before, n, *chain], chain[-1].output[0], tensors, n.name)
        chain = follow_reshapes(r, ys[1], (dirs * hidden,)) if ys[1] else None
        if chain is not None:
            return Found(SpecLayer(kind, [], str(hidden), {"bidirectional": dirs == 2}), [before, n, *chain],
                         chain[-1].output[0], tensors, n.name)
        raise NotImportable("its outputs are not read as every step (N, T, dirs*H) or the final state (N, dirs*H)")
    return match


def zeros(r: Reader, name: str) -> bool:
    """Whether the tensor is all zeros: a stored one, or a zero expanded to a computed shape (the
    TorchScript exporter's initial states)."""
    v = r.value(name)
    if v is not None:
        return not v.any()
    n = producer_node(r, name)
    if n is not None and n.op_type == "Expand":
        v = r.value(n.input[0])
        return v is not None and not v.any()
    if n is not None and n.op_type == "ConstantOfShape":
        value = attributes(n).get("value")
        return value is None or not numpy_helper.to_array(value).any()
    return False


def last_step(r: Reader, name: str, t: int) -> onnx.NodeProto | None:
    """The Gather that takes step -1 (or T-1) of a batch-first sequence, if that is all that reads it."""
    n = r.only_consumer(name)
    if n is None or n.op_type != "Gather" or attributes(n).get("axis", 0) != 1:
        return None
    index = r.value(n.input[1])
    return n if index is not None and index.size == 1 and int(index.reshape(-1)[0]) in (-1, t - 1) \
        and index.ndim == 0 else None


def follow_reshapes(r: Reader, name: str, target: tuple[int, ...]) -> list[onnx.NodeProto] | None:
    """The shortest chain of Transpose/Reshape/Squeeze nodes, each the only reader of the last, from
    `name` to a tensor shaped `target` per sample (batch first), or None."""
    chain, cur = [], name
    while True:
        nxt = r.only_consumer(cur)
        if nxt is None or nxt.op_type not in ("Transpose", "Reshape", "Squeeze"):
            return None
        chain.append(nxt)
        cur = nxt.output[0]
        if r.shape(cur) == target:
            return chain
