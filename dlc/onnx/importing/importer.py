"""The import of one model: its operators matched to layers in the model's order (read_layers), the
spec the layers make (dlc.decompile), and the weights keyed by the spec's node names (import_onnx).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from dlc.compile import KEYWORDS, READS_SHARED, RESERVED
from dlc.decompile import SpecLayer, comment, write_spec
from dlc.errors import DlcError
from dlc.graph import Network
from dlc.layers import KINDS, Signal
from dlc.layers.spatial import show
from dlc.onnx.importing import BY_OP, IMPORT
from dlc.onnx.importing.halves import split_halves
from dlc.onnx.importing.layout import channels_first
from dlc.onnx.importing.quantized import float_twin
from dlc.onnx.importing.reader import Found, NotImportable, Reader, Refused, node_error
from dlc.onnx.model import check_weights, from_model, input_shapes, read_model, validate


def input_size(r: Reader, name: str) -> str:
    """The input step's size: `seq T` for token ids, `seq T of D`, or the shape of a vector or an image."""
    t = r.g.tensors[name]
    shape = r.shape(name)
    if not t.is_float:
        kind = onnx.TensorProto.DataType.Name(t.elem_type).lower()
        if not kind.startswith(("int", "uint")):  # a string tensor, booleans: no dlc input holds them
            raise DlcError(f"the model's input {name} is a {kind} tensor; dlc's inputs hold numbers (images, "
                           f"vectors, sequences) or integer token ids")
        if len(shape) != 1:
            raise DlcError(f"the model's input {name} holds integers shaped {show(shape) or 'as a scalar'} per "
                           f"sample; dlc reads integers as token ids, (batch, T)")
        return f"seq {shape[0]}"
    if len(shape) == 2 and name in r.g.signals:
        return show(Signal(shape))
    if len(shape) == 2:
        return f"seq {shape[0]} of {shape[1]}"
    if not shape:
        return "scalar"
    if len(shape) not in (1, 3, 4):
        raise DlcError(f"the model's input {name} is {show(shape)} per sample; dlc's inputs are vectors, "
                       f"sequences, signals C@L, images C@HxW and volumes C@DxHxW")
    return show(shape)


def shared_size(r: Reader, name: str, dims: list) -> str:
    """`3x4 shared`: the whole shape of an input without a batch axis, as the model declares it."""
    t = r.g.tensors[name]
    if not t.is_float or not all(isinstance(d, int) for d in dims):
        what = "a shape of named sizes" if t.is_float else \
            f"{onnx.TensorProto.DataType.Name(t.elem_type).lower()} values"
        raise DlcError(f"the model's input {name} has no batch axis and holds {what}; dlc reads such an input "
                       f"as one float tensor of fixed shape, shared by every sample")
    return "x".join(map(str, dims)) + " shared"


def input_labels(names: list[str], prefix: str = "in") -> list[str]:
    """The spec's label of each input (or output): its ONNX name where that is a word a label may be,
    else `in1`, `in2`, … (`out1`, …) by its position (PyTorch's exporter names inputs `0`, `1`)."""
    def fits(name: str) -> bool:
        return (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and name not in KEYWORDS
                and not RESERVED.fullmatch(name) and name.rstrip("0123456789") not in KINDS
                and not re.fullmatch(r"(skip|tok)\d*", name))  # the labels the writer gives forks and tables
    if all(fits(n) for n in names) and len(set(names)) == len(names):
        return list(names)
    return [f"{prefix}{k}" for k in range(1, len(names) + 1)]


