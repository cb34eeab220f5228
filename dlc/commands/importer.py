"""`dlc import MODEL.onnx -o NET.dlc`: an ONNX model as a spec, with its weights in NET.npz beside it."""

from __future__ import annotations

from pathlib import Path

import click

from dlc.commands.arguments import OUT_FLAGS, parse_shapes, shape_option, writable
from dlc.errors import DlcError


@click.command("import")
@click.argument("model", metavar="MODEL.onnx")
@click.option(*OUT_FLAGS, "out", required=True, metavar="NET.dlc",
              help="The spec to write; its weights go to the .npz of the same name beside it.")
@shape_option
def import_(model: str, out: str, shapes: tuple[str, ...]):
    """Write MODEL.onnx as a spec (one step per line, suffix layers, `as` labels for skips) and its
    weights as a dlc checkpoint, for --weights of infer, export and train."""
    if not Path(out).name or Path(out).suffix.lower() in (".npz", ".onnx"):
        raise DlcError(f"-o {out or repr(out)}: name the spec NET.dlc (its weights go to NET.npz)")
    spec, weights = Path(out), Path(out).with_suffix(".npz")
    for target in (spec, weights):  # both, before either is written
        writable(str(target), "-o", [model])
    from dlc.atomic import atomic_write
    from dlc.engine.params import save_checkpoint
    from dlc.onnx.importing.importer import import_onnx

    net, dequantized = import_onnx(model, parse_shapes(shapes))
    save_checkpoint(weights, net.params, net.state, {"imported_from": str(model)})
    with atomic_write(spec, "w") as f:
        f.write(net.graph.source)
    values = sum(a.size for a in net.params.values())
    click.echo(f"wrote {spec} ({len(net.graph.nodes) - len(net.graph.inputs)} layers) and {weights} ({values:,} parameters, "
               f"{len(net.state)} running statistics)")
    if dequantized:
        click.echo(dequantized)
