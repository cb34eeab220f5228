"""An ONNX model's graph as dlc reads it: nodes, initializer metadata, and every tensor's inferred shape.

Loading never materialises the weights it can avoid: external data stays on disk, and shape inference
runs on a skeleton in which the large float initializers are typed graph inputs without values (the
values shape inference needs, Reshape's target shape and the like, are small or integer tensors and
keep their data). The first axis of every graph input is the batch: it is set to 1, so shapes and costs
are per sample, as for a spec. Any other free dimension needs a value (`--shape`), else a DlcError
names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.machine import refuse_unless_fits
from dlc.onnx.shapes import rule_shapes

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
KEEP_VALUES = 64  # float initializers up to this many elements keep their values for shape inference
FOLD_VALUES = 4096  # integer values up to this many elements are folded into constants (shapes, indices)
META_SPEC = "dlc.spec"  # the metadata key dlc's exporter writes (dlc.onnx.export.META_SPEC)


# Element types narrower than a byte: ONNX packs two in each byte.
NIBBLE_TYPES = {getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, name)}


def element_bits(elem_type: int) -> int:
    """Bits one value of an ONNX element type takes where it is stored."""
    if elem_type in NIBBLE_TYPES:
        return 4
    return 8 * helper.tensor_dtype_to_np_dtype(elem_type).itemsize


def dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type: float32, int64, float16, ..."""
    return helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"


@dataclass(frozen=True)
class Initializer:
    name: str
    dims: tuple[int, ...]
    elem_type: int

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES


@dataclass(frozen=True)
class OnnxValue:
    """A value of the graph at batch 1: its full shape (None where inference left a dimension or the
    whole shape unknown) and the axis that holds the batch, if one does."""

    name: str
    shape: tuple[int | None, ...] | None
    elem_type: int
    batch_axis: int | None = None

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def known(self) -> bool:
        return self.shape is not None and None not in self.shape

    @property
    def per_sample(self) -> tuple[int | None, ...] | None:
        """The shape with the batch axis left out, as dlc shows shapes."""
        if self.shape is None or self.batch_axis is None:
            return self.shape
        return self.shape[:self.batch_axis] + self.shape[self.batch_axis + 1:]

    @property
    def elements(self) -> int | None:
        return prod(self.shape) if self.known else None


# operators that read the channels at axis 1, whatever the rank: on a rank-3 tensor, those of a signal
CHANNEL_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
               "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool")