def read_layers(r: Reader) -> tuple[list[Found], dict[str, int]]:
    """The layers found, the input at 0 (with no nodes), and the position of each output's layer by the
    label the spec gives it (the model's order)."""
    g = r.g
    names = input_labels(g.inputs) if len(g.inputs) > 1 else [""]
    shared = r.shared
    sizes = [shared_size(r, x, shared[x]) if x in shared else input_size(r, x) for x in g.inputs]
    layers = [Found(SpecLayer("input", [], size, label=label), [], x) for x, size, label in zip(g.inputs, sizes, names)]
    producer = {x: i for i, x in enumerate(g.inputs)}
    used: set[int] = set()
    for n in g.nodes:
        if id(n) in used or not any(i in producer for i in n.input if i) or not any(o in r.live for o in n.output):
            continue  # a helper (constant or shape arithmetic, Shape of a layer's output), or taken already
        found = match(r, n)
        used.update(id(m) for m in found.nodes)
        live = list(dict.fromkeys(i for i in n.input if i in producer))  # Mul(x, x) reads one layer output
        if found.layer is None:
            producer[found.output] = producer[live[0]]
            continue
        layer = found.layer
        unbatched = [i for i in n.input if i in shared]
        if unbatched and layer.kind not in READS_SHARED:
            raise DlcError(node_error(n, f"it reads the input {unbatched[0]}, which has no batch axis (ONNX "
                                         f"broadcasts it over the batch); of dlc's layers only the merges that "
                                         f"broadcast read such an input"))
        if found.tied in producer and layers[producer[found.tied]].layer.kind == "embed":
            layer.tied = producer[found.tied]
        if KINDS[layer.kind].merge:
            # a Gemm's C is no operand of its matmul: a stored zero, or added after it (found.plus)
            operands = n.input[:2] if layer.kind == "matmul" else n.input
            if any(i not in producer for i in operands if i):
                raise DlcError(node_error(n, f"one operand is a stored tensor; dlc's {layer.kind} merges layer "
                                             f"outputs"))
            layer.inputs = [producer[i] for i in operands]
        else:
            if len(live) != 1:
                raise DlcError(node_error(n, f"it reads {len(live)} layer outputs; dlc's {layer.kind} reads one"))
            layer.inputs = [producer[live[0]]]
            layer.reads = {option: producer[t] for option, t in found.reads.items()}
        layers.append(found)
        producer[found.output] = len(layers) - 1
        if found.plus:  # a layer output the operator adds to its product: an add after the layer
            layers.append(Found(SpecLayer("add", [len(layers) - 1, producer[found.plus]]), [], found.output,
                                node=n.name))
            producer[found.output] = len(layers) - 1
    for out in g.outputs:
        if out not in producer:
            raise DlcError(f"{g.path}'s output {out} does not depend on its input")
    if len(set(producer[out] for out in g.outputs)) < len(g.outputs):
        raise DlcError(f"{g.path}'s outputs {', '.join(g.outputs)} repeat one tensor; a spec's outputs are "
                       f"distinct steps")
    return layers, {label: producer[out] for label, out in zip(input_labels(g.outputs, "out"), g.outputs)}


def match(r: Reader, n: onnx.NodeProto) -> Found:
    reasons = []
    for kind in BY_OP.get(n.op_type, []) if n.domain in ("", "ai.onnx") else []:
        try:
            found = IMPORT[kind].match(r, n)
        except Refused as e:
            raise DlcError(node_error(n, str(e)))
        except NotImportable as e:
            reasons.append(str(e))
            continue
        if found is not None:
            return found
    # conv and dwconv decline a Conv for the same reason: said once
    why = "; ".join(dict.fromkeys(reasons)) or (
        f"dlc has no layer kind for {n.op_type}" if n.op_type not in BY_OP else
        f"this {n.op_type} is none of the forms dlc imports ({', '.join(BY_OP[n.op_type])})")
    raise DlcError(node_error(n, why))


def import_onnx(path: str, shapes: dict | None = None) -> tuple[Network, str]:
    """The model at `path` as a network: its graph's source is the spec to write (shape comments
    included, which move no step), its tensors the checkpoint's; and, for a quantized model, the line
    saying what was dequantized ("" for a float one)."""
    model = read_model(path)
    check_weights(model, path)
    validate(model, path, input_shapes(model, shapes or {}))
    model, dequantized = float_twin(model, path)
    g = from_model(channels_first(split_halves(model, path, shapes), path), path, shapes)
    r = Reader(g)
    found, outputs = read_layers(r)
    producer = " ".join(filter(None, [model.producer_name, model.producer_version])) or "unknown producer"
    head = comment(f"imported from {Path(path).name} ({producer}, opset {g.opset}) by dlc import") + "\n"
    if dequantized:
        head += comment(dequantized.line()) + "\n"
    spec, graph, order = write_spec([f.layer for f in found], outputs, path, head)
    params, state = {}, {}
    for node, i in zip([n for n in graph.nodes if n.kind != "input"], order):
        kind = KINDS[node.kind]
        shapes_in = [graph.node(x).out_shape for x in node.inputs]
        want = {**kind.params(node.attrs, shapes_in), **kind.state(node.attrs, shapes_in)}
        trainable = set(kind.params(node.attrs, shapes_in))
        for key, shape in want.items():
            arr = found[i].tensors[key]
            if tuple(arr.shape) != tuple(shape):
                raise DlcError(f"{path}: node {found[i].node} gives {key} shaped {arr.shape}; "
                               f"{node.name} needs {shape}")
            (params if key in trainable else state)[f"{node.name}.{key}"] = np.ascontiguousarray(arr, np.float32)
    net = Network(replace(graph, source=spec), params, state, weights=f"{path}'s initializers", onnx_file=path)
    return net, dequantized.line() if dequantized else ""
