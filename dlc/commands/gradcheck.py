"""`dlc gradcheck`: the NumPy engine's backprop against numerical gradients on a spec's own network."""

from __future__ import annotations

import json
import math

import click

from dlc.commands.arguments import NON_NEGATIVE, SEED, load_graph, spec_input
from dlc.errors import Failure

EXIT_GRADIENT_MISMATCH = 1


@click.command()
@spec_input
@click.option("--tol", type=NON_NEGATIVE, default=1e-6, show_default=True,
              help="Largest relative error that passes.")
@click.option("--all", "every_entry", is_flag=True,
              help="Check every entry of every tensor (default: all of small ones, a sample of large ones).")
@click.option("--samples", type=click.IntRange(min=1), default=20, show_default=True,
              help="Entries checked per large tensor.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Samples in the random batch.")
@click.option("--loss", type=click.Choice(["mse", "xent"]), default=None,
              help="Loss on the output (default: xent after a final softmax, else mse).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for weights, batch and targets.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def gradcheck(spec, expr, tol, every_entry, samples, batch, loss, seed, as_json):
    """Check every layer's gradients against central differences (float64, random weights and batch).

    Exits 0 when every relative error is within --tol, 1 when one is not.
    """
    from dlc.choices import default_loss
    from dlc.engine.allocator import tune_allocator
    from dlc.machine import refuse_unless_fits
    from dlc.memory import backprop_bytes
    from dlc.progress import progress

    graph = load_graph(spec, expr)
    # float64 throughout, and the backward pass keeps every layer's output
    refuse_unless_fits(backprop_bytes(graph, batch, value_bytes=8), f"gradcheck --batch {batch}")
    from dlc.engine.gradcheck import check_gradients  # numpy, once the work is known to fit

    tune_allocator()
    loss = loss or default_loss(graph)
    with progress("gradcheck") as update:
        layers = check_gradients(graph, loss=loss, batch=batch, seed=seed, samples=samples,
                                 every_entry=every_entry, progress=lambda done, total: update(done, total))
    failed = [r for r in layers if r.worst.worst > tol]
    if as_json:
        click.echo(json.dumps({
            "schema": "dlc.gradcheck/1", "file": graph.file, "loss": loss, "batch": batch, "tol": tol,
            "ok": not failed,
            "layers": [{
                "layer": r.layer, "kind": r.kind, "worst": r.worst.worst, "pass": r.worst.worst <= tol,
                "tensors": [{"tensor": t.tensor, "size": t.size, "checked": t.checked, "worst": t.worst,
                             "at": list(t.at), "analytic": t.analytic, "numeric": t.numeric}
                            for t in r.tensors],
            } for r in layers],
        }, indent=1))
    else:
        _print_table(graph.file, layers, tol, loss, batch)
    if failed:
        why = "; NaN or infinite values: the forward pass or a gradient is not finite" \
            if any(math.isinf(r.worst.worst) for r in failed) else ""
        raise Failure(f"gradcheck: {len(failed)} of {len(layers)} layers exceed the tolerance {tol:g}: "
                      f"{', '.join(r.layer for r in failed)}{why}", EXIT_GRADIENT_MISMATCH)


def _print_table(file: str, layers, tol: float, loss: str, batch: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{file}: gradients against central differences ({loss} loss, batch {batch})",
                  show_edge=False, pad_edge=False)
    for column, justify in [("layer", "left"), ("kind", "left"), ("checked", "left"),
                            ("worst rel. error", "right"), ("at", "left"), ("", "left")]:
        table.add_column(column, justify=justify)
    for r in layers:
        w = r.worst
        checked = ", ".join(f"{t.tensor.rsplit('.', 1)[-1]} {t.checked}/{t.size}" for t in r.tensors)
        at = f"{w.tensor}[{','.join(str(i) for i in w.at)}]"
        verdict = "[green]PASS[/]" if w.worst <= tol else "[bold red]FAIL[/]"
        table.add_row(r.layer, r.kind, checked, f"{w.worst:.2e}", at, verdict)
    console = Console(highlight=False)
    console.print(table)
    passed = sum(r.worst.worst <= tol for r in layers)
    console.print(f"{passed} of {len(layers)} layers within relative error {tol:g}")