@dataclass
class OnnxGraph:
    path: str
    model: onnx.ModelProto  # as loaded: external data not read
    inputs: list[str]  # graph inputs that are not initializers, in order
    outputs: list[str]
    initializers: dict[str, Initializer]
    # every tensor the file holds rather than computes (stored_tensors), and the float ones of rank >= 1
    # as the weights they are (stored_weights)
    stored: dict[str, onnx.TensorProto | onnx.NodeProto]
    weights: dict[str, Initializer]
    tensors: dict[str, OnnxValue]  # every value shape inference typed, inputs and initializers included
    metadata: dict[str, str] = field(default_factory=dict)
    inference_error: str | None = None  # why strict ONNX shape inference failed, if it did
    weights_error: str | None = None  # why an initializer's values cannot be read, if one's cannot

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @property
    def dlc_spec(self) -> str | None:
        """The spec of a model dlc exported, whose nodes are grouped by its layers; None for another
        model, or one another tool rewrote since (a quantizer keeps the metadata and adds nodes without
        the doc string dlc's exporter writes on each)."""
        if not all(n.doc_string for n in self.model.graph.node):
            return None
        return self.metadata.get(META_SPEC)

    @cached_property
    def folded_batchnorms(self) -> tuple[int, str]:
        """How many Conv and Gemm nodes hold a BatchNormalization PyTorch's exporter folded into them, and
        which exporter's sign says so: dynamo's optimizer names its rewrite on the node it made
        (FuseBatchNormIntoConv), the TorchScript exporter names the weights it computed `onnx::Conv_N`."""
        weighted = [n for n in self.model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1]
        dynamo = sum(any(p.key == "pkg.onnxscript.rewriter.rule_name" and "FuseBatchNorm" in p.value
                         for p in n.metadata_props) for n in weighted)
        if dynamo:
            return dynamo, "the dynamo exporter's FuseBatchNormIntoConv"
        if self.model.producer_name == "pytorch":
            return sum(n.input[1].startswith("onnx::Conv_") for n in weighted), "the TorchScript exporter in eval mode"
        return 0, ""

    @cached_property
    def signals(self) -> set[str]:  # a graph's nodes and tensors are fixed once from_model returns it
        """The rank-3 tensors that are signals (N, C, L) rather than sequences (N, T, D): those an
        operator reads by their channels, or an Unsqueeze turns into an image for a pool (the old
        exporters' 1-D pools). dlc shows them as C@L and imports a model whose input is one as such."""
        def rank3(name: str) -> bool:
            t = self.tensors.get(name)
            return t is not None and t.shape is not None and len(t.shape) == 3
        pooled = {n.input[0] for n in self.nodes if n.op_type in ("MaxPool", "AveragePool")}

        def channel_slopes(n: onnx.NodeProto) -> bool:
            """PRelu's slopes one per channel of (N, C, L): (C, 1), or (C,) before opset 7 (axis 1 then)."""
            slope = self.tensors.get(n.input[1]) if len(n.input) > 1 else None
            c = self.tensors[n.input[0]].shape[1]
            return slope is not None and (tuple(slope.shape or ()) == (c, 1)
                                          or self.opset < 7 and tuple(slope.shape or ()) == (c,) and c > 1)

        return {n.input[0] for n in self.nodes if n.input and rank3(n.input[0]) and (
            n.op_type in CHANNEL_OPS or n.op_type == "Unsqueeze" and n.output[0] in pooled
            or n.op_type == "PRelu" and channel_slopes(n))}


def read_model(path: str, weights: bool = False) -> onnx.ModelProto:
    """The model's protobuf; a missing or unreadable file is a DlcError. External data stays on disk
    (analysis reads the weights' shapes only, onnxruntime reads the file itself) unless `weights` asks
    for the values, as the NumPy engine does; then every fault of it is a DlcError too."""
    p = Path(path)
    if not p.is_file():
        raise DlcError(f"no such file: {path}")
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not a model
        raise DlcError(f"{path} is not an ONNX model ({type(e).__name__}: {e})")
    if weights:
        for t in model.graph.initializer:
            if is_external(t):
                t.CopyFrom(with_external_data(t, path))
    return model


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def external_data_error(t: onnx.TensorProto, path: str) -> str | None:
    """Why the external data of initializer t cannot be read beside the model at `path`; None if it can.
    ONNX's rules: a relative path to a regular file in the model's folder, not a symbolic link (onnx
    itself refuses the rest since 1.17; dlc admits 1.16, which opens what it is told), and the bytes the
    tensor needs within the file. Nothing is read: `dlc shapes` warns of unreadable weights for free."""
    try:
        info = onnx.external_data_helper.ExternalDataInfo(t)
    except ValueError as e:  # an offset or length that is not a whole number >= 0
        return str(e)
    if not info.location:
        return "it names no data file"
    if Path(info.location).is_absolute():
        return f"its data file {info.location!r} is an absolute path, not a file beside the model"
    try:
        return _data_file_error(t, info, Path(path).resolve().parent)
    except (OSError, ValueError) as e:  # a name too long, with a NUL byte, a folder that cannot be read
        return f"its data file {info.location!r} cannot be opened ({e})"


def _data_file_error(t: onnx.TensorProto, info, base: Path) -> str | None:
    file = base / info.location
    if file.is_symlink():
        return f"its data file {info.location!r} is a symbolic link"
    if ".." in Path(info.location).parts or not file.resolve().is_relative_to(base):
        return f"its data file {info.location!r} lies outside the model's folder"
    if not file.exists():
        return f"its data file {info.location!r} does not exist"
    if not file.is_file():
        return f"its data file {info.location!r} is {'a folder' if file.is_dir() else 'not a regular file'}"
    size, offset = file.stat().st_size, info.offset or 0
    length = size - offset if info.length is None else info.length
    if length < 0 or offset + length > size:
        return f"its offset {offset:,} and length {length:,} run past the end of {info.location!r} ({size:,} bytes)"
    needed = prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    if t.data_type in FLOAT_TYPES and length < needed:
        return f"it needs {needed:,} bytes, and {info.location!r} holds {length:,} from offset {offset:,}"
    return None


