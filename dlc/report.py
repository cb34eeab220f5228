"""Analysis reports: rich tables for people, a versioned JSON document for programs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlc.analysis import Analysis, NodeStats
from dlc.choices import DTYPE_BYTES
from dlc.layers.spatial import show
from dlc.units import binary, grouped, si

if TYPE_CHECKING:  # a spec without causal attention never needs them
    from dlc.devices import Device
    from dlc.serving import ServeMemory, Serving

SCHEMA = "dlc.analysis/1"

# The convention each figure follows; carried in the JSON beside the figures (docs/conventions.md).
CONVENTIONS = {
    "out_shape": "per sample, batch left out: [C, H, W] images, [N] vectors, [T, D] sequences, [T] token ids",
    "params": "trainable parameters: weights, biases, bn scale and shift, embeddings, recurrent weights",
    "non_trainable": "bn running mean and variance",
    "macs": "multiply-accumulates of conv, transposed conv, fc, attention and recurrent products (papers' "
            "'FLOPs'); causal and sliding-window attention counted in full, as dense kernels compute it; "
            "per sample times batch",
    "flops": "every floating-point operation of the inference forward pass: 2*MACs + bias adds + "
             "activations + pooling + bn + merges; per sample times batch",
    "activations": "output elements per sample",
    "receptive_field": "input pixels [height, width] one output element sees; jump = product of strides",
    "param_bytes": "(params + non_trainable) in dtype.weights (bytes_per_value; int4 rounds up to whole bytes "
                   "per node; an ONNX model by default each initializer in its stored type, a quantized one's "
                   "scales and zero points included: quantization_bytes)",
    "activation_bytes": "sum of every node's output elements per sample in dtype.activations (an ONNX model "
                        "by default each tensor in its own element type)",
    "train_bytes": "parameters + gradients + optimizer state + batch * activation_bytes, gradients and "
                   "optimizer state in dtype.weights",
    "engine_train_bytes": "train_bytes + the im2col columns dlc's NumPy engine holds at once at this batch "
                          "(null for an ONNX model)",
}
# Beside the others only where the graph has a mixture of experts, so other documents stay as they were.
ACTIVE_CONVENTION = ("the params one step runs: each mixture's router and K of its E experts, and every layer "
                     "outside the mixtures (params counts every expert); a mixture's macs and flops are its "
                     "router's and its K routed experts' per step")
PRECISION_CONVENTION = ("MACs split by the precision of each product's operands (a spec's all in dtype.weights; an "
                        "ONNX model's as stored: 'fp32', 'fp16 w / fp32 a', 'int8 w / uint8 a', 'int4 w, block 32': "
                        "weights, then activations where they are not the float the product computes in), each "
                        "with the precision it computes in (compute: the activations', int8 for a uint8 one), for "
                        "the peak that applies")
# Beside the others only where an ONNX model stores attention tables or masks.
CONSTANTS_CONVENTION = ("values of an ONNX model's stored attention tables and masks (a causal mask, rotary cos "
                        "and sin tables): constants, not in params; bytes in their stored types; among them "
                        "Swin's relative position biases that an exporter expanded to heads x N x N "
                        "(expanded_biases: the learned values behind them)")


@dataclass
class Row:
    """One table row: a layer with the suffix layers folded into it (or a single node with --all)."""

    name: str
    text: str
    stats: list[NodeStats]
    sources: list[str]  # where its input comes from, when that is not simply the row above
    output: str = ""  # the name `output` gives it, where the row ends at one of the network's outputs

    @property
    def out_shape(self):
        return self.stats[-1].node.out_shape

    def total(self, field: str) -> int:
        return sum(getattr(s, field) for s in self.stats)


def rows(analysis: Analysis, every_node: bool = False) -> list[Row]:
    out: list[Row] = []
    row_of: dict[str, str] = {}  # node name -> row name
    for s in analysis.nodes:
        node = s.node
        key = node.name if every_node else node.row
        row_of[node.name] = key
        if out and out[-1].name == key:
            out[-1].stats.append(s)
            continue
        prev = out[-1].stats[-1].node.name if out else None
        sources = [] if node.inputs == ([prev] if prev else []) else [row_of.get(i, i) for i in node.inputs]
        text = node.kind if every_node else (node.text or node.kind)
        out.append(Row(key, text, [s], sources))
    ends = {node: label for label, node in getattr(analysis.graph, "output_labels", {}).items()}
    for r in out:
        r.output = ends.get(r.stats[-1].node.name, "")
    return out


# A merge of thousands of branches would widen every row of the table to its list of sources and its
# one-line text (3,000 branches printed 69 MB): those cells are cut, the sources with a count of the rest.
# The zoo's longest spec cell has 40 characters.
FROM_WIDTH = 40
SPEC_WIDTH = 60


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _sources(names: list[str]) -> str:
    shown: list[str] = []
    for i, name in enumerate(names):
        rest = len(names) - i
        more = f"… +{rest:,} more"
        if len(", ".join([*shown, name])) > FROM_WIDTH or rest > 1 and \
                len(", ".join([*shown, name, more])) > FROM_WIDTH:
            return ", ".join([*shown, more])
        shown.append(name)
    return ", ".join(shown)


def _rf(s: NodeStats) -> str:
    if s.rf is None:
        return ""
    size = _per_axis(s.rf.size)
    return f"{size} (all)" if s.rf.whole else size


def _jump(s: NodeStats) -> str:
    if s.rf is None:
        return ""
    return _per_axis(s.rf.jump)


def _per_axis(values: tuple) -> str:
    """One number when every spatial axis has it, else one per axis: 7, 7x3, 3x7x7."""
    return f"{values[0]}" if len(set(values)) == 1 else "x".join(map(str, values))


def _cost(r: Row, field: str) -> str:
    """The row's MACs or FLOPs; "not counted" where an ONNX operator in it has no counting rule."""
    return "not counted" if any(s.uncounted for s in r.stats) else si(r.total(field))


