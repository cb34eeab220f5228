"""`dlc export`: a spec as an ONNX model (checked) or as PyTorch source."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dlc.commands.arguments import OUT_FLAGS, SEED, load_graph, output_file, spec_input
from dlc.commands.model import weights_for
from dlc.errors import DlcError
from dlc.onnx import GELU_OPSET, MAX_OPSET, MIN_OPSET, RMSNORM_OPSET, ROTARY_OPSET

EXPORT_DTYPES = ("fp32", "fp16", "bf16")


def spec_file(spec: str | None, expr: str | None) -> str | None:
    """The file a SPEC argument names, if it names one (not a zoo name, stdin or -e)."""
    return spec if expr is None and spec not in (None, "-") and Path(spec).is_file() else None


@click.command()
@spec_input
@click.option(*OUT_FLAGS, "output", required=True, metavar="FILE", help="Where to write the model (.onnx, or .py).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "pytorch"]), default="onnx", show_default=True,
              help="pytorch: a standalone Python file, class Net(nn.Module), that loads dlc checkpoints.")
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint (.npz); else fresh weights from --seed.")
@click.option("--seed", type=SEED, default=None, help="Seed of the fresh weights (default 0).")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: the lowest in which every layer has its own "
                   f"operator: {MIN_OPSET}, 17 with layernorm, {GELU_OPSET} with gelu, {RMSNORM_OPSET} with rmsnorm, "
                   f"{ROTARY_OPSET} with attention's rope).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fix the batch axis (default: dynamic N).")
@click.option("--dtype", type=click.Choice(EXPORT_DTYPES), default="fp32", show_default=True,
              help="Weights and computation in float16 or bfloat16 (input and output stay float32); an "
                   "operator onnxruntime's CPU provider has no kernel for in that type computes in float32.")
def export(spec, expr, output, fmt, weights, seed, opset, batch, dtype):
    """Write SPEC as an ONNX model, checked: ONNX checker, shapes, parameter count; or as PyTorch source."""
    from dlc.analysis import analyse
    from dlc.machine import refuse_unless_fits
    from dlc.progress import progress

    output_file(output, "-o", (".py",) if fmt == "pytorch" else (".onnx",), [spec_file(spec, expr), weights])
    graph = load_graph(spec, expr)
    if fmt == "pytorch":
        if dtype != "fp32":
            raise DlcError(f"--dtype {dtype} goes with --format onnx: the PyTorch file loads float32 checkpoints "
                           f"(call .half() or .bfloat16() on the module)")
        from dlc.torch.export import write_pytorch

        for line in write_pytorch(graph, output, weights=weights, seed=seed, opset=opset, batch=batch):
            click.echo(line)
        return
    if weights and seed is not None:
        raise DlcError("--seed picks fresh weights; it has no effect with --weights")
    weight_bytes = analyse(graph).totals.param_bytes
    # the arrays and the model's copy of them; with --dtype the converted copy and two sessions running both
    refuse_unless_fits((2 if dtype == "fp32" else 5) * weight_bytes, "export")
    with progress("export: weights", 4 if dtype == "fp32" else 6) as update:
        from dlc.onnx.export import check_export, save_model, summary_line, to_onnx

        net = weights_for(graph, weights, 0 if seed is None else seed)
        update(what="export: lowering to ONNX")
        model = to_onnx(net, opset=opset, batch=batch, data_file=os.path.basename(output) + ".data")
        update(what="export: checking")
        check_export(model, net)
        if dtype != "fp32":
            update(what=f"export: converting to {dtype}")
            converted, agreed = lower_precision(model, dtype, output)
            model = converted.model
        update(what="export: writing")
        data = save_model(model, output, {**net.state, **net.params})
    n_params, n_state = (sum(a.size for a in d.values()) for d in (net.params, net.state))
    click.echo(f"wrote {output}: {len(graph.nodes) - len(graph.inputs)} layers, {n_params:,} params + {n_state:,} non-trainable, "
               f"{net.weights}")
    click.echo(f"  {summary_line(model)}, batch {batch or 'N (dynamic)'}")
    click.echo("  checked: ONNX checker (full), shape inference agrees with dlc on every layer, parameter count"
               + (f"; input normalisation ({net.normalize.get('kind')}) stored" if net.normalize else ""))
    if dtype != "fp32":
        from dlc.onnx.agreement import UNIT_ROUNDOFF

        what = (f"weights, and computation but for {', '.join(converted.float32_ops)} (in float32: no "
                f"{converted.type_name} kernel in onnxruntime's CPU provider)") if converted.float32_ops \
            else "weights and computation"
        click.echo(f"  {converted.type_name}: {what}; input and output float32 through Casts")
        click.echo(f"  against the float32 model on {agreed.samples} random samples (onnxruntime, CPU): "
                   f"{agreed.line()} ({converted.type_name} rounds at {UNIT_ROUNDOFF[converted.type_name]:.1e})")
    if data:
        click.echo(f"  over protobuf's 2 GB limit: the weights are in {data} (keep it beside {output})")


def lower_precision(model, dtype: str, output: str):
    """The checked float32 model in float16 or bfloat16, checked, and how far its output is from the
    float32 model's on random samples."""
    from dlc.onnx import runtime as rt
    from dlc.onnx.agreement import SAMPLES, agreement
    from dlc.onnx.export import uses_external_data
    from dlc.onnx.model import token_vocabularies
    from dlc.onnx.precision import check_converted, to_precision

    if uses_external_data(model):
        raise DlcError(f"--dtype {dtype}: the float32 model is over protobuf's 2 GB limit, and dlc converts "
                       f"only models held in one file; export it as float32")
    converted = to_precision(model, dtype)
    check_converted(converted)
    sessions = [rt.create_session(m, "cpu") for m in (model, converted.model)]
    feeds = rt.random_feeds(sessions[0].inputs, rt.sample_shapes(sessions[0].inputs, {}), SAMPLES,
                            token_vocabularies(model))
    reference, lowered = (rt.run(s, feeds)[0] for s in sessions)
    return converted, agreement(reference, lowered)