def weights_error(model: onnx.ModelProto, path: str) -> str | None:
    """Why the first initializer whose external data cannot be read cannot, or None: a warning for the
    analysis, a refusal for what runs or imports the weights (check_weights)."""
    return next((f"initializer {t.name}: {e}" for t in model.graph.initializer
                 if is_external(t) and (e := external_data_error(t, path))), None)


def check_weights(model: onnx.ModelProto, path: str) -> None:
    """A DlcError if some initializer's external data cannot be read (see external_data_error), before
    anything reads it: onnxruntime and the onnx library each have their own rules and messages."""
    problem = weights_error(model, path)
    if problem:
        raise DlcError(f"{path}: cannot read the weights ({problem})")


def with_external_data(t: onnx.TensorProto, path: str) -> onnx.TensorProto:
    """A copy of initializer t with its external data read in, beside the model at `path`."""
    problem = external_data_error(t, path)
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    if problem is None:
        try:
            onnx.external_data_helper.load_external_data_for_tensor(copy, str(Path(path).resolve().parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:  # the file changed since the check
            problem = str(e)
    if problem is not None:
        raise DlcError(f"{path}: cannot read the weights of initializer {t.name}: {problem}")
    copy.data_location = TensorProto.DEFAULT
    del copy.external_data[:]
    return copy


def tensor_values(t: onnx.TensorProto, path: str) -> np.ndarray:
    """Initializer t's values, its external data read beside the model at `path`; a DlcError if it does
    not hold the values its dims declare."""
    try:
        return numpy_helper.to_array(with_external_data(t, path) if is_external(t) else t)
    except ValueError as e:  # numpy's reshape error: fewer values than the dims declare
        raise DlcError(f"{path}: initializer {t.name} is declared {show(tuple(t.dims))} "
                       f"({prod(t.dims):,} values) but does not hold them ({e})")


# Operators that pass a stored tensor on as a stored tensor, its values unchanged, when their other inputs
# (a shape, axes) are stored too: a view, a copy in another type, a layout transposed for a MatMul, a
# weight reshaped for a Gemm or a vector unsqueezed to (C, 1, 1) to scale an image (Caffe's Scale layer).
# A weight behind them is still the one stored weight.
PASS_STORED = ("Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto | onnx.NodeProto]:
    """Every tensor whose values the file holds rather than computes from its inputs -> what holds it: an
    initializer, a Constant, a ConstantOfShape of a stored shape (the ONNX zoo's Caffe2 conversions, the
    light models in onnx's backend tests among them, write every weight so), or a PASS_STORED of one."""
    stored: dict[str, onnx.TensorProto | onnx.NodeProto] = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or not n.output:
            continue
        if n.op_type == "Constant" or (n.op_type in ("ConstantOfShape", *PASS_STORED) and n.input
                                       and all(i in stored for i in n.input if i)):
            stored[n.output[0]] = n
    return stored


def stored_value(name: str, stored: dict[str, onnx.TensorProto | onnx.NodeProto], path: str) -> np.ndarray | None:
    """The values of stored tensor `name` (see stored_tensors), read beside the model at `path`; None for
    a Constant whose kind of value dlc does not read (a sparse tensor, strings)."""
    held = stored[name]
    if isinstance(held, onnx.TensorProto):
        return tensor_values(held, path)
    a = attributes(held)
    if held.op_type == "Constant":
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        kind = next((k for k in ("value_float", "value_floats", "value_int", "value_ints") if k in a), None)
        return None if kind is None else np.array(a[kind], np.float32 if "float" in kind else np.int64)
    if held.op_type == "ConstantOfShape":
        fill = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)  # ONNX's default
        shape = stored_value(held.input[0], stored, path).astype(np.int64).reshape(-1)
        if shape.min(initial=0) < 0:
            raise DlcError(f"{path}: ConstantOfShape {name} is given the shape {shape.tolist()}")
        # a few bytes of file can ask for terabytes
        refuse_unless_fits(prod(shape.tolist()) * fill.itemsize, f"{path}: ConstantOfShape {name}")
        return np.full(shape, fill.reshape(-1)[0], fill.dtype)
    v, *more = [stored_value(i, stored, path) if i else None for i in held.input]
    return None if v is None else _passed_on(held.op_type, a, v, more)


def _passed_on(op_type: str, a: dict, v: np.ndarray, more: list[np.ndarray | None]) -> np.ndarray:
    """What a PASS_STORED operator makes of v, its other inputs `more` (Reshape's shape; Squeeze's and
    Unsqueeze's axes from opset 13, an attribute before), as ONNX defines it."""
    if op_type == "Cast":
        return v.astype(helper.tensor_dtype_to_np_dtype(a["to"]))
    if op_type == "Transpose":
        return np.transpose(v, a.get("perm"))
    if op_type == "Reshape":  # a 0 keeps that axis (unless allowzero), a -1 takes what is left
        target = more[0] if more and more[0] is not None else a["shape"]  # an attribute before opset 5
        return v.reshape([v.shape[i] if d == 0 and not a.get("allowzero") else int(d) for i, d in enumerate(target)])
    if op_type == "Flatten":
        axis = a.get("axis", 1) % (v.ndim + 1) if v.ndim else 0
        return v.reshape(prod(v.shape[:axis]), -1)
    axes = a.get("axes", None if not more or more[0] is None else more[0].tolist())
    if op_type == "Squeeze":
        return np.squeeze(v, None if axes is None else tuple(axes))
    if op_type == "Unsqueeze":
        rank = v.ndim + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            v = np.expand_dims(v, ax)
    return v


def stored_weights(stored: dict[str, onnx.TensorProto | onnx.NodeProto], path: str) -> dict[str, Initializer]:
    """Each stored float tensor of rank >= 1 -> the weight it holds: the initializer, Constant or
    ConstantOfShape its values come from (through PASS_STORED operators), with that tensor's dims and
    stored type. So a weight counts once however many views of it the graph reads, and a float16 weight
    behind a Cast is priced as stored. Only a ConstantOfShape's shape is read, never a weight's values."""
    weights: dict[str, Initializer] = {}
    for name, held in stored.items():
        if isinstance(held, onnx.TensorProto):
            weight = Initializer(name, tuple(held.dims), held.data_type)
        elif held.op_type in PASS_STORED:
            weight = weights.get(held.input[0])  # a Cast of integers is not a float weight (quantization's)
        elif held.op_type == "ConstantOfShape":
            fill = attributes(held).get("value")
            try:
                shape = stored_value(held.input[0], stored, path)
            except DlcError:  # its shape's external data is unreadable: the analysis warns of that apart
                shape = None
            weight = None if shape is None or shape.dtype.kind not in "iu" else \
                Initializer(name, tuple(int(d) for d in shape.reshape(-1)),
                            fill.data_type if fill is not None else TensorProto.FLOAT)
        else:  # a Constant: its value a tensor, or a list of floats
            a = attributes(held)
            weight = Initializer(name, tuple(a["value"].dims), a["value"].data_type) if "value" in a else \
                Initializer(name, (len(a["value_floats"]),), TensorProto.FLOAT) if "value_floats" in a else None
        if weight is not None and weight.is_float and weight.dims and min(weight.dims) >= 0:
            weights[name] = weight
    return weights


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """int for a fixed dimension, str for a named one, None for an anonymous one; None without a shape."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def unbatched_inputs(model: onnx.ModelProto) -> dict[str, list]:
    """The inputs without a batch axis, by their declared dimensions: those whose first axis is not the
    batch's, which ONNX broadcasts over it (a 3x4 matrix beside a 2x3 batch, a 3 or a 1x3 beside it). The
    batch is the first input's named first axis, or, in a file of fixed sizes, the first axis of its first
    input of the highest rank."""
    init = {t.name for t in model.graph.initializer}
    dims = {v.name: _dims(v) for v in model.graph.input if v.name not in init}
    if len(dims) < 2 or not all(dims.values()):
        return {}
    leader = next((d for d in dims.values() if isinstance(d[0], str)), None) or max(dims.values(), key=len)
    return {x: d for x, d in dims.items() if d[0] != leader[0]}


def input_shapes(model: onnx.ModelProto, given: dict[str | None, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each graph input's shape per sample (see resolve_shapes)."""
    init = {t.name for t in model.graph.initializer}
    return resolve_shapes({v.name: _dims(v) for v in model.graph.input if v.name not in init}, given)


def resolve_shapes(inputs: dict[str, list | None],
                   given: dict[str | None, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each input's shape per sample (batch left out), from its dimensions batch first (int fixed, str
    named, None anonymous): the fixed ones, or `given` (by input name; key None for the only input).
    A free dimension left unset is a DlcError naming it."""
    names = list(inputs)
    if None in given and len(inputs) != 1:
        raise DlcError(f"the model has {len(inputs)} inputs ({', '.join(names) or 'none'}): give "
                       f"--shape NAME=SHAPE for each")
    unknown = [k for k in given if k is not None and k not in names]
    if unknown:
        raise DlcError(f"--shape {unknown[0]}=...: the model has no input {unknown[0]} (its inputs: "
                       f"{', '.join(names)})")
    shapes, missing = {}, []
    for name, dims in inputs.items():
        if dims is None:
            raise DlcError(f"the model's input {name} has no shape: dlc needs at least its rank")
        override = given.get(name, given.get(None))
        if override is not None:
            if len(override) != len(dims) - 1:
                raise DlcError(f"--shape {show(override)} for input {name}: its per-sample shape has "
                               f"{len(dims) - 1} dimensions (the file says {_show_dims(dims)})")
            shapes[name] = override
            continue
        free = [d if isinstance(d, str) else "?" for d in dims[1:] if not isinstance(d, int) or d < 1]
        if free:
            missing.append(f"{name} {_show_dims(dims)} (free: {', '.join(free)})")
        shapes[name] = tuple(dims[1:])
    if missing:
        how = "--shape 3@224x224" if len(inputs) == 1 else "--shape NAME=SHAPE for each"
        raise DlcError(f"the model's input shapes have free dimensions besides the batch: {'; '.join(missing)}. "
                       f"Give them with {how} (the batch is left out)")
    return shapes


def check_ranked(model: onnx.ModelProto) -> None:
    """A DlcError for a graph input without a shape: onnxruntime shows it as a scalar, dlc cannot shape a
    batch for it."""
    init = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name not in init and _dims(v) is None:
            raise DlcError(f"the model's input {v.name} has no known rank; dlc cannot shape a batch for it")


def _show_dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def skeleton(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], batch: int, path: str) -> onnx.ModelProto:
    """The graph with its inputs fixed at `batch` and the shapes given, and every large float initializer
    a typed input without values: shape inference reads their dims only, and a copy without hundreds of
    MB of weights goes through onnx's C++ in milliseconds."""
    g = model.graph
    kept, weights = [], []
    for t in g.initializer:
        # an initializer whose values cannot be read is typed by its dims alone, as a weight is
        # (a quantized weight's integers are no shape's values either: only the dims of those past
        # FOLD_VALUES go in)
        small = (t.data_type not in FLOAT_TYPES and prod(t.dims) <= FOLD_VALUES or prod(t.dims) <= KEEP_VALUES) \
            and not (is_external(t) and external_data_error(t, path))
        if small and is_external(t):
            t = with_external_data(t, path)
        if small:
            kept.append(t)
        if not small or model.ir_version < 4:  # before IR 4 every initializer is a graph input too
            weights.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    init = {t.name for t in g.initializer}
    unbatched = unbatched_inputs(model)
    # a scalar input stays one, and an input without a batch axis keeps its shape
    inputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type,
                                            [batch, *shapes[v.name]] if _dims(v) and v.name not in unbatched
                                            else _dims(v))
              for v in g.input if v.name not in init]
    # An output's declared batch belongs to the writer's example (old exporters fixed it at 2): left in, it
    # would contradict the batch set here.
    outputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, [None, *_dims(v)[1:]])
               if _dims(v) else v for v in g.output]
    return helper.make_model(helper.make_graph(g.node, g.name, [*inputs, *weights], outputs, initializer=kept),
                             opset_imports=model.opset_import, ir_version=model.ir_version)


