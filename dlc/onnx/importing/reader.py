"""The model as the patterns read it (Reader), what a pattern returns (Found), and the two ways a
pattern declines an operator that has its form (NotImportable, Refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlc.decompile import SpecLayer
from dlc.onnx.analysis import live_tensors
from dlc.onnx.model import OnnxGraph, attributes, stored_value, unbatched_inputs


class NotImportable(Exception):
    """The operator is this kind's, but with a setting dlc's kind cannot express; the message says which."""


class Refused(NotImportable):
    """The operators have this kind's form but compute something else (cross-attention, another mask):
    the import stops here, so that no other kind takes them apart into layers that would import wrongly."""


@dataclass
class Found:
    """What a pattern matched: the layer (None where the tensor passes through) and its tensors, the nodes
    it used and the tensor that carries its output."""

    layer: SpecLayer | None
    nodes: list[onnx.NodeProto]
    output: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # by the kind's tensor names
    node: str = ""  # the ONNX node it starts at, for messages
    tied: str = ""  # an fc whose weight is an embedding's table: the tensor that embedding writes
    reads: dict[str, str] = field(default_factory=dict)  # tensors read by an option (`from=`, `mask=`), by option
    plus: str = ""  # a layer output added to the layer's (a Gemm's C, PyTorch's addmm): an `add` follows


class Reader:
    """The model as the patterns read it: shapes per sample, constant values, consumers of a tensor."""

    def __init__(self, g: OnnxGraph):
        self.g = g
        self.init = {t.name: t for t in g.model.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.checked: dict[tuple, bool] = {}  # attention layouts run against dlc's kernel: causal or not
        self.live = live_tensors(g)
        for n in g.nodes:
            self.producer.update((o, n) for o in n.output if o)
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)

    @cached_property
    def shared(self) -> dict[str, list]:
        """The model's inputs without a batch axis, by their declared dimensions (unbatched_inputs): asked
        at every Mul the patterns meet, found once."""
        return unbatched_inputs(self.g.model)

    @cached_property
    def grids(self) -> set[str]:
        """The tensors that hold a token grid channels last, (N, H, W, C), as Swin's exports keep one: from
        an image's Transpose to (N, H, W, C) (dlc's `tokens`) on, every rank-4 tensor computed from it,
        until a Transpose back to (N, C, H, W) ends the grid."""
        def transpose(n: onnx.NodeProto, perm: list[int]) -> bool:
            return n.op_type == "Transpose" and list(attributes(n).get("perm", [])) == perm

        def rank4(t: str) -> bool:
            v = self.g.tensors.get(t)
            return v is not None and v.known and len(v.shape) == 4
        seen: set[str] = set()
        stack = [n.output[0] for n in self.g.nodes if transpose(n, [0, 2, 3, 1]) and n.input[0] in self.live
                 and rank4(n.input[0])]
        while stack:  # through the windows' other ranks too: attention gives the grid back
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            stack += [o for c in self.consumers.get(t, []) if not transpose(c, [0, 3, 1, 2])
                      for o in c.output if o in self.live]
        return {t for t in seen if rank4(t)}

    def is_constant(self, name: str) -> bool:
        return name in self.g.stored

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value if the file stores it (dlc.onnx.model.stored_tensors), else None."""
        return stored_value(name, self.g.stored, self.g.path) if name in self.g.stored else None

    def evaluated(self, names: list[str]) -> dict[str, np.ndarray | None]:
        """Each tensor's value if it is stored, a Constant, or computed from those alone (PyTorch's rotary
        tables, its masks, TorchScript's Pad amounts from a ConstantOfShape/Concat/Slice chain), the
        computed ones evaluated together in onnx's reference evaluator (imported only then: 0.2 s); None
        for a tensor that depends on the input or that the evaluator cannot compute."""
        values = {i: self.value(i) for i in names}
        needed: dict[int, onnx.NodeProto] = {}
        evaluable = [i for i, v in values.items() if v is None and self._constant_nodes(i, needed)]
        if evaluable:
            from onnx.reference import ReferenceEvaluator

            nodes = [m for m in self.g.nodes if id(m) in needed]
            used = {i for m in nodes for i in m.input}
            graph = helper.make_graph(
                nodes, "constants", [],
                [helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None) for i in evaluable],
                initializer=[numpy_helper.from_array(self.value(k), k) for k in sorted(used) if k in self.init])
            model = helper.make_model(graph, opset_imports=self.g.model.opset_import,
                                      ir_version=self.g.model.ir_version)
            try:
                values.update(zip(evaluable, ReferenceEvaluator(model).run(None, {})))
            except Exception:  # the evaluator raises what its operators do: the caller decides without it
                pass
        return {k: None if v is None else np.asarray(v) for k, v in values.items()}

    def _constant_nodes(self, name: str, needed: dict[int, onnx.NodeProto]) -> bool:
        """Whether `name` is computed from stored tensors and Constants alone; if so its operators are added
        to `needed`."""
        found: dict[int, onnx.NodeProto] = {}
        stack = [name]
        while stack:
            t = stack.pop()
            if t in self.init or t in self.live:
                if t in self.live:
                    return False
                continue
            p = self.producer.get(t)
            if p is None:
                return False
            if id(p) not in found:
                found[id(p)] = p
                stack += [i for i in p.input if i]
        needed.update(found)
        return True

    def weight(self, n: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        """Input i of n as a float32 array; a DlcError-worthy NotImportable if it is computed."""
        v = self.value(n.input[i]) if len(n.input) > i and n.input[i] else None
        if v is None:
            raise NotImportable(f"its {what} is computed by the graph, not a stored tensor")
        return v.astype(np.float32)

    def optional(self, n: onnx.NodeProto, i: int) -> bool:
        return len(n.input) > i and bool(n.input[i])

    def shape(self, name: str) -> tuple[int, ...]:
        """Per sample (the batch, axis 0, left out)."""
        t = self.g.tensors.get(name)
        if t is None or not t.known:
            raise NotImportable(f"ONNX shape inference gives no shape for {name}")
        return tuple(t.shape[1:])

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading the tensor's values, if exactly one does and it is not a graph output
        (Shape and Size read only its shape, which the import keeps)."""
        readers = [n for n in self.consumers.get(name, []) if n.op_type not in ("Shape", "Size")]
        return readers[0] if len(readers) == 1 and name not in self.g.outputs else None


Pattern = Callable[[Reader, onnx.NodeProto], Found | None]


@dataclass(frozen=True)
class Import:
    ops: tuple[str, ...]  # the ONNX operators the pattern starts at
    match: Pattern


def one(kind: str, n: onnx.NodeProto, size: str = "", options: dict | None = None, tensors: dict | None = None,
        output: str | None = None, nodes: list | None = None) -> Found:
    """The layer found at n: its size and options (the writer leaves out those at their defaults)."""
    return Found(SpecLayer(kind, [], size, options or {}), nodes or [n], output or n.output[0], tensors or {}, n.name)


def reduce_axes(r: Reader, n: onnx.NodeProto) -> list[int] | None:
    """A Reduce operator's axes: an attribute before opset 18, an input from then on; None if computed or
    not given (every axis)."""
    axes = attributes(n).get("axes")
    if axes is None and r.optional(n, 1):
        v = r.value(n.input[1])
        axes = None if v is None else v.reshape(-1).tolist()
    return None if axes is None else list(axes)


def const_scalar(r: Reader, name: str) -> float:
    v = r.value(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else math.nan


def other_input(n: onnx.NodeProto, name: str) -> str:
    return n.input[1] if n.input[0] == name else n.input[0]


def node_error(n: onnx.NodeProto, why: str) -> str:
    return f"cannot import operator {n.op_type} (node `{n.name or n.output[0]}`): {why}"


def producer_node(r: Reader, name: str) -> onnx.NodeProto | None:
    return r.producer.get(name)