def _precision(r: Row) -> str:
    return next((s.precision for s in r.stats if s.precision), "")


COLUMNS = {
    # name: (header, right-justified, cell)
    # a declared output's row says so, with its name: `fc2 → logits`
    "layer": ("layer", False, lambda r: f"{r.name} → {r.output}" if r.output else r.name),
    "spec": ("spec", False, lambda r: _clip(r.text, SPEC_WIDTH)),
    "from": ("from", False, lambda r: _sources(r.sources)),
    "output": ("output", True, lambda r: show(r.out_shape)),
    "params": ("params", True, lambda r: grouped(r.total("params"))),
    "active_params": ("active", True, lambda r: grouped(r.total("active_params"))),
    "non_trainable": ("non-trainable", True, lambda r: grouped(r.total("non_trainable"))),
    "macs": ("MACs", True, lambda r: _cost(r, "macs")),
    "flops": ("FLOPs", True, lambda r: _cost(r, "flops")),
    "memory": ("activations", True, lambda r: binary(r.total("activation_bytes"))),
    "rf": ("RF", True, lambda r: _rf(r.stats[-1])),
    "precision": ("precision", False, _precision),
    "weights": ("weights", True, lambda r: binary(r.total("param_bytes")) if r.total("param_bytes") else ""),
    "jump": ("jump", True, lambda r: _jump(r.stats[-1])),
}

VIEWS = {
    "shapes": ["layer", "spec", "from", "output"],
    "params": ["layer", "spec", "output", "params", "non_trainable"],
    "flops": ["layer", "spec", "output", "macs", "flops"],
    "summary": ["layer", "spec", "from", "output", "params", "non_trainable", "macs", "flops", "memory", "rf",
                "jump"],
}


