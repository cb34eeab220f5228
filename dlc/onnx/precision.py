"""A float32 ONNX model with its weights and computation in float16 or bfloat16 (`dlc export --dtype`).

Inputs and outputs stay float32, with a Cast after the input and before the output: NumPy has no
bfloat16, so a bfloat16 input could not be fed from Python at all, and one interface for every precision
keeps `dlc infer`, `dlc bench`, `dlc quantize` and a user's code unchanged. Rounding the input in the
first Cast is what a float16 input would do anyway; the Casts cost two passes over the input and output.

Every float initializer is stored in the type (2 bytes a value). Each operator computes in the type where
onnxruntime's CPU provider has a kernel for it in that type; where it has none (or the opset's schema
does not allow the type: Conv takes bfloat16 only from opset 22) the operator computes in float32 from
its inputs cast up. A tensor lives in the precision of the operator that writes it, and a Cast stands
only where a reader needs the other one, so a run of float32 operators passes float32 between them.
Which operators have kernels is found by running each on its own in onnxruntime (`has_kernel`), not
kept in a table: it changes with each onnxruntime release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from dlc.errors import DlcError

# --dtype name -> (ONNX element type, NumPy type of the stored values, the name ONNX and people use)
LOW_TYPES = {"fp16": (TensorProto.FLOAT16, "float16"), "bf16": (TensorProto.BFLOAT16, "bfloat16")}
META_DTYPE = "dlc.dtype"  # metadata key: the precision export wrote the model in


@dataclass
class Converted:
    model: onnx.ModelProto
    dtype: str  # fp16 or bf16
    float32_ops: list[str]  # operator types computing in float32: no kernel in the type on the CPU provider

    @property
    def type_name(self) -> str:
        return LOW_TYPES[self.dtype][1]


def numpy_type(dtype: str):
    import ml_dtypes  # onnx's own dependency: NumPy has no bfloat16

    return np.float16 if dtype == "fp16" else ml_dtypes.bfloat16


def low_tensor(t: TensorProto, dtype: str) -> TensorProto:
    """A float32 tensor's values rounded to the type (to nearest, ties to even), under the same name."""
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(numpy_type(dtype)), t.name)


