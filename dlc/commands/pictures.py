"""Pictures: `dlc draw` (the network as a diagram) and `dlc plot` (training runs as curves).

`draw` is an analysis command: on a spec it imports neither numpy nor onnx, on an .onnx model only onnx;
`plot` imports matplotlib only to write a file, from the optional `plot` extra.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from dlc.commands.arguments import OUT_FLAGS, is_onnx, shape_option, spec_input, writable
from dlc.errors import DlcError

DRAW_FORMATS = {".svg": "dlc.draw.svg", ".mmd": "dlc.draw.mermaid", ".dot": "dlc.draw.dot"}


@click.command()
@spec_input
@click.option(*OUT_FLAGS, "out", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write: .svg (a laid-out diagram), .mmd (Mermaid) or .dot (Graphviz).")
@click.option("--all", "every_node", is_flag=True, help="One box per node instead of folding suffix layers.")
@click.option("--collapse", is_flag=True, help="One box per block call, its repeats included (`basic(64) x2`).")
@shape_option
def draw(spec, expr, out, every_node, collapse, shapes):
    """The network as a diagram, top to bottom: one box per row of `dlc shapes`, branches side by side.
    SPEC may also be an .onnx model: one box per row of `dlc shapes MODEL.onnx`."""
    from dlc.atomic import atomic_write
    from dlc.commands.analysis import analyse_input, warn_uncounted
    from dlc.draw.boxes import diagram

    writer = DRAW_FORMATS.get(out.suffix.lower())
    if writer is None:
        raise DlcError(f"cannot draw to {out}: give a file ending in {', '.join(DRAW_FORMATS)}")
    if spec is not None and spec != "-" and out.exists() and Path(spec).exists() and os.path.samefile(out, spec):
        raise DlcError(f"-o {out} is the spec itself; choose another file")
    writable(str(out), "-o", [])
    if collapse and is_onnx(spec) and expr is None:
        raise DlcError("--collapse folds a spec's block calls; an .onnx model has none (draw it without --collapse)")
    analysed = analyse_input(spec, expr, shapes)
    warn_uncounted(analysed)
    text = importlib.import_module(writer).render(diagram(analysed.result, every_node, collapse))
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