def table(analysis: Analysis, view: str, every_node: bool = False) -> str:
    """The table as text. Drawn by hand rather than with rich: rich takes a second to lay out the
    hundreds of rows of a ResNet-152, and the analysis commands must answer instantly."""
    table_rows = rows(analysis, every_node)
    cols = list(VIEWS[view])  # a copy: the columns added below are for this table only
    if not any(r.sources for r in table_rows):
        cols = [c for c in cols if c != "from"]
    if "params" in cols and has_mixture(analysis):
        cols.insert(cols.index("params") + 1, "active_params")
    if shows_precision(analysis) and view in ("params", "flops", "summary"):
        cols[cols.index("output") + 1:cols.index("output") + 1] = ["precision"] + ["weights"] * (view != "flops")
    return grid([COLUMNS[c][0] for c in cols], [COLUMNS[c][1] for c in cols],
                [[COLUMNS[c][2](r) for c in cols] for r in table_rows])


def grid(headers: list[str], right: list[bool], lines: list[list[str]]) -> str:
    """Columns two spaces apart under a header and between rules, numbers (`right`) right-justified."""
    cells = [headers, *lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]

    def fmt(line):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for r, v, w in zip(right, line, widths)).rstrip()

    rule = "  ".join("─" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(line) for line in lines), rule])


def shows_precision(analysis: Analysis) -> bool:
    """Whether the tables say each row's precision and stored bytes: for an ONNX model whose products are
    not all in float32 (a quantized or float16 file)."""
    return any(s.precision not in (None, "fp32") for s in analysis.nodes)


def has_mixture(analysis: Analysis) -> bool:
    """Whether some params are not active (a mixture of experts with K < E): only then do the tables and
    JSON show active params, which elsewhere equal params."""
    return any(n.standby for n in analysis.graph.nodes)


def dtype_text(dtype: str) -> str:
    """A precision as the totals name it: float32 as before --dtype existed, an ONNX model's mixture of
    stored types as such."""
    return {"fp32": "float32", "mixed": "stored types"}.get(dtype, dtype)


def totals_lines(analysis: Analysis, view: str) -> list[str]:
    t = analysis.totals
    per = "per sample" if t.batch == 1 else f"for a batch of {t.batch}"
    lines = []
    if view in ("params", "summary"):
        overhead = f", of which {binary(t.overhead_bytes)} quantization scales and zero points" \
            if t.overhead_bytes else ""
        lines.append(f"params: {grouped(t.params)} trainable + {grouped(t.non_trainable)} non-trainable "
                     f"= {grouped(t.params + t.non_trainable)} ({binary(t.param_bytes)} as {dtype_text(t.dtype)}"
                     f"{overhead})")
        if has_mixture(analysis):
            lines.append(f"active params: {grouped(t.active_params)} of {grouped(t.params)}, what one step runs "
                         f"(each mixture's router and top K experts, and every layer outside the mixtures)")
        if t.constants:
            lines.append(f"constants: {grouped(t.constants)} value{'s' * (t.constants != 1)} "
                         f"({binary(t.constant_bytes)} as stored), "
                         f"attention's stored tables and masks, not parameters")
        tables, stored, learned = t.expanded_biases
        if tables:
            lines.append(f"  {grouped(stored)} of them are {tables} relative position bias table"
                         f"{'s' * (tables != 1)} (Swin's) that the exporter expanded to heads x N x N from "
                         f"{grouped(learned)} learned values: the model's own count is "
                         f"{grouped(t.params + learned)} params")
    if view in ("flops", "summary"):
        causal = any(n.kind == "attention" and n.attrs["causal"] for n in analysis.graph.nodes)
        window = any(n.kind == "attention" and n.attrs["window"] for n in analysis.graph.nodes)
        masked = "causal and sliding-window attention" if window else "causal attention"
        lines.append(f"MACs: {si(t.macs)} ({grouped(t.macs)}) multiply-accumulates {per}, "
                     f"weighted layers only" + (f"; {masked} counted in full (dense kernels compute "
                                                "the whole T x T square)" if causal else "")
                     + ("; a mixture counts its router and K routed experts per step" if has_mixture(analysis)
                        else ""))
        if shows_precision(analysis):
            split = ", ".join(f"{p} {si(e['macs'])} ({e['compute']} compute)" for p, e in t.macs_by_precision.items())
            lines.append(f"MACs by precision: {split}")
        lines.append(f"FLOPs: {si(t.flops)} ({grouped(t.flops)}) floating-point operations {per}, "
                     f"forward pass at inference")
    if view == "summary":
        each = "values, each in its tensor's stored type" if t.act_dtype == "mixed" else \
            f"{dtype_text(t.act_dtype)} values"
        lines.append(f"activations: {binary(t.activation_bytes)} per sample ({grouped(t.activations)} {each})")
        lines.append(f"training memory at batch {t.batch} with {t.optimizer}: {binary(t.train_bytes)} = "
                     f"parameters {binary(t.param_bytes)} + gradients {binary(t.grad_bytes)} + "
                     f"optimizer state {binary(t.optimizer_bytes)} + {t.batch} x activations {binary(t.activation_bytes)}")
        if t.columns_bytes is not None:
            lines.append(f"NumPy engine (dlc train) at its peak: {binary(t.engine_train_bytes)} = training memory + "
                         f"im2col columns {binary(t.columns_bytes)}")
    return lines