def tied_inputs(node: onnx.NodeProto, opset: int) -> list[bool]:
    """For each input of the node, whether the schema types it as its first output (type variable T):
    those must be in the computing type; others (Resize's scales, Dropout's ratio) keep theirs."""
    schema = defs.get_schema(node.op_type, opset, node.domain)
    out = schema.outputs[0].type_str
    formal = schema.inputs
    return [formal[min(i, len(formal) - 1)].type_str == out for i in range(len(node.input))]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type in the float32 model: inputs, initializers, and each node's outputs
    by ONNX's type inference."""
    from dlc.onnx.export import skeleton

    inferred = onnx.shape_inference.infer_shapes(skeleton(model), check_type=True, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    for n in model.graph.node:
        if n.op_type == "Constant":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def has_kernel(node: onnx.NodeProto, in_types: list[int], out_types: list[int], opset: int) -> bool:
    """Whether onnxruntime's CPU provider runs this node with these input and output types: a model of
    the node alone, loaded. A schema that refuses the types, or a missing kernel, fails the load (and
    onnxruntime may expand an operator into a function whose parts lack a kernel: Softmax in bfloat16)."""
    import onnxruntime as ort

    from dlc.onnx.runtime import QUIET, quiet_default_logger

    inputs = [helper.make_tensor_value_info(x, t, None) for x, t in zip(node.input, in_types) if x]
    outputs = [helper.make_tensor_value_info(y, t, None) for y, t in zip(node.output, out_types) if y]
    probe = helper.make_graph([node], "probe", inputs, outputs)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(probe, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    try:
        with quiet_default_logger():
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's load errors share no useful base class
        return False
    return True


def to_precision(model: onnx.ModelProto, dtype: str) -> Converted:
    """The float32 model (dlc's export: one input, one output) in `dtype` as the module says."""
    low, _ = LOW_TYPES[dtype]
    types = elem_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g, opset = out.graph, out.opset_import[0].version
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    computing = [i for i, n in enumerate(g.node) if n.op_type != "Constant"]

    def converted(x: str, tied: bool) -> int:
        """The type a tensor has in the converted model when read at a tied input or not."""
        t = types.get(x, TensorProto.UNDEFINED)
        return low if t == TensorProto.FLOAT and (tied or x not in consts) else t

    kernel: dict[tuple, bool] = {}  # (op, input types) -> has a kernel in the type: one probe each
    in_float32 = set()  # positions of the nodes computing in float32
    for at in computing:
        n = g.node[at]
        ins = [converted(x, tied) for x, tied in zip(n.input, tied_inputs(n, opset))]
        outs = [low if types.get(y) == TensorProto.FLOAT else types.get(y, TensorProto.UNDEFINED) for y in n.output]
        key = (n.op_type, tuple(ins))
        if key not in kernel:
            kernel[key] = low not in ins + outs or has_kernel(n, ins, outs, opset)
        if not kernel[key]:
            in_float32.add(at)

    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(low_tensor(t, dtype))
    stored_low = {t.name for t in g.initializer if t.data_type == low}
    # a float Constant read at a tied input of an operator computing in the type is stored in it
    for at in computing:
        n = g.node[at]
        if at in in_float32:
            continue
        for x, tied in zip(n.input, tied_inputs(n, opset)):
            value = consts[x].attribute[0].t if x in consts else None
            if tied and value is not None and value.data_type == TensorProto.FLOAT:
                value.CopyFrom(low_tensor(value, dtype))
                stored_low.add(x)

    # Which float tensors hold the low type: the stored ones, and what operators computing in it write.
    is_low = set(stored_low)
    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def read_as(x: str, want: int) -> str:
        """The tensor x as `want`, through one Cast per tensor and type however many read it."""
        if (x in is_low) == (want == low):
            return x
        if (x, want) not in casts:
            name = f"{x}/{'float32' if want == TensorProto.FLOAT else LOW_TYPES[dtype][1]}"
            nodes.append(helper.make_node("Cast", [x], [name], name=name, to=want))
            casts[x, want] = name
        return casts[x, want]

    for at, n in enumerate(g.node):
        if n.op_type != "Constant":
            want = TensorProto.FLOAT if at in in_float32 else low
            for i, (x, tied) in enumerate(zip(n.input, tied_inputs(n, opset))):
                if x and types.get(x) == TensorProto.FLOAT and (tied or x in is_low):
                    n.input[i] = read_as(x, want)
            if want == low:
                is_low.update(y for y in n.output if types.get(y) == TensorProto.FLOAT)
        nodes.append(n)
    for result in [v.name for v in g.output if v.name in is_low]:
        # the operator wrote the type: it writes a new name, which the layers after it read (an output may
        # feed later steps), and a Cast at the end writes the output's
        inner = f"{result}/{LOW_TYPES[dtype][1]}"
        for n in nodes:
            for ports in (n.input, n.output):
                ports[:] = [inner if t == result else t for t in ports]
        nodes.append(helper.make_node("Cast", [inner], [result], name=f"{result}/float32", to=TensorProto.FLOAT))
    float32_ops = sorted({g.node[at].op_type for at in in_float32})
    del g.node[:]
    g.node.extend(nodes)
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props}, META_DTYPE: LOW_TYPES[dtype][1]})
    return Converted(out, dtype, float32_ops)


def check_converted(converted: Converted) -> None:
    """Valid ONNX with every type consistent, and onnxruntime's CPU provider loads it."""
    from dlc.onnx.export import skeleton
    from dlc.onnx.runtime import create_session

    model = converted.model
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(skeleton(model), check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DlcError(f"the {converted.type_name} model is not valid ONNX: {e}")
    create_session(model, "cpu")
