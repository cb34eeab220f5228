"""`dlc quantize`: an ONNX model in int8 by onnxruntime's quantizer, with its size, speed and accuracy
beside the float model's."""

from __future__ import annotations

import json
import os

import click

from dlc.commands.arguments import OUT_FLAGS, is_onnx, output_file, shape_option
from dlc.errors import DlcError

SPEED_WARMUP = 5
KEPT_WHY = "their tensors reach infinity on the calibration data (a mask's -inf), which int8 cannot hold"
# the operators onnxruntime's quantizer writes, dynamic (the first three), QDQ (the next two) or QOperator
QUANTIZED_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear",
                 "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul"}


@click.command()
@click.argument("model", metavar="MODEL.onnx")
@click.option("--int8", "int8", is_flag=True, help="Quantize to int8 (the precision dlc quantize writes; "
              "dlc export --dtype fp16|bf16 writes half precision).")
@click.option("--calibrate", metavar="DATA.npy|DATA.npz",
              help="Static quantization, activation ranges measured on these inputs (read as dlc infer "
                   "--input reads them); without it dynamic quantization.")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default=None,
              help="Static quantization's form: qdq (default; QuantizeLinear/DequantizeLinear around float "
                   "operators, fused by onnxruntime) or qoperator (QLinearConv, QLinearMatMul).")
