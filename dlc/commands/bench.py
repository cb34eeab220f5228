"""`dlc bench`: onnxruntime latency and throughput of a model per batch size."""

from __future__ import annotations

import json

import click

from dlc.commands.arguments import parse_shapes, shape_option
from dlc.commands.model import (DEVICE_HELP, drawn_bytes, load_model, model_input, refuse_to_overrun, session_of,
                                vocabularies)


def parse_batches(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected batch sizes like 1,8,32 (received {value})")
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"batch sizes must be >= 1 (received {value})")
    return sizes


@click.command()
@model_input
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint for a spec MODEL (else fresh weights).")
@click.option("--batch", "batches", default=None, callback=parse_batches,
              help="Batch sizes, comma-separated (default 1,8,32; a model exported for one batch size runs at it).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per batch size first (memory allocation, kernel selection, caches).")
@click.option("--runs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed runs per batch size; p50, p90 and p99 are taken over them.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@shape_option
def bench(model, expr, weights, batches, warmup, runs, device, as_json, shapes):
    """onnxruntime latency (p50/p90/p99) and throughput of MODEL per batch size, after warm-up."""
    from dlc.onnx import runtime as rt
    from dlc.progress import progress

    loaded = load_model(model, expr, weights, need_weights=False, fresh_seed=0)
    session = session_of(loaded, device)
    if session.notice:
        click.echo(f"dlc: {session.notice}", err=True)
    sample = rt.sample_shapes(session.inputs, parse_shapes(shapes))
    if batches is None:
        fixed = rt.fixed_batch(session)
        batches = [fixed] if fixed else [1, 8, 32]
    refuse_to_overrun(loaded.graph, session.inputs, max(batches), f"bench --batch {max(batches)}",
                      drawn_bytes(session.inputs))
    results = []
    with progress("bench", len(batches)) as update:
        for i, b in enumerate(batches):
            update(i, what=f"bench: batch {b}")
            results.append(rt.bench(session, b, warmup, runs, vocabularies(loaded), sample))
    if as_json:
        click.echo(json.dumps({"schema": "dlc.bench/1", "provider": session.provider, "notice": session.notice,
                               "warmup": warmup, "runs": runs,
                               "results": [{"batch": r.batch, "p50_ms": r.p50 * 1e3, "p90_ms": r.p90 * 1e3,
                                            "p99_ms": r.p99 * 1e3, "samples_per_s": r.throughput}
                                           for r in results]}))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False)
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "samples/s"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(str(r.batch), f"{r.p50 * 1e3:.3f}", f"{r.p90 * 1e3:.3f}", f"{r.p99 * 1e3:.3f}",
                  f"{r.throughput:,.1f}")
    Console(highlight=False).print(t)
    click.echo(f"provider: {session.provider}; {warmup} warm-up and {runs} timed runs per batch size; "
               f"samples/s at the median latency")
