"""Per-node and total figures of a graph: params, MACs, FLOPs, memory, receptive field.

Every rule comes from the layer registry (dlc.layers); this module only walks the graph and adds up,
following docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import prod

from dlc.choices import OPTIMIZER_SLOTS
from dlc.engine.budget import COLS_BYTES
from dlc.graph import Graph, Node
from dlc.layers import GLOBAL, KINDS, Window, param_count

BYTES_PER_VALUE = 4  # float32


@dataclass
class ReceptiveField:
    """Size of the input window one output element sees, and the product of strides (the jump)."""

    size: tuple[int, int]
    jump: tuple[Fraction, Fraction]
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

    @property
    def engine_train_bytes(self) -> int | None:
        """What a training step of dlc's NumPy engine holds at its peak: the estimate plus its columns."""
        return None if self.columns_bytes is None else self.train_bytes + self.columns_bytes


@dataclass
class Analysis:
    graph: Graph
    nodes: list[NodeStats]
    totals: Totals


def receptive_field(window, inputs: list[ReceptiveField | None], image_hw: tuple[int, int]) -> ReceptiveField | None:
    live = [r for r in inputs if r is not None]
    if not live:
        return None
    size = tuple(max(r.size[i] for r in live) for i in (0, 1))
    jump = tuple(max(r.jump[i] for r in live) for i in (0, 1))
    whole = any(r.whole for r in live)
    if window is None:
        return ReceptiveField(size, jump, whole)
    if window == GLOBAL:
        return ReceptiveField(image_hw, jump, True)
    assert isinstance(window, Window)
    if window.transposed:
        # An output pixel of a stride-s transposed window reads ceil(k/s) input pixels, which span
        # floor(dil*(k-1)/s) + 1 of them (2x2/2: one pixel, so the field does not grow).
        new = tuple(size[i] + (window.dilation[i] * (window.kernel[i] - 1) // window.stride[i]) * jump[i]
                    for i in (0, 1))
        return ReceptiveField(tuple(int(s) for s in new), tuple(jump[i] / window.stride[i] for i in (0, 1)), whole)
    new = tuple(size[i] + window.dilation[i] * (window.kernel[i] - 1) * jump[i] for i in (0, 1))
    return ReceptiveField(tuple(int(s) for s in new), tuple(jump[i] * window.stride[i] for i in (0, 1)), whole)


def analyse(graph: Graph, batch: int = 1, optimizer: str = "sgd") -> Analysis:
    """Figures per node and in total. MACs, FLOPs and activations are per sample times `batch`."""
    shapes = {n.name: n.out_shape for n in graph.nodes}
    fields: dict[str, ReceptiveField | None] = {}
    stats = []
    for node in graph.nodes:
        kind = KINDS[node.kind]
        ins = [shapes[i] for i in node.inputs]
        if node.kind == "input":
            spatial = len(node.out_shape) == 3
            fields[node.name] = ReceptiveField((1, 1), (Fraction(1), Fraction(1))) if spatial else None
        else:
            fields[node.name] = receptive_field(kind.window(node.attrs), [fields[i] for i in node.inputs],
                                                 graph.input.out_shape[1:])
        trainable, frozen = param_count(kind, node.attrs, ins)
        # a mixture's experts past its top K hold weights but do no work on a step (docs/conventions.md)
        runs = not node.standby
        stats.append(NodeStats(
            node=node, params=trainable, non_trainable=frozen,
            macs=kind.macs(node.attrs, ins, node.out_shape) * batch * runs,
            flops=kind.flops(node.attrs, ins, node.out_shape) * batch * runs,
            activations=prod(node.out_shape), rf=fields[node.name], active_params=trainable * runs,
        ))
    return Analysis(graph, stats, totals(stats, batch, optimizer, engine_columns_bytes(graph, batch)))


def _column_rows(node: Node, in_shape: tuple[int, ...]) -> tuple[int, int, bool] | None:
    """(rows, values per row and sample, kept for backward) of the im2col columns the NumPy engine
    builds for a node, a row being one output row (conv) or input row (upconv); None where it builds
    none (depthwise convs sum window views instead)."""
    a = node.attrs
    if node.kind in ("conv", "dwconv") and not a["groups"] == a["in_channels"] > 1:
        kh, kw = a["kernel"]
        return node.out_shape[1], a["in_channels"] * kh * kw * node.out_shape[2], True
    if node.kind == "upconv":
        kh, kw = a["kernel"]
        return in_shape[1], a["channels"] * kh * kw * in_shape[2], False
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
        rows, values_per_row, keeps = found
        row_bytes = BYTES_PER_VALUE * values_per_row * batch
        if keeps and rows * row_bytes <= COLS_BYTES:
            kept += rows * row_bytes
        in_flight = max(in_flight, min(rows, max(1, COLS_BYTES // row_bytes)) * row_bytes)
    return kept + in_flight


def totals(stats: list[NodeStats], batch: int, optimizer: str, columns_bytes: int | None = None) -> Totals:
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    p = sum(s.params for s in stats)
    nt = sum(s.non_trainable for s in stats)
    act = sum(s.activations for s in stats)
    slots = len(OPTIMIZER_SLOTS[optimizer])
    param_bytes = BYTES_PER_VALUE * (p + nt)
    act_bytes = BYTES_PER_VALUE * act
    grad_bytes = BYTES_PER_VALUE * p
    optimizer_bytes = slots * grad_bytes
    train = param_bytes + grad_bytes + optimizer_bytes + batch * act_bytes
    formula = (f"parameters {param_bytes} + gradients {BYTES_PER_VALUE * p} + {optimizer} state "
               f"{slots}x{BYTES_PER_VALUE * p} + batch {batch} x activations {act_bytes} = {train} bytes")
    return Totals(
        params=p, non_trainable=nt, macs=sum(s.macs for s in stats), flops=sum(s.flops for s in stats),
        activations=act, active_params=sum(s.active_params for s in stats), param_bytes=param_bytes, activation_bytes=act_bytes, grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes, train_bytes=train,
        batch=batch, optimizer=optimizer, train_formula=formula, columns_bytes=columns_bytes,
        constants=sum(s.constants for s in stats),
    )
