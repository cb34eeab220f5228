"""Per-node and total figures of a graph: params, MACs, FLOPs, memory, receptive field.

Every rule comes from the layer registry (dlc.layers); this module only walks the graph and adds up,
following docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil, prod

from dlc.choices import DTYPE_BYTES, OPTIMIZER_SLOTS
from dlc.engine.budget import COLS_BYTES
from dlc.graph import Graph, Node
from dlc.layers import GLOBAL, KINDS, Window, param_count
from dlc.layers.spatial import is_spatial

BYTES_PER_VALUE = 4  # float32: what dlc's NumPy engine computes in


def value_bytes(values: int, dtype: str) -> int:
    """Bytes of one node's `values` values in `dtype`; an odd count of int4 values rounds up a byte."""
    return ceil(values * DTYPE_BYTES[dtype])


@dataclass
class ReceptiveField:
    """Size of the input window one output element sees, and the product of strides (the jump)."""

    size: tuple[int, ...]  # per spatial axis of the input: (L,), (H, W) or (D, H, W)
    jump: tuple[Fraction, ...]
    whole: bool = False  # the node sees its whole input (fc, gap, recurrent)


@dataclass
class NodeStats:
    node: Node
    params: int
    non_trainable: int
    macs: int
    flops: int
    activations: int  # output elements per sample
    rf: ReceptiveField | None  # None where the input has no spatial axes
    uncounted: str | None = None  # why macs and flops leave this node out (an ONNX operator without a rule)
    active_params: int | None = None  # params one step runs: 0 for a mixture's standby experts
    constants: int = 0  # an ONNX model's stored attention tables and masks: values, not parameters
    # An ONNX model's (trainable, non-trainable) bytes in the types its initializers are stored in;
    # None for a spec, whose values all take the precision asked for.
    stored_bytes: tuple[int, int] | None = None
    constant_bytes: int = 0  # the constants' bytes in their stored types
    overhead_bytes: int = 0  # a quantized ONNX model's scales and zero points: stored bytes, not parameters
    # An ONNX model's output bytes per sample, each tensor in its own element type (None for a spec)
    stored_activation_bytes: int | None = None
    # An ONNX layer's products' precision ("int8 w / int8 a", "int4 w, block 32", "fp16") and the
    # precision they compute in (DTYPE_BYTES' names); None without products, or for a spec.
    precision: str | None = None
    compute: str | None = None
    # In the precision of the analysis (set by totals): a node's bytes of params and non-trainable
    # values, of trainable values alone (its gradients), and of its output per sample.
    param_bytes: int = 0
    grad_bytes: int = 0
    activation_bytes: int = 0

    def __post_init__(self):
        if self.active_params is None:
            self.active_params = self.params


@dataclass
class Totals:
    params: int
    non_trainable: int
    macs: int
    flops: int
    activations: int
    active_params: int  # what one step runs: every expert of a mixture counts in params, K of E here
    param_bytes: int
    activation_bytes: int  # per sample
    grad_bytes: int
    optimizer_bytes: int
    train_bytes: int
    batch: int
    optimizer: str
    train_formula: str = field(default="")
    # The NumPy engine's im2col columns at this batch (see engine_columns_bytes); None for an ONNX
    # model, which the engine does not run as it stands.
    columns_bytes: int | None = None
    constants: int = 0  # an ONNX model's stored attention tables and masks, apart from params
    # The precision of weights and activations (DTYPE_BYTES' names), "mixed" for an ONNX model whose
    # initializers are stored in several types.
    dtype: str = "fp32"
    act_dtype: str = "fp32"
    constant_bytes: int = 0
    # among the constants, Swin's relative position bias tables as an exporter expanded them: (how many,
    # values stored, values learned), docs/conventions.md
    expanded_biases: tuple[int, int, int] = (0, 0, 0)
    overhead_bytes: int = 0  # in param_bytes: a quantized ONNX model's scales and zero points
    # MACs per precision of the products: {precision: {"macs": n, "compute": dtype}}; a spec's all in dtype
    macs_by_precision: dict[str, dict] = field(default_factory=dict)

    @property
    def engine_train_bytes(self) -> int | None:
        """What a training step of dlc's NumPy engine holds at its peak: the estimate plus its columns."""
        return None if self.columns_bytes is None else self.train_bytes + self.columns_bytes


@dataclass
class Analysis:
    graph: Graph
    nodes: list[NodeStats]
    totals: Totals


