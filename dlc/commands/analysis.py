"""Analysis commands: shapes, params, flops, summary, check, zoo. They import neither numpy nor onnx."""

from __future__ import annotations

import json

import click

from dlc.analysis import OPTIMIZER_SLOTS, analyse
from dlc.commands.arguments import load_graph, spec_input


def _analysis_command(view: str, help_text: str):
    @click.command(view, help=help_text)
    @spec_input
    @click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Batch size for MACs, FLOPs and the training-memory estimate.")
    @click.option("--optimizer", type=click.Choice(sorted(OPTIMIZER_SLOTS)), default=None,
                  help="Optimizer for the training-memory estimate (default: the spec's, else sgd).")
    @click.option("--all", "every_node", is_flag=True, help="One row per node instead of folding suffix layers.")
    @click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON document instead of a table.")
    def command(spec, expr, batch, optimizer, every_node, as_json):
        from dlc import report

        graph = load_graph(spec, expr)
        opt = optimizer or graph.train.get("optimizer", "sgd")
        result = analyse(graph, batch=batch, optimizer=opt if opt in OPTIMIZER_SLOTS else "sgd")
        if as_json:
            click.echo(report.dumps(report.to_json(result)))
            return
        click.echo(f"{graph.file}\n")
        click.echo(report.table(result, view, every_node))
        for line in report.totals_lines(result, view):
            click.echo(line)
    return command


shapes = _analysis_command("shapes", "Every layer's output shape.")
params = _analysis_command("params", "Parameters per layer: trainable and non-trainable.")
flops = _analysis_command("flops", "MACs and FLOPs per layer (per sample, or for --batch N).")
summary = _analysis_command("summary", "Everything: shapes, parameters, MACs, FLOPs, memory, receptive field.")


@click.command()
@spec_input
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def check(spec, expr, as_json):
    """Validate a spec: exit 0 if it compiles, 2 with a located message if not."""
    graph = load_graph(spec, expr)
    result = analyse(graph)
    if as_json:
        click.echo(json.dumps({"schema": "dlc.check/1", "file": graph.file, "ok": True,
                               "layers": len(graph.nodes), "params": result.totals.params}))
    else:
        click.echo(f"{graph.file}: ok, {len(graph.nodes)} nodes, {result.totals.params:,} params")


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
