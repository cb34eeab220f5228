"""Analysis commands: shapes, params, flops, summary, check, zoo. On a spec they import neither numpy nor
onnx; on an .onnx model they import onnx (never onnxruntime)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import click

from dlc.analysis import OPTIMIZER_SLOTS, Analysis, analyse
from dlc.choices import DTYPE_BYTES
from dlc.commands.arguments import is_onnx, load_graph, parse_shapes, shape_option, spec_input
from dlc.errors import DlcError


@dataclass
class Analysed:
    """The analysis of a spec or of an .onnx model, with what only a model has."""

    result: Analysis
    uncounted: list = field(default_factory=list)  # dlc.onnx.analysis.Uncounted, an ONNX model's nodes
    model: object = None  # dlc.onnx.model.OnnxGraph


def analyse_input(spec, expr, shapes: tuple[str, ...], batch: int = 1, optimizer: str | None = None,
                  dtype: str | None = None, act_dtype: str | None = None) -> Analysed:
    """SPEC (a spec or an .onnx model) analysed at `batch` with `optimizer` (default: the spec's, else sgd),
    weights in `dtype` (default: fp32, an .onnx model's stored types) and activations in `act_dtype`
    (default: the weights')."""
    if is_onnx(spec) and expr is None:
        from dlc.onnx.analysis import analyse_onnx
        from dlc.onnx.model import load

        model = load(spec, parse_shapes(shapes))
        result, uncounted = analyse_onnx(model, batch, optimizer or "sgd", dtype, act_dtype)
        return Analysed(result, uncounted, model)
    if shapes:
        raise DlcError("--shape goes with an .onnx model; a spec's input step gives its shape")
    graph = load_graph(spec, expr)
    opt = optimizer or graph.train.get("optimizer", "sgd")
    return Analysed(analyse(graph, batch=batch, optimizer=opt if opt in OPTIMIZER_SLOTS else "sgd",
                            dtype=dtype or "fp32", act_dtype=act_dtype))


def warn_uncounted(a: Analysed) -> None:
    """On stderr, what an .onnx model's figures leave out or could not check."""
    if a.model is not None and a.model.weights_error:
        click.echo(f"dlc: warning: {a.model.path}: the weights cannot be read ({a.model.weights_error}); the "
                   f"figures count them by their declared shapes", err=True)
    if a.model is not None and a.model.inference_error:
        click.echo(f"dlc: warning: ONNX shape inference stopped early: {a.model.inference_error}", err=True)
    by_op: dict[str, list] = {}
    for u in a.uncounted:
        by_op.setdefault(u.op, []).append(u)
    for op, nodes in by_op.items():
        click.echo(f"dlc: warning: {len(nodes)} {op} node{'s' if len(nodes) > 1 else ''} not counted "
                   f"({nodes[0].reason}; first: {nodes[0].node})", err=True)


def model_lines(a: Analysed) -> list[str]:
    """An ONNX model's inputs, outputs and the nodes its totals leave out."""
    from dlc.layers.spatial import show
    from dlc.onnx.analysis import shown

    m = a.model
    lines, signals = [], m.signals
    for what, names in (("inputs", m.inputs), ("outputs", m.outputs)):
        ports = [f"{n} {show(shown(m.tensors[n], signals)) if n in m.tensors and m.tensors[n].known else '?'}"
                 for n in names]
        lines.append(f"{what}: {', '.join(ports) or 'none'}")
    folded, by = m.folded_batchnorms
    if folded:
        # the published count has bn's gamma and beta per channel (and its statistics apart); the file, the
        # conv's weights rescaled and one bias per channel: fewer parameters than the paper's
        lines.append(f"folded: {folded} conv{'s' if folded > 1 else ''} carry the BatchNorm after "
                     f"{'them' if folded > 1 else 'it'} (folded in by {by}): one bias per channel in place of bn's "
                     f"scale and shift, so the file's params are fewer than the paper's")
    if a.uncounted:
        ops = sorted({u.op for u in a.uncounted})
        lines.append(f"not counted: {len(a.uncounted)} of {len(m.nodes)} nodes ({', '.join(ops)}): the MACs and "
                     f"FLOPs above leave them out")
    return lines


def model_json(a: Analysed) -> dict:
    m = a.model
    return {"opset": m.opset, "inputs": m.inputs, "outputs": m.outputs, "nodes": len(m.nodes),
            "folded_batchnorms": m.folded_batchnorms[0],
            "not_counted": [{"node": u.node, "op": u.op, "reason": u.reason} for u in a.uncounted]}


def _analysis_command(view: str, help_text: str):
    @click.command(view, help=help_text + " SPEC may also be an .onnx model: its operators are counted by the same "
                                          "rules (--shape gives dimensions the file leaves free).")
    @spec_input
    @click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Batch size for MACs, FLOPs and the training-memory estimate.")
    @click.option("--optimizer", type=click.Choice(sorted(OPTIMIZER_SLOTS)), default=None,
                  help="Optimizer for the training-memory estimate (default: the spec's, else sgd).")
    @click.option("--dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
                  help="Precision of the weights for the byte figures (default: fp32; an .onnx model's "
                       "stored types). Gradients and optimizer state take it too.")
    @click.option("--act-dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
                  help="Precision of the activations (default: the weights').")
    @click.option("--all", "every_node", is_flag=True, help="One row per node instead of folding suffix layers.")
    @click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON document instead of a table.")
    @shape_option
    def command(spec, expr, batch, optimizer, dtype, act_dtype, every_node, as_json, shapes, context=None,
                kv_dtype=None, device=None):
        from dlc import report

        a = analyse_input(spec, expr, shapes, batch, optimizer, dtype, act_dtype)
        warn_uncounted(a)
        served = serving_figures(a, context, kv_dtype) if view == "summary" else None
        found = find_device(device) if device is not None else None
        if as_json:
            doc = report.to_json(a.result)
            if a.model is not None:
                doc["onnx"] = model_json(a)
                doc["totals"]["not_counted"] = len(a.uncounted)
            if served is not None:
                doc["serving"] = report.serving_json(served, found)
            elif found is not None:
                doc["serving"] = {"batch": batch, **report.memory_json(batch_memory(a), found)}
            click.echo(report.dumps(doc))
            return
        click.echo(f"{a.result.graph.file}\n")
        click.echo(report.table(a.result, view, every_node))
        for line in report.totals_lines(a.result, view) + (model_lines(a) if a.model is not None else []):
            click.echo(line)
        if served is not None:
            lines = report.serving_lines(served, found)
        else:
            lines = report.memory_lines(batch_memory(a), f"batch {batch}", found) if found is not None else []
        for line in lines:
            click.echo(line)
    if view == "summary":
        command = serving_options(command)
    return command


def serving_options(fn):
    """--context, --kv-dtype and --device: what serving a causal spec costs (docs/conventions.md)."""
    fn = click.option("--device", metavar="NAME|FILE.toml|local", default=None,
                      help="Say whether the memory to serve fits this device (`dlc roofline` lists the table).")(fn)
    fn = click.option("--kv-dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
                      help="Precision of the KV cache (default: the activations').")(fn)
    return click.option("--context", type=click.IntRange(min=1), default=None,
                        help="Tokens of context for the KV cache, the decode step and the memory to serve "
                             "(default: the spec's sequence length).")(fn)


def find_device(name: str):
    from dlc.devices import find, local

    if name == "local":
        device, said = local()
        click.echo(said, err=True)
        return device
    return find(name)


def batch_memory(a: Analysed):
    """What serving a network without causal attention holds: its weights and a batch's largest layer."""
    from dlc.serving import serve_memory

    return serve_memory(a.result, None, a.result.totals.batch, a.result.totals.act_dtype)


def serving_figures(a: Analysed, context: int | None, kv_dtype: str | None):
    """A causal spec's serving figures at --context (default: its sequence length); None for another
    network, which refuses --context and --kv-dtype."""
    from dlc.serving import causal_attention, serving

    causal = a.model is None and causal_attention(a.result.graph)
    if not causal:
        for flag, value in (("--context", context), ("--kv-dtype", kv_dtype)):
            if value is not None:
                raise DlcError(f"{flag} {value}: {a.result.graph.file} has no causal attention, so no KV cache "
                               f"and no decode step")
        return None
    t = a.result.totals
    return serving(a.result, context or a.result.graph.input.out_shape[0], t.batch, kv_dtype or t.act_dtype)


shapes = _analysis_command("shapes", "Every layer's output shape.")
params = _analysis_command("params", "Parameters per layer: trainable and non-trainable.")
flops = _analysis_command("flops", "MACs and FLOPs per layer (per sample, or for --batch N).")
summary = _analysis_command("summary", "Everything: shapes, parameters, MACs, FLOPs, memory, receptive field.")


@click.command()
@spec_input
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@shape_option
def check(spec, expr, as_json, shapes):
    """Validate a spec (or an .onnx model): exit 0 if it compiles, 2 with a located message if not."""
    a = analyse_input(spec, expr, shapes)
    warn_uncounted(a)
    graph, params = a.result.graph, a.result.totals.params
    if as_json:
        doc = {"schema": "dlc.check/1", "file": graph.file, "ok": True, "layers": len(graph.nodes), "params": params}
        if a.model is not None:
            doc["not_counted"] = len(a.uncounted)
        click.echo(json.dumps(doc))
    else:
        click.echo(f"{graph.file}: ok, {len(graph.nodes)} nodes, {params:,} params"
                   + (f", {len(a.uncounted)} ONNX nodes not counted" if a.uncounted else ""))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def zoo(as_json):
    """List the specs that ship with dlc (use a name wherever a SPEC goes)."""
    from dlc.zoo import describe, zoo_names, zoo_path

    entries = [(n, describe(zoo_path(n))) for n in zoo_names()]
    if as_json:
        click.echo(json.dumps([{"name": n, "description": d, "path": str(zoo_path(n))} for n, d in entries]))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False)
    t.add_column("name")
    t.add_column("what it is")
    for n, d in entries:
        t.add_row(n, d)
    Console().print(t)