def receptive_field(window, inputs: list[ReceptiveField | None], image_hw: tuple[int, ...]) -> ReceptiveField | None:
    live = [r for r in inputs if r is not None]
    if not live:
        return None
    axes = range(len(live[0].size))
    size = tuple(max(r.size[i] for r in live) for i in axes)
    jump = tuple(max(r.jump[i] for r in live) for i in axes)
    whole = any(r.whole for r in live)
    if window is None:
        return ReceptiveField(size, jump, whole)
    if window == GLOBAL:
        return ReceptiveField(image_hw, jump, True)
    assert isinstance(window, Window)
    extra = len(window.kernel) - len(axes)
    if extra:
        # an ONNX op over other axes than the input has: the old exporters' 1-D pool is a 2-D one of
        # height 1 (Unsqueeze, AveragePool, Squeeze); any other mix is not followed
        if extra < 0 or set(window.kernel[:extra] + window.stride[:extra]) != {1}:
            return None
        window = Window(window.kernel[extra:], window.stride[extra:], window.dilation[extra:], window.transposed)
    if window.transposed:
        # An output pixel of a stride-s transposed window reads ceil(k/s) input pixels, which span
        # floor(dil*(k-1)/s) + 1 of them (2x2/2: one pixel, so the field does not grow).
        new = tuple(size[i] + (window.dilation[i] * (window.kernel[i] - 1) // window.stride[i]) * jump[i]
                    for i in axes)
        return ReceptiveField(tuple(int(s) for s in new), tuple(jump[i] / window.stride[i] for i in axes), whole)
    new = tuple(size[i] + window.dilation[i] * (window.kernel[i] - 1) * jump[i] for i in axes)
    return ReceptiveField(tuple(int(s) for s in new), tuple(jump[i] * window.stride[i] for i in axes), whole)


def analyse(graph: Graph, batch: int = 1, optimizer: str = "sgd", dtype: str = "fp32",
            act_dtype: str | None = None) -> Analysis:
    """Figures per node and in total. MACs, FLOPs and activations are per sample times `batch`; bytes
    in `dtype` for weights and `act_dtype` (default: `dtype`) for activations."""
    shapes = {n.name: n.out_shape for n in graph.nodes}
    fields: dict[str, ReceptiveField | None] = {}
    # the whole field is the first spatial input's (a diffusion block's latent, not its time embedding)
    image = next((n.out_shape[1:] for n in graph.inputs if is_spatial(n.out_shape)), graph.input.out_shape[1:])
    stats = []
    for node in graph.nodes:
        kind = KINDS[node.kind]
        ins = [shapes[i] for i in node.inputs]
        if node.kind == "input":
            axes = len(node.out_shape) - 1
            fields[node.name] = ReceptiveField((1,) * axes, (Fraction(1),) * axes) \
                if is_spatial(node.out_shape) else None
        else:
            fields[node.name] = receptive_field(kind.window(node.attrs), [fields[i] for i in node.inputs], image)
        trainable, frozen = param_count(kind, node.attrs, ins)
        # a mixture's experts past its top K hold weights but do no work on a step (docs/conventions.md)
        runs = not node.standby
        stats.append(NodeStats(
            node=node, params=trainable, non_trainable=frozen,
            macs=kind.macs(node.attrs, ins, node.out_shape) * batch * runs,
            flops=kind.flops(node.attrs, ins, node.out_shape) * batch * runs,
            activations=prod(node.out_shape), rf=fields[node.name], active_params=trainable * runs,
        ))
    act_dtype = act_dtype or dtype
    # the NumPy engine computes in float32 alone: its peak beside another precision's estimate means nothing
    columns = engine_columns_bytes(graph, batch) if dtype == act_dtype == "fp32" else None
    return Analysis(graph, stats, totals(stats, batch, optimizer, columns, dtype, act_dtype))


def _column_rows(node: Node, in_shape: tuple[int, ...]) -> tuple[int, int, bool, int] | None:
    """(rows, values per row and sample, kept for backward, how many such sets) of the im2col columns
    the NumPy engine builds for a node, a row being one output row (conv) or input row (upconv); None
    where it builds none: depthwise convs make theirs a MiB at a time (DEPTHWISE_BLOCK_BYTES), and an
    image conv of a 1x1 kernel at stride 1 reads its input as its columns (a band of a larger one is
    copied, at most COLS_BYTES, not counted)."""
    a = node.attrs
    if node.kind in ("conv", "dwconv") and not a["groups"] == a["in_channels"] > 1:
        kernel, out = a["kernel"], node.out_shape[1:]
        if len(kernel) == 2 and tuple(kernel) == tuple(a["stride"]) == (1, 1):
            return None
        if len(kernel) == 1:  # a signal runs as an image of height 1 (dlc/engine/kernels/ranks.py)
            return 1, a["in_channels"] * kernel[0] * out[0], True, 1
        # a volume runs as one image conv per depth offset of its kernel, over every output depth at once
        (kh, kw), (ho, wo) = kernel[-2:], out[-2:]
        return ho, a["in_channels"] * kh * kw * wo * prod(out[:-2]), True, prod(kernel[:-2])
    if node.kind == "upconv":
        kh, kw = a["kernel"]
        return in_shape[1], a["channels"] * kh * kw * in_shape[2], False, 1
    return None


def engine_columns_bytes(graph: Graph, batch: int) -> int:
    """Bytes of im2col columns a training step of the NumPy engine holds at once (dlc.engine.kernels.conv).

    A conv whose columns fit COLS_BYTES keeps them for backward; a larger one (and every upconv) builds
    them in bands of rows that fit it and drops each band after use. On top of the kept columns, one
    more band is in flight, the largest: the columns being built, or the gradient columns backward
    computes beside the kept ones.
    """
    shapes = {n.name: n.out_shape for n in graph.nodes}
    kept = in_flight = 0
    for node in graph.nodes:
        found = _column_rows(node, shapes[node.inputs[0]]) if node.inputs else None
        if found is None:
            continue
        rows, values_per_row, keeps, sets = found
        row_bytes = BYTES_PER_VALUE * values_per_row * batch
        if keeps and rows * row_bytes <= COLS_BYTES:
            kept += sets * rows * row_bytes
        in_flight = max(in_flight, min(rows, max(1, COLS_BYTES // row_bytes)) * row_bytes)
    return kept + in_flight


def totals(stats: list[NodeStats], batch: int, optimizer: str, columns_bytes: int | None = None,
           dtype: str = "fp32", act_dtype: str = "fp32") -> Totals:
    """The totals, weights in `dtype` ("mixed": each ONNX initializer in its stored type, scales and zero
    points included) and activations in `act_dtype` ("mixed": each ONNX tensor in its own type).
    Gradients and optimizer state take the weights' precision (docs/conventions.md)."""
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    by_precision: dict[str, dict] = {}
    for s in stats:
        if dtype == "mixed":
            s.grad_bytes, frozen_bytes = s.stored_bytes or (0, 0)
            s.param_bytes = s.grad_bytes + frozen_bytes + s.overhead_bytes
        else:
            s.param_bytes = value_bytes(s.params + s.non_trainable, dtype)
            s.grad_bytes = value_bytes(s.params, dtype)
        if act_dtype == "mixed" and s.stored_activation_bytes is not None:
            s.activation_bytes = s.stored_activation_bytes
        else:
            s.activation_bytes = value_bytes(s.activations, "fp32" if act_dtype == "mixed" else act_dtype)
        if s.macs:  # a spec's products, and an ONNX product dlc names no precision for, are in dtype
            entry = by_precision.setdefault(s.precision or dtype, {"macs": 0, "compute": s.compute or act_dtype})
            entry["macs"] += s.macs
    p = sum(s.params for s in stats)
    nt = sum(s.non_trainable for s in stats)
    act = sum(s.activations for s in stats)
    slots = len(OPTIMIZER_SLOTS[optimizer])
    param_bytes = sum(s.param_bytes for s in stats)
    act_bytes = sum(s.activation_bytes for s in stats)
    grad_bytes = sum(s.grad_bytes for s in stats)
    optimizer_bytes = slots * grad_bytes
    train = param_bytes + grad_bytes + optimizer_bytes + batch * act_bytes
    formula = (f"parameters {param_bytes} + gradients {grad_bytes} + {optimizer} state "
               f"{slots}x{grad_bytes} + batch {batch} x activations {act_bytes} = {train} bytes")
    return Totals(
        params=p, non_trainable=nt, macs=sum(s.macs for s in stats), flops=sum(s.flops for s in stats),
        activations=act, active_params=sum(s.active_params for s in stats), param_bytes=param_bytes, activation_bytes=act_bytes, grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes, train_bytes=train,
        batch=batch, optimizer=optimizer, train_formula=formula, columns_bytes=columns_bytes,
        constants=sum(s.constants for s in stats), dtype=dtype, act_dtype=act_dtype,
        constant_bytes=sum(s.constant_bytes for s in stats),
        overhead_bytes=sum(s.overhead_bytes for s in stats) if dtype == "mixed" else 0,
        macs_by_precision=by_precision,
    )
