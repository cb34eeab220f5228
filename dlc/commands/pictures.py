"""Pictures: `dlc draw` (the network as a diagram) and `dlc plot` (training runs as curves).

`draw` is an analysis command: on a spec it imports neither numpy nor onnx, on an .onnx model only onnx;
`plot` imports matplotlib only to write a file, from the optional `plot` extra.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from dlc.choices import DTYPE_BYTES
from dlc.commands.arguments import OUT_FLAGS, is_onnx, shape_option, spec_input, writable
from dlc.errors import DlcError

DRAW_FORMATS = {".svg": "dlc.draw.svg", ".mmd": "dlc.draw.mermaid", ".dot": "dlc.draw.dot"}


@click.command()
@spec_input
@click.option(*OUT_FLAGS, "out", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write: .svg (a laid-out diagram), .mmd (Mermaid) or .dot (Graphviz).")
@click.option("--all", "every_node", is_flag=True, help="One box per node instead of folding suffix layers.")
@click.option("--collapse", is_flag=True, help="One box per block call, its repeats included (`basic(64) x2`).")
@click.option("--device", metavar="NAME|FILE.toml|local", default=None,
              help="Colour boxes by what bounds them on this device (red compute, blue memory), as `dlc roofline` "
                   "finds for one batch, or a causal network's prefill.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch for --device.")
@click.option("--dtype", type=click.Choice(list(DTYPE_BYTES)), default=None, help="Weights' precision for --device.")
@shape_option
def draw(spec, expr, out, every_node, collapse, device, batch, dtype, shapes):
    """The network as a diagram, top to bottom: one box per row of `dlc shapes`, branches side by side.
    SPEC may also be an .onnx model: one box per row of `dlc shapes MODEL.onnx`."""
    from dlc.atomic import atomic_write
    from dlc.commands.analysis import analyse_input, find_device, warn_uncounted
    from dlc.draw.boxes import diagram

    writer = DRAW_FORMATS.get(out.suffix.lower())
    if writer is None:
        raise DlcError(f"cannot draw to {out}: give a file ending in {', '.join(DRAW_FORMATS)}")
    if spec is not None and spec != "-" and out.exists() and Path(spec).exists() and os.path.samefile(out, spec):
        raise DlcError(f"-o {out} is the spec itself; choose another file")
    writable(str(out), "-o", [])
    if collapse and is_onnx(spec) and expr is None:
        raise DlcError("--collapse folds a spec's block calls; an .onnx model has none (draw it without --collapse)")
    found = find_device(device) if device is not None else None
    analysed = analyse_input(spec, expr, shapes, dtype=dtype)
    warn_uncounted(analysed)
    drawn = diagram(analysed.result, every_node, collapse)
    if found is not None:
        from dlc.draw.boxes import colour_by_bound
        from dlc.roofline import roofline

        r = roofline(analysed.result, found, batch, analysed.result.totals.act_dtype)
        colour_by_bound(drawn, r.phases[0].nodes)
        drawn.title += f" on {found.name}, batch {batch}: red compute-bound, blue memory-bound"
    text = importlib.import_module(writer).render(drawn)
    with atomic_write(out, "w") as f:
        f.write(text)
    click.echo(f"wrote {out}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN [RUN...]")
@click.option(*OUT_FLAGS, "out", type=click.Path(path_type=Path), metavar="FILE",
              help="Write a .png or .svg figure (needs the `plot` extra); without it, draw in the terminal.")
def plot(runs, out):
    """Loss, accuracy and learning rate per epoch of `dlc train` run folders, overlaid; a --repeat run
    folder is drawn as mean ± std over its seeds."""
    from dlc.plot.runs import read_run

    read = [read_run(r) for r in runs]
    if out is None:
        from dlc.plot.terminal import render

        click.echo(render(read), nl=False)
        return
    from dlc.plot.figure import save

    save(read, out)
    click.echo(f"wrote {out}")