# Beside the others only for a spec with causal attention (docs/conventions.md, Serving and the roofline).
SERVING_CONVENTIONS = {
    "kv_bytes_per_token": "causal attention layers x 2 (keys, values) x kv heads x head size x bytes of kv_dtype",
    "kv_cache_bytes": "kv_bytes_per_token x context x batch; a sliding window keeps its last window tokens",
    "prefill": "context tokens per sequence, causal attention over the whole square as dense kernels compute it",
    "decode": "one new token per sequence whose context (its own token included) is `context` tokens: every "
              "weight that multiplies once, attention over the cached tokens; the embedding a lookup",
    "bytes": "weights read once per pass in dtype.weights, each activation written once and read by each "
             "consumer in dtype.activations, keys and values written to and read from the cache in kv_dtype",
    "serve_bytes": "every weight (standby experts too) + the KV cache at context and batch + the largest "
                   "layer's inputs and output at once while prefilling the context",
}


def serving_lines(s: Serving, device: Device | None = None) -> list[str]:
    """The KV cache, a decode step beside the prefill, and the memory to serve, for people."""
    at = f"context {grouped(s.context)} x batch {s.batch}"
    d, p = s.decode, s.prefill
    each = "one new token" if s.batch == 1 else f"one new token for each of {s.batch} sequences"
    return [
        f"KV cache: {grouped(s.kv_per_token)} B ({binary(s.kv_per_token)}) per token in {s.kv_dtype} = {s.kv_formula}; "
        f"{binary(s.kv_cache)} ({grouped(s.kv_cache)} B) at {at}",
        f"decode step at context {grouped(s.context)}: {si(d.total('macs'))} MACs ({grouped(d.total('macs'))}), "
        f"{si(d.total('flops'))} FLOPs, {binary(d.total('bytes'))} moved ({each}); prefill of "
        f"{grouped(s.context)} tokens: {si(p.total('macs'))} MACs ({grouped(p.total('macs'))}), "
        f"{binary(p.total('bytes'))} moved",
        *memory_lines(s.memory, at, device, with_kv=True),
    ]


def memory_lines(m: ServeMemory, at: str, device: Device | None = None, with_kv: bool = False) -> list[str]:
    """The memory to serve (with_kv: a causal network's, with its KV cache), and whether it fits."""
    kv = f" + KV cache {binary(m.kv_cache)}" if with_kv else ""
    lines = [f"memory to serve at {at}: {binary(m.total)} = weights {binary(m.weights)}{kv} + largest live "
             f"activations {binary(m.activations)}"]
    if device is not None:
        verdict = "fits in" if m.total <= device.memory else "does not fit in"
        lines.append(f"{device.name}: {binary(m.total)} {verdict} its {binary(device.memory)} "
                     f"({grouped(device.memory)} B)")
    return lines


def serving_json(s: Serving, device: Device | None = None) -> dict:
    def work(p):
        return {"tokens" if p.what == "prefill" else "context": p.context, "macs": p.total("macs"),
                "flops": p.total("flops"), "bytes": p.total("bytes")}

    return {"context": s.context, "batch": s.batch, "kv_dtype": s.kv_dtype, "kv_bytes_per_token": s.kv_per_token,
            "kv_cache_bytes": s.kv_cache, "prefill": work(s.prefill), "decode": work(s.decode),
            **memory_json(s.memory, device), "conventions": SERVING_CONVENTIONS}


