"""A compiled graph and its weights as an ONNX model, checked before anyone runs it.

Default opset: the lowest in which every kind of the network has its own operator (13; 20 with gelu,
23 with attention's rope: RotaryEmbedding),
so that older runtimes and converters read the model (dlc.onnx.lower.lowest_opset). The IR version is
the lowest one that opset needs (7 for opset 13, 10 for opset 21): onnx 1.23 writes IR 14 by default,
which onnxruntime up to at least 1.31 refuses (it accepts at most 13). A model over protobuf's 2 GB
limit is saved with its weights in an external data file beside it (NAME.onnx.data).
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlc import __version__
from dlc.atomic import atomic_write
from dlc.errors import DlcError
from dlc.engine.params import tensors
from dlc.graph import Graph, Network, Node
from dlc.layers import KINDS, param_count
from dlc.normalize import stats_error
from dlc.onnx import MAX_OPSET, MIN_OPSET
from dlc.onnx.lower import LOWER, lowest_opset
from dlc.onnx.model import is_external, tensor_values

PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf cannot serialise a larger message
BYTES_PER_FLOAT = 4  # initializers are float32
ELEM_TYPE = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
# metadata_props keys
META_SPEC, META_FILE, META_VERSION, META_NORMALIZE = "dlc.spec", "dlc.file", "dlc.version", "dlc.normalize"


def in_shapes(graph: Graph, n: Node) -> list[tuple[int, ...]]:
    return [graph.node(i).out_shape for i in n.inputs]


def where(graph: Graph, n: Node) -> str:
    """`file:line: text` of the step that made the node, for doc strings and messages."""
    return f"{graph.file}:{n.pos.line}: {n.text}" if n.pos else f"{graph.file}: {n.text or n.name}"


def to_onnx(net: Network, *, opset: int | None = None, batch: int | None = None, data_file: str | None = None,
            limit: int = PROTOBUF_LIMIT) -> onnx.ModelProto:
    """The ONNX model of the network; the batch axis is "N" unless `batch` fixes it.

    `opset` defaults to the lowest that gives every kind its own operator (lowest_opset).
    The network's `normalize` (a checkpoint's meta["normalize"]) travels in the metadata so `dlc infer`
    applies it.
    Weights over `limit` bytes in all cannot live in a protobuf message (not even one 2.3 GB tensor): with
    `data_file` (a name beside the model), the initializers then refer to that file, and save_model
    writes it from the arrays themselves.
    """
    graph, normalize = net.graph, net.normalize
    if opset is None:
        opset = lowest_opset(graph)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DlcError(f"opset {opset} is not supported: dlc exports opsets {MIN_OPSET} to {MAX_OPSET} "
                       f"(default: the lowest that expresses the network, {lowest_opset(graph)} for this one)")
    if batch is not None and batch < 1:
        raise DlcError(f"batch must be >= 1 (received {batch})")
    if len(graph.nodes) < 2:
        raise DlcError("the network has no layers to export")
    dim = batch if batch else "N"
    given = {**net.state, **net.params}
    nodes, arrays = [], {}
    for t in tensors(graph):
        if t.full_name not in given:
            raise DlcError(f"no weights for {t.full_name} (expected shape {t.shape})")
        arr = np.asarray(given[t.full_name])
        if arr.shape != t.shape:
            raise DlcError(f"{t.full_name} has shape {arr.shape}, the spec needs {t.shape}")
        arrays[t.full_name] = arr
    external = data_file is not None and BYTES_PER_FLOAT * sum(a.size for a in arrays.values()) > limit
    initializers = external_initializers(arrays, data_file) if external else [
        numpy_helper.from_array(a.astype(np.float32, copy=False), name) for name, a in arrays.items()]
    for n in graph.nodes:
        if n.kind == "input":
            continue  # a graph input, below
        lower = LOWER.get(n.kind)
        if lower is None:
            raise DlcError(f"`{n.kind}` has no ONNX lowering", n.pos, graph.file, graph.source)
        for proto in lower(n, list(n.inputs), opset):
            proto.doc_string = where(graph, n)
            nodes.append(proto)
    # each declared output is the graph output of its label's name (the compiler keeps labels apart
    # from layer names), so a reader finds `logits` and `pooled`, not `fc3` and `tanh2`
    renamed = {node: label for label, node in graph.output_labels.items() if label != node}
    for proto in nodes:
        for ports in (proto.input, proto.output):
            ports[:] = [renamed.get(t, t) for t in ports]
    g = helper.make_graph(
        nodes, Path(graph.file).stem or "dlc",
        [helper.make_tensor_value_info(i.name, ELEM_TYPE[i.dtype],
                                       list(i.out_shape) if i.attrs.get("shared") else [dim, *i.out_shape])
         for i in graph.inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [dim, *out.out_shape])
         for name, out in zip(graph.output_names, graph.outputs)],
        initializer=initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="dlc", producer_version=__version__)
    meta = {META_SPEC: graph.source, META_FILE: graph.file, META_VERSION: __version__}
    if normalize:
        meta[META_NORMALIZE] = json.dumps(normalize)
    helper.set_model_props(model, meta)
    return model


def external_initializers(arrays: dict, data_file: str) -> list[onnx.TensorProto]:
    """Float32 initializers whose values lie in `data_file`, one after another in the order of `arrays`
    (write_external_data writes them so)."""
    out, offset = [], 0
    for name, arr in arrays.items():
        t = onnx.TensorProto(name=name, dims=arr.shape, data_type=TensorProto.FLOAT,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", data_file), ("offset", offset), ("length", BYTES_PER_FLOAT * arr.size)):
            t.external_data.add(key=key, value=str(value))
        out.append(t)
        offset += BYTES_PER_FLOAT * arr.size
    return out


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model.graph.initializer)


def check_export(model: onnx.ModelProto, net: Network) -> None:
    """The model is valid ONNX, its inferred shapes are dlc's, and it carries exactly the network's weights."""
    graph = net.graph
    try:
        # With external data (not written yet) the checker reads the graph without the weights' values.
        onnx.checker.check_model(skeleton(model) if uses_external_data(model) else model, full_check=True)
        # data_prop: clstoken's Expand takes a shape built from the batch (Shape, Gather, Concat), whose
        # values only data propagation follows; without it the step axis comes back unknown
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), check_type=True, strict_mode=True,
                                                    data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DlcError(f"the exported model is not valid ONNX: {e}")
    shapes = {v.name: v.type.tensor_type.shape for v in
              [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    first = next(i for i, n in enumerate(graph.inputs) if not n.attrs.get("shared"))
    batch = model.graph.input[first].type.tensor_type.shape.dim[0].dim_value or None
    renamed = {node: label for label, node in graph.output_labels.items()}
    for n in graph.nodes:
        if n.attrs.get("shared"):
            continue  # a graph input of its own shape, without the batch
        name = renamed.get(n.name, n.name)
        got = [d.dim_value or None for d in shapes[name].dim] if name in shapes else None
        # A dynamic batch may come back under another symbol (Resize renames it): only a number counts.
        if got is None or got[1:] != list(n.out_shape) or got[0] != batch:
            show = "no shape" if got is None else [d or "N" for d in got]
            raise DlcError(f"{where(graph, n)}: ONNX shape inference gives {show} for {n.name}, "
                           f"dlc {[batch or 'N', *n.out_shape]}")
    count = sum(prod(t.dims) for t in model.graph.initializer)
    dlc_count = sum(sum(param_count(KINDS[n.kind], n.attrs, in_shapes(graph, n))) for n in graph.nodes[1:])
    if count != dlc_count:
        raise DlcError(f"the model's initializers hold {count:,} values, dlc counts {dlc_count:,} "
                       f"(params + non-trainable)")
    given = {**net.state, **net.params}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            continue  # save_model writes these from the given arrays themselves
        if t.name in given and not np.array_equal(numpy_helper.to_array(t), np.asarray(given[t.name], np.float32)):
            raise DlcError(f"initializer {t.name} differs from the weights it was exported from")


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its initializers as graph inputs without data. Shape inference reads only their
    shapes (the values it needs, Reshape's shape and the like, are Constant nodes), and a copy without
    hundreds of MB of weights goes through onnx's C++ in milliseconds instead of seconds."""
    g = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in g.initializer]
    return helper.make_model(helper.make_graph(g.node, g.name, [*g.input, *weights], g.output),
                             opset_imports=model.opset_import, ir_version=model.ir_version)


