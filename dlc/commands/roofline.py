"""`dlc roofline`: each layer's work and traffic on a device, what bounds it and how long it takes; the
time to the first token, per decoded token and tokens/s for a causal network, per batch otherwise.
On a spec it imports neither numpy nor onnx (`--device local` measures with numpy, once)."""

from __future__ import annotations

from pathlib import Path

import click

from dlc.choices import DTYPE_BYTES
from dlc.commands.arguments import OUT_FLAGS, output_file, shape_option, spec_input
from dlc.units import binary, grouped, seconds, si

SCHEMA = "dlc.roofline/1"
PICTURES = (".png", ".svg")
CONVENTIONS = {
    "bytes": "weights read once per pass in dtype.weights (an embedding the rows it looks up; a mixture's K "
             "routed experts), each activation written once and read by each consumer in dtype.activations, "
             "causal attention's keys and values written to and read from the cache in kv_dtype; attention's "
             "scores stay on chip (a fused, flash-attention style kernel)",
    "seconds": "per node max(flops / peak, bytes / bandwidth); a phase is the sum over its nodes; a phase "
               "whose first pass fits the device's measured cache (weights, outputs, keys and values) moves its "
               "bytes at the cache's bandwidth",
    "prefill": "the prompt's tokens, causal attention over the whole square as dense kernels compute it",
    "decode": "one new token per sequence a step, contexts prompt+1 .. prompt+generate; figures summed "
              "over the steps (per_step: divided by them)",
    "peak": "the device's dense figure for the wider of dtype.weights and dtype.activations, or the next "
            "wider precision it lists",
}


@click.command()
@spec_input
@click.option("--device", required=True, metavar="NAME|FILE.toml|local",
              help="A device of dlc's table (an unknown name lists them), your own .toml, or `local` "
                   "(this machine, measured once and cached).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sequences (a causal network) or samples in flight at once.")
@click.option("--prompt", type=click.IntRange(min=1), default=None,
              help="Prompt tokens of a causal network (default: the spec's sequence length T; T minus --generate "
                   "where it learns positions, posembed, for T tokens).")
@click.option("--generate", type=click.IntRange(min=0), default=None,
              help="Tokens generated after the prompt, one decode step each [default: 128].")
@click.option("--dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
              help="Precision of the weights (default: fp32; an .onnx model's stored types).")
@click.option("--act-dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
              help="Precision of the activations (default: the weights').")
@click.option("--kv-dtype", type=click.Choice(list(DTYPE_BYTES)), default=None,
              help="Precision of the KV cache (default: the activations').")
@click.option("--fused", is_flag=True,
              help="Time as a fusing runtime runs it: a row's suffix layers (bn, activations) in its kernel, "
                   "moving nothing, and a node whose traffic fits the device's cache at its bandwidth.")
@click.option("--all", "every_node", is_flag=True, help="One row per node instead of folding suffix layers.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON document instead of tables.")
@click.option(*OUT_FLAGS, "out", type=click.Path(path_type=Path), metavar="FILE",
              help="Also draw every layer on the device's roofline: .png or .svg (the `plot` extra).")
@shape_option
def roofline(spec, expr, device, batch, prompt, generate, dtype, act_dtype, kv_dtype, fused, every_node, as_json,
             out, shapes):
    """Per layer: MACs, FLOPs, bytes moved, FLOP per byte, the bound (compute or memory) and the time on
    a device; totals: prefill time (to the first token), time per decoded token and tokens/s for a
    network with causal attention, time per batch and samples/s for any other. SPEC may be an .onnx model."""
    from dlc.commands.analysis import analyse_input, find_device, warn_uncounted
    from dlc.roofline import roofline as run_roofline

    if out is not None:
        output_file(str(out), "-o", PICTURES, [spec])
    found = find_device(device)
    a = analyse_input(spec, expr, shapes, 1, None, dtype, act_dtype)
    warn_uncounted(a)
    if a.model is not None and (prompt is not None or generate is not None):
        raise click.UsageError("--prompt and --generate go with a spec with causal attention; an .onnx model "
                               "runs batch by batch")
    t = a.result.totals
    kv = kv_dtype or t.act_dtype
    r = run_roofline(a.result, found, batch, kv, prompt, generate, fused)
    if out is not None:
        from dlc.plot.roofline import save

        save(r, a.result, out)
    if as_json:
        from dlc.report import dumps

        click.echo(dumps(to_json(r, a.result, kv)))
    else:
        click.echo(text(r, a.result, kv, every_node))
    if out is not None:
        click.echo(f"wrote {out}", err=as_json)


def heading(r, analysis, kv: str) -> str:
    d, t = r.device, analysis.totals
    return (f"{analysis.graph.file} on {d.name}: {r.precision} peak {si(r.peak, 'FLOP/s')}, memory "
            f"{si(d.bandwidth, 'B/s')}, ridge {r.peak / d.bandwidth:.1f} FLOP/B; weights {t.dtype}, activations "
            f"{t.act_dtype}" + (f", KV cache {kv}" if r.prompt else "") + f"; batch {r.batch}")


def cached(phase, device) -> str:
    """Where a phase fits the device's cache, what its bytes moved at."""
    if not phase.in_cache:
        return ""
    return f" (it fits the {binary(device.cache)} cache: bytes at its {si(phase.bandwidth, 'B/s')})"


def _intensity(x: float | None) -> str:
    return "" if x is None else f"{x:,.1f}"