def memory_json(m: ServeMemory, device: Device | None = None) -> dict:
    doc = {"serve_bytes": {"weights": m.weights, "kv_cache": m.kv_cache, "activations": m.activations,
                           "total": m.total}}
    if device is not None:
        doc["device"] = {"name": device.name, "memory": device.memory, "fits": m.total <= device.memory}
    return doc


def to_json(analysis: Analysis) -> dict:
    g, t = analysis.graph, analysis.totals
    mixture = has_mixture(analysis)
    layers = []
    for s in analysis.nodes:
        n = s.node
        layers.append({
            "name": n.name,
            "kind": n.kind,
            "row": n.row,
            "text": n.text,
            "line": n.pos.line if n.pos else None,
            "col": n.pos.col if n.pos else None,
            "inputs": list(n.inputs),
            "out_shape": list(n.out_shape),
            "params": s.params,
            "non_trainable": s.non_trainable,
            **({"active_params": s.active_params} if mixture else {}),
            "macs": s.macs,
            "flops": s.flops,
            "activations": s.activations,
            "receptive_field": list(s.rf.size) if s.rf else None,
            "receptive_field_whole": s.rf.whole if s.rf else None,
            "jump": [float(j) for j in s.rf.jump] if s.rf else None,
            **({"not_counted": s.uncounted} if s.uncounted else {}),
            **({"precision": s.precision, "param_bytes": s.param_bytes} if s.precision else {}),
        })
    return {
        "schema": SCHEMA,
        "file": g.file,
        "input": list(g.input.out_shape),
        "input_dtype": g.input.dtype,
        # every input of the network, the first being `input` and `input_dtype` above
        "inputs": [{"name": n.name, "shape": list(n.out_shape), "dtype": n.dtype,
                    **({"shared": True} if n.attrs.get("shared") else {})} for n in g.inputs],
        # the network's ends in the spec's order (`output a, b`), or its last layer
        "outputs": [{"name": name, "layer": n.name, "shape": list(n.out_shape)}
                    for name, n in zip(g.output_names, g.outputs)],
        "batch": t.batch,
        "conventions": CONVENTIONS | ({"active_params": ACTIVE_CONVENTION} if mixture else {})
        | ({"constants": CONSTANTS_CONVENTION} if t.constants else {})
        | ({"macs_by_precision": PRECISION_CONVENTION} if t.macs_by_precision else {}),
        "dtype": {"weights": t.dtype, "activations": t.act_dtype,
                  "bytes_per_value": {"weights": DTYPE_BYTES.get(t.dtype),
                                      "activations": DTYPE_BYTES.get(t.act_dtype)}},
        "layers": layers,
        "totals": {
            "params": t.params,
            "non_trainable": t.non_trainable,
            **({"active_params": t.active_params} if mixture else {}),
            **({"constants": {"values": t.constants, "bytes": t.constant_bytes}} if t.constants else {}),
            **({"expanded_biases": dict(zip(("tables", "values", "learned"), t.expanded_biases))}
               if t.expanded_biases[0] else {}),
            **({"quantization_bytes": t.overhead_bytes} if t.overhead_bytes else {}),
            "macs": t.macs,
            **({"macs_by_precision": t.macs_by_precision} if t.macs_by_precision else {}),
            "flops": t.flops,
            "activations": t.activations,
            "param_bytes": t.param_bytes,
            "activation_bytes": t.activation_bytes,
            "train_bytes": {"bytes": t.train_bytes, "batch": t.batch, "optimizer": t.optimizer,
                            "formula": t.train_formula},
            "engine_train_bytes": t.engine_train_bytes,
        },
    }


def dumps(doc: dict) -> str:
    """Indented JSON with short lists (shapes, fields) kept on one line, so a layer reads at a glance."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                  text)
