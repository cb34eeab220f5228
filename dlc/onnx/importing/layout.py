"""PyTorch's channels-last stretches read channels first, before any pattern sees the model.

torchvision's ConvNeXt block permutes its image to channels-last, normalises each pixel's channels
(LayerNorm), runs Linear layers on them, and permutes back: Transpose, LayerNormalization, MatMul/Add,
Gelu, MatMul/Add, Transpose. Each of those per-pixel steps has a channels-first twin, so the stretch is
rewritten into one: the norm keeps its Transposes (`layernorm channels`'s own pattern), each MatMul by a
stored (C_in, C_out) weight becomes a 1x1 Conv with the weight transposed (and the Add of a stored vector
after it, the Conv's bias), an Add or Mul by a stored vector of the channels takes it as (C, 1, 1), and
elementwise operators stay as they are. The outputs are the same numbers; the layers are dlc's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from dlc.onnx.model import attributes, tensor_values

LAST, FIRST = [0, 2, 3, 1], [0, 3, 1, 2]  # NCHW -> NHWC and back
# Operators that act on each value alone (or on two values at one place): the layout does not change them.
ELEMENTWISE = {"Gelu", "Erf", "Relu", "Sigmoid", "Tanh", "Sqrt", "Softplus", "HardSigmoid", "HardSwish", "Identity",
               "Add", "Sub", "Mul", "Div", "Clip"}


class Stretches:
    """The model's tensors as the rewrite reads them: producers, consumers, stored values."""

    def __init__(self, model: onnx.ModelProto, path: str):
        self.model, self.path = model, path
        self.init = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def stored(self, name: str) -> np.ndarray | None:
        """A tensor's value if it is an initializer, a Constant, or an Identity of one (TorchScript's alias
        of a shared weight)."""
        if name in self.init:
            return tensor_values(self.init[name], self.path)
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and "value" in attributes(p):
            return numpy_helper.to_array(attributes(p)["value"])
        if p is not None and p.op_type == "Identity":
            return self.stored(p.input[0])
        return None

    def is_weight(self, name: str) -> bool:
        w = self.stored(name)
        return w is not None and w.ndim == 2

    def region(self, back: onnx.NodeProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
        """The LayerNormalization that starts the channels-last stretch ending at Transpose `back`, and the
        operators between them, if every one has a channels-first twin and nothing outside reads them."""
        found: dict[int, onnx.NodeProto] = {}
        norms, stack = [], [back.input[0]]
        while stack:
            p = self.producer.get(stack.pop())
            if p is None:
                return None
            if p.op_type == "LayerNormalization":
                x = self.producer.get(p.input[0])
                if x is None or x.op_type != "Transpose" or list(attributes(x).get("perm", ())) != LAST:
                    return None
                norms.append(p)
                continue
            if id(p) in found:
                continue
            if p.op_type not in ELEMENTWISE | {"MatMul"} or p.op_type == "MatMul" and not self.is_weight(p.input[1]):
                return None
            found[id(p)] = p
            stack += [i for i in p.input if i and self.stored(i) is None]
        if len({id(n) for n in norms}) != 1 or not found:
            return None
        inside = {id(n) for n in found.values()} | {id(back)}
        if any(id(c) not in inside for n in found.values() for o in n.output for c in self.consumers.get(o, [])):
            return None
        order = [n for n in self.model.graph.node if id(n) in found]  # the model's order is topological
        return norms[0], order


def channels_first(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """The model (read from `path`) with each channels-last stretch after a LayerNorm rewritten channels
    first; the model itself when it has none."""
    s = Stretches(model, path)
    if not any(s.region(back) for back in transposes_back(model)):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model stays as it was
    # the rewritten model is no longer the file beside its external data (dynamo's .onnx.data): held whole
    load_external_data_for_model(model, str(Path(path).parent))
    s = Stretches(model, path)
    for back in transposes_back(model):
        found = s.region(back)
        if found is not None:
            rewrite(s, back, *found)
            s = Stretches(model, path)  # afresh: the rewrite changed the nodes it maps
    return model


def transposes_back(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Transpose" and list(attributes(n).get("perm", ())) == FIRST]


def rewrite(s: Stretches, back: onnx.NodeProto, norm: onnx.NodeProto, region: list[onnx.NodeProto]) -> None:
    g = s.model.graph
    first = norm.output[0] + "/channels_first"
    g.node.insert(list(g.node).index(norm) + 1, helper.make_node("Transpose", [norm.output[0]], [first],
                                                                  name=first, perm=FIRST))
    changed = {o for n in region for o in n.output}
    for n in region:
        for k, i in enumerate(n.input):
            if i == norm.output[0]:
                n.input[k] = first
    folded: set[int] = set()
    for n in region:
        if id(n) in folded:
            continue
        if n.op_type == "MatMul":
            folded |= as_conv(s, n, region)
        elif n.op_type in ("Add", "Sub", "Mul", "Div"):
            for k, i in enumerate(n.input):
                v = s.stored(i)
                if v is not None and v.size > 1:
                    n.input[k] = stored_tensor(s, f"{i}/channels_first", v.reshape(-1, 1, 1))
    for n in region:
        if id(n) in folded:
            g.node.remove(n)
    # the Transpose back is now the identity: its readers read the stretch's last tensor through it
    back.op_type = "Identity"
    del back.attribute[:]
    keep = [v for v in g.value_info if v.name not in changed]  # the exporter's shapes there were channels-last
    del g.value_info[:]
    g.value_info.extend(keep)


def as_conv(s: Stretches, n: onnx.NodeProto, region: list[onnx.NodeProto]) -> set[int]:
    """MatMul(x, W (C_in, C_out)) as Conv 1x1 (C_out, C_in, 1, 1), and the Add of a stored (C_out,) after it
    as the Conv's bias; the ids of the nodes folded away."""
    w = s.stored(n.input[1])  # 2-D: region() admits no other MatMul
    inputs = [n.input[0], stored_tensor(s, f"{n.input[1]}/conv1x1", w.T.reshape(*w.T.shape, 1, 1))]
    folded, out = set(), n.output[0]
    after = s.consumers.get(out, [])
    if len(after) == 1 and after[0].op_type == "Add" and any(a is after[0] for a in region):
        b = next((s.stored(i) for i in after[0].input if i != out), None)
        if b is not None and b.size == w.shape[1]:
            inputs.append(stored_tensor(s, f"{after[0].name or out}/bias", b.reshape(-1)))
            folded.add(id(after[0]))
            out = after[0].output[0]
    n.op_type = "Conv"
    del n.input[:]
    n.input.extend(inputs)
    n.output[0] = out
    n.attribute.extend([helper.make_attribute("kernel_shape", [1, 1])])
    return folded


def stored_tensor(s: Stretches, name: str, value: np.ndarray) -> str:
    if name not in s.init:
        s.init[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        s.model.graph.initializer.append(s.init[name])
    return name
