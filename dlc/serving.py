"""What running a network costs, layer by layer: a prefill of P tokens, one decode step at a context of
N tokens, or one batch of a model without causal attention; the KV cache; the memory to serve.

The figures follow docs/conventions.md ("Serving and the roofline"): MACs and FLOPs by the layer
registry's rules; bytes moved = each weight read once per pass (in --dtype), each activation written
once and read by each layer that consumes it (in --act-dtype), and for causal attention the keys and
values written to and read from the cache (in --kv-dtype). Plain integers, no numpy: the analysis
commands that show these figures must start at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlc.analysis import Analysis, NodeStats, value_bytes
from dlc.choices import DTYPE_BYTES
from dlc.graph import Graph, Node
from dlc.layers.sequence import attention_work

# Bytes of an integer input read by its first layer (token ids are int64 as dlc's inputs store them);
# every other tensor moves in the precision asked for.
STORED_BYTES = {"int64": 8, "int32": 4}


@dataclass
class LayerCost:
    """One node's work and traffic in one pass, for the whole batch."""

    node: Node
    macs: int
    flops: int
    weight_bytes: int  # its weights, read once
    activation_bytes: int  # its inputs read and its output written
    kv_bytes: int = 0  # keys and values written to the cache and read from it (causal attention)
    out_bytes: int = 0  # of activation_bytes, its output written
    uncounted: str | None = None  # an ONNX operator without a counting rule: its MACs and FLOPs are unknown
    # fused into the product before it (a suffix layer, timed --fused): a folded bn computes nothing at run
    # time and an activation's few operations an output overlap the product's, so it takes no time of its own
    epilogue: bool = False

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.kv_bytes

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved; None for a node that moves nothing."""
        return self.flops / self.bytes if self.bytes else None


@dataclass
class Pass:
    """The nodes' costs for one pass: `queries` new tokens per sequence over a `context` of tokens
    (both None for a model without causal attention, whose pass is one batch)."""

    what: str  # "prefill", "decode" or "batch"
    batch: int
    layers: list[LayerCost]
    queries: int | None = None
    context: int | None = None

    def total(self, field: str) -> int:
        return sum(getattr(c, field) for c in self.layers)

    @property
    def footprint(self) -> int:
        """Bytes a pass touches: its weights, every output, the keys and values it moves."""
        return self.total("weight_bytes") + self.total("out_bytes") + self.total("kv_bytes")


def causal_attention(graph: Graph) -> list[Node]:
    """The layers that keep a KV cache when the network generates: its causal attention."""
    return [n for n in graph.nodes if n.kind == "attention" and n.attrs["causal"]]


def steps(graph: Graph) -> int:
    """T, the spec's sequence length (`input seq T` or a T x D input)."""
    return graph.input.out_shape[0]


def kv_values_per_token(node: Node) -> int:
    """Keys and values one token adds to a layer's cache: 2 x kv heads x head size."""
    return 2 * node.attrs["kv"] * node.attrs["head_dim"]


def kv_bytes_per_token(graph: Graph, kv_dtype: str) -> int:
    """Layers x 2 x kv heads x head size x bytes: what each token of context holds in the cache."""
    return sum(value_bytes(kv_values_per_token(n), kv_dtype) for n in causal_attention(graph))


def cached_tokens(node: Node, context: int) -> int:
    """Tokens a layer keeps at a context: a sliding window keeps its last `window` alone."""
    window = node.attrs["window"]
    return context if window is None else min(context, window)


def kv_cache_bytes(graph: Graph, context: int, batch: int, kv_dtype: str) -> int:
    """The KV cache of `batch` sequences of `context` tokens."""
    return sum(value_bytes(kv_values_per_token(n) * cached_tokens(n, context) * batch, kv_dtype)
               for n in causal_attention(graph))


def _per_token(node: Node, seq: int) -> bool:
    """Whether a node's output runs along the sequence, one row a step (so a pass over q new tokens
    computes q/T of it); a node off the sequence (after seqpool) runs whole on every pass."""
    return 1 <= len(node.out_shape) <= 2 and node.out_shape[0] == seq