def validate(model: onnx.ModelProto, path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """A DlcError with the reason if the model is not valid ONNX, by the checker's full rules (types and
    shapes through every node: a float16 input into a float32 Gemm, two nodes writing one tensor, an IR
    version newer than onnx knows) and two it lets through: an opset newer than onnx defines, and two
    graph outputs of one name. It checks the skeleton: on the model itself the checker serialises every
    weight first, 9 s for GPT-2's 500 MB, and the weights' values are what read_model's callers check."""
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise DlcError(f"{path} asks for ONNX opset {o.version}; there is none after {newest}")
    names = [v.name for v in model.graph.output]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise DlcError(f"{path} is not valid ONNX: it names two graph outputs {twice}")
    def fault(batch: int) -> str | None:
        try:
            # Outputs declared without a shape (the checker wants one; writers leave it out, dlc infers every
            # shape anyway) get the inferred one before the check.
            inferred = onnx.shape_inference.infer_shapes(skeleton(model, shapes, batch, path))
            onnx.checker.check_model(inferred, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            return str(e).strip().splitlines()[0]
        return None

    reason = fault(1)
    if reason is None:
        return
    init = {t.name for t in model.graph.initializer}
    declared = next((d[0] for v in model.graph.input if v.name not in init and (d := _dims(v))
                     and isinstance(d[0], int) and d[0] > 1), None)
    if declared is not None and fault(declared) is None:  # valid as written: its first axis is no batch
        raise DlcError(f"{path} computes across its first axis ({declared} as written), which dlc reads as the "
                       f"batch: at batch 1, {reason}")
    raise DlcError(f"{path} is not valid ONNX: {reason}")


def infer(model: onnx.ModelProto, strict: bool = True) -> dict[str, onnx.ValueInfoProto]:
    """Every value's type and shape; where some are left unknown, inferred again after the shape arithmetic
    that onnx's data propagation does not follow is folded into constants (see fold_shape_arithmetic), or
    after dlc's own rules gave the shapes of operators ONNX's inference does not know (with_rule_shapes)."""
    while True:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=strict, data_prop=True)
        g = inferred.graph
        values = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
        further = fold_shape_arithmetic(model, values) or with_rule_shapes(model, values)
        if further is None:
            return values
        model = further


def with_rule_shapes(model: onnx.ModelProto, values: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto | None:
    """The model with the outputs' types and shapes dlc's rules (dlc.onnx.shapes) give written in as
    value_info, for each node inference left without them whose inputs have theirs; None if no rule gives
    one."""
    found = []
    kept = {t.name: t for t in model.graph.initializer}  # the skeleton's small ones, not among the values
    # shapes written in before: never twice, so that inference ignoring one cannot loop
    written = {v.name: v for v in model.graph.value_info}

    def typed(name: str) -> tuple[int, tuple[int, ...]] | None:
        if name in kept:
            return kept[name].data_type, tuple(kept[name].dims)
        v = values.get(name) or written.get(name)
        dims = _static(v)
        return None if dims is None else (v.type.tensor_type.elem_type, tuple(dims))

    for n in model.graph.node:
        ins = [typed(i) if i else None for i in n.input]
        if not n.input or any(i and t is None for i, t in zip(n.input, ins)) \
                or all(typed(o) is not None for o in n.output if o):
            continue
        outs = rule_shapes(n, attributes(n), ins) or []
        found += [helper.make_tensor_value_info(o, elem, list(shape)) for o, (elem, shape) in zip(n.output, outs)
                  if o and typed(o) is None]
    if not found:
        return None
    model_typed = onnx.ModelProto()
    model_typed.CopyFrom(model)
    given = {v.name for v in found}
    declared = [v for v in model_typed.graph.value_info if v.name not in given]
    del model_typed.graph.value_info[:]
    model_typed.graph.value_info.extend([*declared, *found])
    return model_typed


def _static(value: onnx.ValueInfoProto | None) -> list[int] | None:
    dims = _dims(value) if value is not None else None
    return dims if dims is not None and all(isinstance(d, int) for d in dims) else None


def fold_shape_arithmetic(model: onnx.ModelProto, values: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto | None:
    """The model with its integer shape arithmetic computed into Constants, or None when no value lacks a
    shape or nothing more folds. Data propagation follows Shape, Gather, Concat and a few more, not
    Equal, Where or ConstantOfShape, and TorchScript writes `cls.expand(x.shape[0], -1, -1)` (torchvision's
    class token) with them: without folding, shape inference stops at that Expand and everything after it
    has no shape. Each Shape of a tensor whose shape is known is its dims, and every node computing
    integers from known integers runs in onnx's reference evaluator (imported only then: 0.2 s)."""
    g = model.graph
    if all(_static(values.get(o)) is not None for n in g.node for o in n.output if o):
        return None
    known = shape_values(model, values)
    nodes, changed = [], False
    for n in g.node:
        if n.op_type == "Constant" or not all(o in known for o in n.output if o):
            nodes.append(n)
            continue
        changed = True
        nodes += [helper.make_node("Constant", [], [o], value=numpy_helper.from_array(known[o], o))
                  for o in n.output if o]
    if not changed:
        return None
    return helper.make_model(helper.make_graph(nodes, g.name, g.input, g.output, initializer=g.initializer,
                                               value_info=g.value_info),
                             opset_imports=model.opset_import, ir_version=model.ir_version)


def shape_values(model: onnx.ModelProto, values: dict[str, onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    """The model's integer shape arithmetic, computed: each integer initializer, Constant and node output
    that follows from them and from the shapes inference fixed (`values`), up to FOLD_VALUES elements."""
    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type not in FLOAT_TYPES}
    opsets = {o.domain or "": o.version for o in model.opset_import}
    for n in model.graph.node:
        outputs = _computed(n, known, values, opsets)
        if outputs is not None and not any(v.dtype.kind == "f" or v.size > FOLD_VALUES for v in outputs):
            known.update((o, v) for o, v in zip(n.output, outputs) if o)
    return known


def _computed(n: onnx.NodeProto, known: dict[str, np.ndarray], values: dict[str, onnx.ValueInfoProto],
              opsets: dict[str, int]) -> list[np.ndarray] | None:
    """The node's outputs if its inputs are known values, or it is the Shape or Size of a tensor whose
    shape inference fixed; else None."""
    if n.domain not in ("", "ai.onnx"):
        return None
    if n.op_type in ("Shape", "Size"):
        dims = _static(values.get(n.input[0]))
        if dims is None:
            return None
        a = attributes(n)
        return [np.array(dims[a.get("start", 0):a.get("end", len(dims))] if n.op_type == "Shape" else prod(dims),
                         np.int64)]
    if not all(i in known for i in n.input if i) or \
            any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
        return None
    from onnx.reference import ReferenceEvaluator

    feeds = {i: known[i] for i in n.input if i}
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(n, opsets=opsets).run(None, feeds)]
    except Exception:  # the evaluator raises whatever its operator implementations do: inference decides
        return None


def load(path: str, given: dict[str | None, tuple[int, ...]] | None = None) -> OnnxGraph:
    """The model at `path` with every tensor's shape at batch 1 (see the module's doc)."""
    return from_model(read_model(path), path, given)


def from_model(model: onnx.ModelProto, path: str, given: dict[str | None, tuple[int, ...]] | None = None) -> OnnxGraph:
    """A model already in memory (its external data, if any, beside `path`)."""
    in_topological_order(model)
    shapes = input_shapes(model, given or {})
    inference_error = None
    try:
        one = infer(skeleton(model, shapes, 1, path))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        # An operator inference does not know (a contrib op) or rejects: the shapes it could infer still
        # count; the nodes left without one are shown as not counted.
        inference_error = str(e).strip().splitlines()[0]
        one = infer(skeleton(model, shapes, 1, path), strict=False)
    try:
        # The axis that doubles at batch 2 is each tensor's batch axis; a model that fixes its batch in a
        # Reshape may not infer at batch 2, and then no axis is called the batch but the leading 1.
        two = infer(skeleton(model, shapes, 2, path))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        two = None
    initializers = {t.name: Initializer(t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer}
    tensors = {}
    unbatched = unbatched_inputs(model)
    for name, v in one.items():
        dims = _dims(v)
        shape = None if dims is None else tuple(d if isinstance(d, int) else None for d in dims)
        # an input without a batch axis has none, a leading 1 of it included
        batch_axis = None if name in unbatched else _batch_axis(shape, two.get(name) if two else None)
        tensors[name] = OnnxValue(name, shape, v.type.tensor_type.elem_type, batch_axis)
    for t in initializers.values():
        tensors[t.name] = OnnxValue(t.name, t.dims, t.elem_type)
    init = set(initializers)
    stored = stored_tensors(model)
    metadata = {p.key: p.value for p in model.metadata_props}
    # dlc's exporter stores exactly the spec's parameters as initializers and every other value (rotary
    # tables, clip bounds) as a Constant (dlc.onnx.lower), so that its export counts as its spec does
    held = stored if META_SPEC not in metadata else \
        {k: v for k, v in stored.items() if not (isinstance(v, onnx.NodeProto) and v.op_type == "Constant")}
    return OnnxGraph(str(path), model, [v.name for v in model.graph.input if v.name not in init],
                     [v.name for v in model.graph.output], initializers, stored, stored_weights(held, path),
                     tensors, metadata, inference_error,
                     weights_error(model, path))


def in_topological_order(model: onnx.ModelProto) -> None:
    """Put the graph's nodes in an order where each comes after the nodes it reads, as ONNX requires and
    onnxruntime does not: onnxruntime's float16 converter appends the Casts it adds at the end. A sorted
    graph is left as it is; otherwise each node keeps its place but after its producers (depth first,
    so nodes in a cycle stay in some order, for inference to reject)."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    done: set[int] = set()
    if all(producer.get(t, -1) < i for i, n in enumerate(g.node) for t in n.input if t):
        return
    order = []
    for start in range(len(g.node)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            stack += [(producer[t], False) for t in reversed(g.node[i].input) if t in producer
                      and producer[t] not in done and producer[t] != i]
    nodes = [onnx.NodeProto() for _ in order]
    for copy, i in zip(nodes, order):
        copy.CopyFrom(g.node[i])
    del g.node[:]
    g.node.extend(nodes)


def _batch_axis(shape, at_two: onnx.ValueInfoProto | None) -> int | None:
    if shape is None:
        return None
    leading = 0 if shape[:1] == (1,) and len(shape) > 1 else None
    other = _dims(at_two) if at_two is not None else None
    if other is None or len(other) != len(shape):
        return leading
    moved = [i for i, (a, b) in enumerate(zip(shape, other)) if a == 1 and b == 2]
    if len(moved) == 1:
        return moved[0]
    # Unchanged at batch 2: the model fixes its batch (a Reshape to [1, -1]); a leading 1 is that batch.
    return leading if tuple(other) == shape else None


def token_vocabularies(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs that index an embedding table (a Gather on an initializer, maybe through a Cast),
    and the smallest table's row count: token ids must lie below it."""
    init = {t.name: tuple(t.dims) for t in model.graph.initializer}
    inputs = {v.name for v in model.graph.input if v.name not in init}
    source = {name: name for name in inputs}  # tensor -> the graph input it is a cast of
    vocab: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in source:
            source[n.output[0]] = source[n.input[0]]
        elif n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in init and n.input[1] in source:
            if attributes(n).get("axis", 0) == 0 and init[n.input[0]]:
                name = source[n.input[1]]
                vocab[name] = min(vocab.get(name, init[n.input[0]][0]), init[n.input[0]][0])
    return vocab