def save_model(model: onnx.ModelProto, path, weights: dict | None = None) -> str | None:
    """Write atomically (dlc.atomic). A model whose initializers refer to external data (to_onnx's
    data_file) is written with that file, from `weights` (params and state by name), whose path it
    returns; else None."""
    blob, data = model.SerializeToString(), None
    if uses_external_data(model):
        data = Path(path).with_name(model.graph.initializer[0].external_data[0].value)
        with atomic_write(data) as f:  # the data first: a reader never sees a model without it
            for t in model.graph.initializer:  # in the order external_initializers laid them out
                f.write(memoryview(np.ascontiguousarray(weights[t.name], dtype=np.float32)).cast("B"))
    with atomic_write(path) as f:
        f.write(blob)
    return str(data) if data else None


def spec_of(model: onnx.ModelProto, path: str = "model") -> tuple[str, str]:
    """(file, spec text) that dlc stored when it exported the model."""
    meta = {p.key: p.value for p in model.metadata_props}
    if META_SPEC not in meta:
        raise DlcError(f"{path} was not exported by dlc: its metadata has no spec text")
    return meta.get(META_FILE, path), meta[META_SPEC]


def normalize_of(model: onnx.ModelProto, path: str = "model") -> dict | None:
    """The input normalisation dlc train stored in the model's metadata, checked (a file may be edited)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if META_NORMALIZE not in meta:
        return None
    try:
        norm = json.loads(meta[META_NORMALIZE])
        problem = stats_error(norm, META_NORMALIZE)
    except ValueError:
        problem = f"`{META_NORMALIZE}` is not JSON"
    if problem:
        raise DlcError(f"{path}: its metadata's {problem}")
    return norm


def weights_of(model: onnx.ModelProto, graph: Graph, path: str = "model") -> tuple[dict, dict]:
    """(params, state) from the initializers of the model at `path`, split as the registry splits them."""
    stored = {t.name: tensor_values(t, path) for t in model.graph.initializer}
    params, state = {}, {}
    for t in tensors(graph):
        arr = stored.get(t.full_name)
        if arr is None or arr.shape != t.shape:
            got = "missing" if arr is None else f"shaped {arr.shape}"
            raise DlcError(f"the model's initializer {t.full_name} is {got}; its spec needs {t.shape}")
        (params if t.trainable else state)[t.full_name] = arr
    return params, state


def summary_line(model: onnx.ModelProto) -> str:
    n_values = sum(prod(t.dims) for t in model.graph.initializer)
    return (f"opset {model.opset_import[0].version}, IR {model.ir_version}, {len(model.graph.node)} ONNX nodes, "
            f"{len(model.graph.initializer)} initializers, {n_values:,} values")