def _pass(analysis: Analysis, what: str, batch: int, kv_dtype: str, queries: int | None = None,
          context: int | None = None, only: set[str] | None = None, fused: bool = False) -> Pass:
    t = analysis.totals
    seq = steps(analysis.graph) if queries is not None else None
    by_name = {s.node.name: s for s in analysis.nodes}

    def scaled(s: NodeStats, n: int) -> int:
        """A count of node s per sample at T steps, for the pass's new tokens."""
        return n * queries // seq if seq is not None and _per_token(s.node, seq) else n

    per_sample = t.batch  # the analysis' MACs and FLOPs are for its batch; a pass sets its own

    def out_bytes(s: NodeStats) -> int:
        if s.stored_activation_bytes is not None:  # an ONNX file's outputs, each in its own element type
            return scaled(s, s.stored_activation_bytes) * batch
        n = scaled(s, s.activations) * batch
        if s.node.dtype in STORED_BYTES:
            return n * STORED_BYTES[s.node.dtype]
        return value_bytes(n, t.act_dtype)

    layers = []
    readers: dict[str, int] = {}  # what fused_reads asks, only then
    previous: dict[str, str] = {}
    if fused:
        for s in analysis.nodes:
            for i in s.node.inputs:
                readers[i] = readers.get(i, 0) + 1
        previous = {s.node.name: p.node.name for p, s in zip(analysis.nodes, analysis.nodes[1:])}
    for s in analysis.nodes:
        node = s.node
        if only is not None and node.name not in only:
            continue
        if node.kind == "input":  # put there by the caller: read by its consumers, not a layer's work
            layers.append(LayerCost(node, 0, 0, 0, 0, out_bytes=out_bytes(s)))
            continue
        macs, flops = (scaled(s, x // per_sample) * batch for x in (s.macs, s.flops))
        weights = 0 if node.standby else s.param_bytes
        kv = 0
        if node.kind == "embed":  # a lookup reads the rows of the tokens it looks up, not the table
            rows = min(node.attrs["vocab"], scaled(by_name[node.inputs[0]], by_name[node.inputs[0]].activations) * batch)
            weights = value_bytes(rows * node.attrs["dim"], t.dtype)
        elif node.kind == "posembed" and seq is not None and not node.attrs["fixed"]:  # a table's rows
            weights = value_bytes(min(node.attrs["steps"], queries) * node.attrs["dim"], t.dtype)
        elif node.kind == "fc" and node.attrs["tied"] is not None:  # the head reads the embed's whole table
            weights += value_bytes(node.attrs["units"] * node.attrs["in_features"], t.dtype)
        elif node.kind == "attention" and node.attrs["causal"] and seq is not None:
            keys = queries if what == "prefill" else cached_tokens(node, context)
            macs, flops = (x * batch for x in attention_work(node.attrs, queries, keys))
            # prefill stores the keys and values the cache keeps; a decode step stores its token's and
            # reads the whole cache (its own token included)
            stored = cached_tokens(node, queries) if what == "prefill" else 1
            read = 0 if what == "prefill" else keys
            kv = value_bytes(kv_values_per_token(node) * (stored + read) * batch, kv_dtype)
        reads = fused_reads(node, previous, readers) if fused else None
        if reads is not None:  # runs on its producer's output before that is written, which it replaces
            written = 0
            moved = sum(out_bytes(by_name[i]) for i in reads)
        else:
            written = out_bytes(s)
            moved = written + sum(out_bytes(by_name[i]) for i in node.inputs)
        layers.append(LayerCost(node, macs, flops, weights, moved, kv, written, s.uncounted,
                                reads == [] and node.row != node.name))
    return Pass(what, batch, layers, queries, context)


# The elementwise merges a fusing runtime runs in the epilogue of the product before them (a residual add
# in onnxruntime's FusedConv, a squeeze-and-excitation product), besides every suffix layer of a row.
EPILOGUE_MERGES = {"add", "mul", "Add", "Mul"}


def fused_reads(node: Node, previous: dict[str, str], readers: dict[str, int]) -> list[str] | None:
    """The inputs a node still reads from memory when it runs in the epilogue of the node just before it
    (a row's suffix layer, a bn or relu; an elementwise merge): those other than that node, whose output
    it takes in registers and which nothing else reads; None for a node that runs alone."""
    before = previous.get(node.name)
    if before not in node.inputs or readers.get(before) != 1:
        return None
    if node.row == node.name and node.kind not in EPILOGUE_MERGES:
        return None
    return [i for i in node.inputs if i != before]


def prefill(analysis: Analysis, tokens: int, batch: int, kv_dtype: str, fused: bool = False) -> Pass:
    """Prefill of `tokens` tokens per sequence: every layer over them, causal attention over the whole
    tokens x tokens square as dense kernels compute it (the analysis' convention), the cache written."""
    return _pass(analysis, "prefill", batch, kv_dtype, tokens, tokens, fused=fused)


def decode_step(analysis: Analysis, context: int, batch: int, kv_dtype: str, only: set[str] | None = None,
                fused: bool = False) -> Pass:
    """One new token per sequence whose context (its own token included) is `context` tokens: every
    layer on one step, causal attention over the cached tokens (a window's at most). With `only`, the
    named nodes alone (the others' cost does not depend on the context)."""
    return _pass(analysis, "decode", batch, kv_dtype, 1, context, only, fused)


def batch_pass(analysis: Analysis, batch: int, fused: bool = False) -> Pass:
    """One forward pass of a batch: a model without causal attention (a CNN, ViT, an encoder)."""
    return _pass(analysis, "batch", batch, "fp32", fused=fused)


@dataclass
class ServeMemory:
    weights: int  # every parameter, a mixture's standby experts too
    kv_cache: int  # at the context and batch
    activations: int  # the largest layer's inputs and output at once, prefilling the context

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


def serve_memory(analysis: Analysis, context: int | None, batch: int, kv_dtype: str) -> ServeMemory:
    """What serving holds at once: the weights, the KV cache of `batch` sequences of `context` tokens
    (a causal model; None for another, served batch by batch), and the largest live activations."""
    if context is None:
        work = batch_pass(analysis, batch)
        kv = 0
    else:
        work = prefill(analysis, context, batch, kv_dtype)
        kv = kv_cache_bytes(analysis.graph, context, batch, kv_dtype)
    return ServeMemory(analysis.totals.param_bytes, kv, max(c.activation_bytes for c in work.layers))


def time_of(cost: LayerCost, peak_flops: float, bandwidth: float) -> tuple[float, str]:
    """The roofline's time for a node (seconds) and what bounds it: its FLOPs at the peak, or its bytes at
    the bandwidth, whichever takes longer (a node that does neither takes no time)."""
    if cost.epilogue:
        return 0.0, "compute"
    compute, memory = cost.flops / peak_flops, cost.bytes / bandwidth
    return max(compute, memory), "compute" if compute >= memory and cost.flops else "memory"


@dataclass
class Serving:
    """What `dlc summary` shows of a causal spec: the KV cache, a decode step beside the prefill, the
    memory to serve."""

    context: int
    batch: int
    kv_dtype: str
    kv_per_token: int
    kv_formula: str  # how kv_per_token is made: "32 layers x 2 x 8 kv heads x 128 x 2 B"
    kv_cache: int
    prefill: Pass
    decode: Pass
    memory: ServeMemory


def serving(analysis: Analysis, context: int, batch: int, kv_dtype: str) -> Serving:
    g = analysis.graph
    return Serving(context, batch, kv_dtype, kv_bytes_per_token(g, kv_dtype), kv_formula(g, kv_dtype),
                   kv_cache_bytes(g, context, batch, kv_dtype),
                   prefill(analysis, context, batch, kv_dtype), decode_step(analysis, context, batch, kv_dtype),
                   serve_memory(analysis, context, batch, kv_dtype))


def kv_formula(graph: Graph, kv_dtype: str) -> str:
    """Layers x 2 x kv heads x head size x bytes, where every causal layer has the same heads; else a sum."""
    layers = causal_attention(graph)
    shapes = {(n.attrs["kv"], n.attrs["head_dim"]) for n in layers}
    if len(shapes) == 1:
        (kv, hd), = shapes
        return f"{len(layers)} layers x 2 x {kv} kv heads x {hd} x {DTYPE_BYTES[kv_dtype]:g} B"
    return f"the sum over {len(layers)} layers of 2 x kv heads x head size x {DTYPE_BYTES[kv_dtype]:g} B"