@click.option(*OUT_FLAGS, "output", required=True, metavar="FILE.onnx", help="Where to write the int8 model.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size of the speed comparison.")
@click.option("--runs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed runs of each model, taken in turn; the median is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@shape_option
def quantize(model, int8, calibrate, fmt, output, batch, runs, as_json, shapes):
    """Write MODEL.onnx in int8 with onnxruntime's quantizer (dynamic, or static with --calibrate), and
    report size, speed (onnxruntime on the CPU) and accuracy beside the float model."""
    from dlc.commands.arrays import existing_file

    if not int8:
        raise DlcError("say the precision: --int8 (dlc export --dtype fp16|bf16 writes half precision)")
    if not is_onnx(model):
        raise DlcError(f"{model}: dlc quantize reads an .onnx model (dlc export SPEC -o MODEL.onnx writes one)")
    if fmt is not None and calibrate is None:
        raise DlcError(f"--format {fmt} goes with --calibrate: dynamic quantization has one form")
    output_file(output, "-o", (".onnx",), [model, calibrate])
    existing_file(model)
    if calibrate is not None:
        existing_file(calibrate)
    import numpy as np

    from dlc.atomic import atomic_write
    from dlc.commands.arrays import read_feeds
    from dlc.onnx import runtime as rt
    from dlc.onnx.agreement import SAMPLES, agreement
    from dlc.onnx.model import check_weights, read_model, token_vocabularies
    from dlc.onnx.quantize import quantize_int8

    source = read_model(model)
    check_weights(source, model)
    quantizable(source, model)
    float_session = rt.create_session(model, "cpu", spin=False)
    vocab = token_vocabularies(source)
    fixed = rt.fixed_batch(float_session)
    # random samples: a batch the model runs (one it was exported for)
    feeds = read_feeds(float_session.inputs, calibrate, None if calibrate else fixed or SAMPLES, 0, vocab, shapes)
    n = len(next(iter(feeds.values())))
    if n == 0:
        raise DlcError(f"{calibrate} holds no samples to calibrate on")
    for p in float_session.inputs:
        if p.name in vocab:
            rt.check_tokens(feeds[p.name], vocab[p.name])
    quantized, kept = quantize_int8(model, feeds if calibrate else None, fmt or "qdq", fixed)
    # the spec, its input statistics and the rest of what dlc stored travel with the weights
    from onnx import helper

    helper.set_model_props(quantized, {**{p.key: p.value for p in source.metadata_props},
                                       **{p.key: p.value for p in quantized.metadata_props}})
    blob = quantized.SerializeToString()
    int8_session = rt.create_session(blob, "cpu", spin=False)
    sessions = (float_session, int8_session)
    outputs = [np.concatenate([rt.run(s, part)[0] for part in chunks(feeds, fixed)]) for s in sessions]
    agreed = agreement(*outputs)
    speed_batch = fixed or batch
    # the speed is measured on samples shaped as the accuracy's (a free dimension: --shape or the data's)
    speed_feeds = rt.random_feeds(float_session.inputs, {k: v.shape[1:] for k, v in feeds.items()}, speed_batch,
                                  vocab)
    timed = rt.alternating_latency(list(sessions), speed_feeds, speed_batch, SPEED_WARMUP, runs)
    with atomic_write(output) as f:
        f.write(blob)
    before, after = model_bytes(model, source), len(blob)
    mode = f"static ({(fmt or 'qdq').upper() if fmt != 'qoperator' else 'QOperator'})" if calibrate else "dynamic"
    data = f"the {n:,} samples of {calibrate}" if calibrate else f"{n} random samples"
    if as_json:
        click.echo(json.dumps({
            "schema": "dlc.quantize/1", "input": model, "output": output, "precision": "int8",
            "mode": "static" if calibrate else "dynamic", "format": (fmt or "qdq") if calibrate else None,
            "calibration": {"file": calibrate, "samples": n} if calibrate else None,
            "float_nodes": {"names": kept, "why": KEPT_WHY} if kept else None,
            "size": {"float_bytes": before, "int8_bytes": after},
            "speed": {"provider": int8_session.provider, "batch": speed_batch, "runs": runs,
                      "float_p50_ms": timed[0].p50 * 1e3, "int8_p50_ms": timed[1].p50 * 1e3},
            "accuracy": {"data": "calibration" if calibrate else "random", **agreed.as_json()}}))
        return
    click.echo(f"wrote {output}: int8, {mode}" + (f", calibrated on {data}" if calibrate else ""))
    if kept:
        click.echo(f"  kept in float: {len(kept)} node{'s' if len(kept) > 1 else ''} ({', '.join(kept)}), {KEPT_WHY}")
    click.echo(f"  size: {before:,} -> {after:,} bytes ({after / before:.2f}x)")
    click.echo(f"  speed (onnxruntime {int8_session.provider}, batch {speed_batch}, median of {runs} runs of each "
               f"in turn): float {timed[0].p50 * 1e3:.3f} ms, int8 {timed[1].p50 * 1e3:.3f} ms "
               f"({timed[0].p50 / timed[1].p50:.2f}x the float model's speed)")
    click.echo(f"  accuracy on {data}, beside the float model: {agreed.line()}")


def quantizable(model, path: str) -> None:
    """Refuse a model without float32 weights, or one quantized already: the quantizer reads float32 (a
    float16 model is quantized from its float32 export), and an int8 model's float32 scales and biases
    are no weights to quantize again."""
    from onnx import TensorProto

    from dlc.onnx.model import dtype_name

    done = sorted({n.op_type for n in model.graph.node} & QUANTIZED_OPS)
    if done:
        raise DlcError(f"{path} is quantized already (it has {', '.join(done)}); quantize the float model it "
                       f"came from")
    types = {t.data_type for t in model.graph.initializer}
    if TensorProto.FLOAT not in types:
        held = ", ".join(sorted(dtype_name(t) for t in types)) or "no initializers"
        raise DlcError(f"{path} has no float32 weights to quantize ({held}); quantize the float32 model")


def chunks(feeds: dict, fixed: int | None) -> list[dict]:
    from dlc.onnx.quantize import CALIBRATION_BATCH, batches

    return batches(feeds, fixed or CALIBRATION_BATCH)


def model_bytes(path: str, model) -> int:
    """The file's size, with its external data files (a model over 2 GB keeps its weights beside it)."""
    from pathlib import Path

    from dlc.onnx.model import is_external

    from onnx.external_data_helper import ExternalDataInfo

    files = {ExternalDataInfo(t).location for t in model.graph.initializer if is_external(t)}
    folder = Path(path).resolve().parent
    return os.path.getsize(path) + sum(os.path.getsize(folder / f) for f in files if (folder / f).is_file())