def phase_table(phase, analysis, every_node: bool) -> str:
    from dlc.report import COLUMNS, grid, rows

    by_name = {n.node.name: n for n in phase.nodes}
    k = phase.passes
    lines = []
    for row in rows(analysis, every_node):
        nodes = [by_name[s.node.name] for s in row.stats]
        work = {f: sum(getattr(n, f) for n in nodes) / k for f in ("macs", "flops", "weight_bytes",
                                                                  "activation_bytes", "kv_bytes", "bytes")}
        secs = sum(n.seconds for n in nodes) / k
        compute = sum(n.compute_seconds for n in nodes) / k
        uncounted = any(n.uncounted for n in nodes)
        lines.append([
            row.name, COLUMNS["spec"][2](row), "not counted" if uncounted else si(work["macs"]),
            "not counted" if uncounted else si(work["flops"]), binary(work["weight_bytes"]),
            binary(work["activation_bytes"]), binary(work["kv_bytes"]),
            _intensity(work["flops"] / work["bytes"] if work["bytes"] else None),
            ("compute" if compute * 2 > secs else "memory") if secs else "", seconds(secs),
            f"{100 * secs / (phase.seconds / k):.1f}%" if phase.seconds else ""])
    headers = ["layer", "spec", "MACs", "FLOPs", "weights", "activations", "KV", "FLOP/B", "bound", "time", "share"]
    if not any(n.kv_bytes for n in phase.nodes):
        headers.pop(6)
        lines = [line[:6] + line[7:] for line in lines]
    right = [False, False] + [True] * (len(headers) - 2)
    return grid(headers, right, lines)


def text(r, analysis, kv: str, every_node: bool) -> str:
    out = [heading(r, analysis, kv), *(f"note: {n}" for n in r.notes), ""]
    pre, dec = r.phase("prefill"), r.phase("decode")
    if pre is None:
        work = r.phases[0]
        out += [f"one batch of {r.batch}{cached(work, r.device)}", phase_table(work, analysis, every_node)]
        out.append(f"time per batch: {seconds(work.seconds)} ({binary(work.total('bytes'))} moved, "
                   f"{si(work.total('flops'))} FLOPs); samples/s: {r.batch / work.seconds:,.1f}")
        return "\n".join(out)
    out += [f"prefill: {grouped(r.prompt)} tokens x batch {r.batch}{cached(pre, r.device)}",
            phase_table(pre, analysis, every_node)]
    if dec is not None:
        lo, hi = dec.contexts
        out += ["", f"decode: the mean of {grouped(dec.passes)} steps at contexts {grouped(lo)}..{grouped(hi)}, "
                    f"one token x batch {r.batch} each{cached(dec, r.device)}", phase_table(dec, analysis, every_node)]
    out.append(f"time to first token: {seconds(pre.seconds)} (prefill of {grouped(r.prompt)} tokens, "
               f"{si(pre.total('flops'))} FLOPs, {binary(pre.total('bytes'))} moved)")
    if dec is not None:
        per = dec.seconds / dec.passes
        out.append(f"time per decoded token: {seconds(per)} (mean of {grouped(dec.passes)} steps, "
                   f"{binary(dec.total('bytes') / dec.passes)} moved each); {r.batch / per:,.1f} tokens/s at "
                   f"batch {r.batch}")
        out.append(f"prompt + {grouped(r.generate)} tokens: {seconds(pre.seconds + dec.seconds)}")
    return "\n".join(out)


def to_json(r, analysis, kv: str) -> dict:
    d, t = r.device, analysis.totals

    def phase(p) -> dict:
        doc = {"what": p.what, "passes": p.passes, "seconds": p.seconds, "bandwidth": p.bandwidth,
               "in_cache": p.in_cache,
               **({"contexts": list(p.contexts)} if p.contexts else {}),
               "totals": {f: p.total(f) for f in ("macs", "flops", "weight_bytes", "activation_bytes", "kv_bytes")},
               "layers": [{"name": n.node.name, "kind": n.node.kind, "row": n.node.row, "macs": n.macs,
                           "flops": n.flops, "weight_bytes": n.weight_bytes, "activation_bytes": n.activation_bytes,
                           "kv_bytes": n.kv_bytes, "bytes": n.bytes, "intensity": n.intensity, "bound": n.bound,
                           "seconds": n.seconds, **({"not_counted": n.uncounted} if n.uncounted else {})}
                          for n in p.nodes]}
        doc["totals"]["bytes"] = p.total("bytes")
        return doc

    pre, dec = r.phase("prefill"), r.phase("decode")
    if pre is None:
        totals = {"seconds_per_batch": r.phases[0].seconds, "samples_per_second": r.batch / r.phases[0].seconds}
    else:
        totals = {"time_to_first_token": pre.seconds}
        if dec is not None:
            per = dec.seconds / dec.passes
            totals |= {"seconds_per_token": per, "tokens_per_second": r.batch / per}
    return {
        "schema": SCHEMA, "file": analysis.graph.file, "batch": r.batch,
        "dtype": {"weights": t.dtype, "activations": t.act_dtype, "kv": kv if r.prompt else None,
                  "compute": r.precision},
        "device": {"name": d.name, "memory": d.memory, "bandwidth": d.bandwidth, "peak": r.peak,
                   "ridge": r.peak / d.bandwidth, "cache": d.cache, "cache_bandwidth": d.cache_bandwidth,
                   "sources": d.sources, "note": d.note},
        **({"prompt": r.prompt, "generate": r.generate} if r.prompt else {}),
        "notes": r.notes, "conventions": CONVENTIONS, "phases": [phase(p) for p in r.phases], "totals": totals,
    }
