"""The graph IR every analysis and backend reads: typed nodes in topological order."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from dlc.errors import Pos


@dataclass(frozen=True)
class BlockCall:
    """A block-call statement of the spec's top level, with all its repeats: `dlc draw --collapse` shows
    it as one box."""

    name: str  # the scope of its first expansion: "basic1" (its nodes are "basic1.conv1", ...)
    text: str  # as written: "basic(64) x2"


@dataclass
class Node:
    name: str  # stable and readable: "conv1", "stage2.conv1", "bottleneck3.shortcut.conv"
    kind: str  # canonical kind name from dlc.layers.KINDS ("conv", "relu", "input", "add", ...)
    attrs: dict  # resolved attributes; the per-kind contract is in dlc/layers/*.py
    inputs: list[str]  # names of the nodes it reads, in order
    out_shape: tuple[int, ...]  # batch left out: (C, H, W), (N,), (T, D) or (T,) for token ids
    dtype: str = "float32"  # "int64" for token ids, the output of `input seq T`
    pos: Pos | None = None  # where the spec wrote it
    row: str = ""  # the table row it is shown in: its own name, or the layer a suffix follows
    label: str | None = None  # `as LABEL`
    text: str = ""  # the spec text of its step, for tables and ONNX doc strings
    call: BlockCall | None = None  # the outermost block call it was expanded from
    # inside a block, its step with the parameters replaced by the call's values ("conv 64@3x3 pad=1 bn
    # relu" for text "conv c@3x3/s pad=1 bn relu"); "" where the step is written with values
    resolved_text: str = ""
    # an expert of a mixture past its top K (`experts E top=K`): its parameters count, but not in the
    # active parameters, MACs or FLOPs, since each step runs K of the E experts (docs/conventions.md)
    standby: bool = False

    def __post_init__(self):
        if not self.row:
            self.row = self.name


@dataclass
class Graph:
    nodes: list[Node]  # topological order; nodes[0] is the first input
    source: str = ""  # the spec text
    file: str = "<spec>"
    train: dict = field(default_factory=dict)  # the `train` statement's settings, keys as written
    # `output a, b`: label -> node name, in the statement's order; empty: the last node is the one output
    output_labels: dict[str, str] = field(default_factory=dict)

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def inputs(self) -> list[Node]:  # `input ... as LABEL` lines, in the spec's order
        return [n for n in self.nodes if n.kind == "input"]

    @property
    def outputs(self) -> list[Node]:  # the network's ends, in the `output` statement's order
        if not self.output_labels:
            return [self.nodes[-1]]
        return [self.node(name) for name in self.output_labels.values()]

    @property
    def output_names(self) -> list[str]:
        """The outputs' names outside dlc (ONNX graph outputs, infer's arrays, `--json`): their labels,
        or the last node's name where the spec declares none."""
        return list(self.output_labels) or [self.nodes[-1].name]

    @property
    def output(self) -> Node:  # the first output: the one a loss reads
        return self.outputs[0]

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Node]:  # a graph's nodes are fixed once the compiler returns it
        return {n.name: n for n in self.nodes}


@dataclass
class Network:
    """A compiled spec with its weights, and where they came from: the one value that import returns and
    infer, export, train and the torch engine take. It sits beside the graph, not in the engine, so that
    holding one needs no numpy: the arrays are NumPy's, made and read by the modules that import it."""

    graph: Graph  # its file is the spec's (or the .onnx file a spec was read from)
    params: dict  # trainable tensors by full name ("conv1.W"), as dlc.engine.params names them
    state: dict  # running statistics ("bn1.mean")
    weights: str = ""  # where the weights came from, for reports: "run/best.npz", "fresh he weights (seed 0)"
    checkpoint: str | None = None  # the checkpoint they were read from
    onnx_file: str | None = None  # the .onnx file they were read from (its initializers)
    normalize: dict | None = None  # the input statistics training stored (a checkpoint's meta["normalize"])
    class_names: list | None = None  # the classes by label of the data it trained on (meta["class_names"])
