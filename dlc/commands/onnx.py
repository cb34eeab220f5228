"""ONNX commands: export, infer, bench. numpy, onnx and onnxruntime are imported inside them."""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from math import prod
from pathlib import Path

import click

from dlc.commands.arguments import OUT_FLAGS, SEED, is_onnx, load_graph, output_file, parse_shapes, shape_option, spec_input
from dlc.errors import DlcError
from dlc.npz import check_arrays_file
from dlc.onnx import GELU_OPSET, MAX_OPSET, MIN_OPSET, ROTARY_OPSET

ENGINES = ("onnxruntime", "numpy")
DEVICE_HELP = "auto: CUDA where onnxruntime really gets it, else the CPU with a notice; cuda: CUDA or exit 2."


@dataclass
class Network:
    """What infer and bench run: a compiled spec with weights, an .onnx model, or both."""

    graph: object | None  # dlc.graph.Graph; None for an .onnx model dlc did not export
    model: object | None  # onnx.ModelProto; None until an onnxruntime session needs it
    params: dict | None
    state: dict | None
    normalize: dict | None  # a checkpoint's meta["normalize"]
    weights: str  # where the weights came from, for the report
    path: str | None = None  # an .onnx file: onnxruntime reads it itself, external data included


def model_input(fn):
    """MODEL argument: an .onnx file, or a spec (file, zoo name, `-`; or -e TEXT) with weights."""
    fn = click.option("-e", "--expr", "expr", metavar="TEXT", help="Spec text given inline.")(fn)
    return click.argument("model", required=False, metavar="MODEL")(fn)


def load_network(model: str | None, expr: str | None, weights: str | None, *, need_graph: bool,
                 fresh_seed: int | None = None) -> Network:
    """An .onnx file (its weights are its initializers; its spec, if dlc wrote it, in the metadata), or a
    spec with --weights (or fresh weights from fresh_seed where the caller allows them)."""
    from dlc.onnx import export

    if is_onnx(model) and expr is None:
        if weights:
            raise DlcError(f"{model} carries its own weights; --weights goes with a spec")
        from dlc.onnx.model import check_weights, read_model

        # the numpy engine needs the weights' values; onnxruntime reads external data itself, by path
        onnx_model = read_model(model, weights=need_graph)
        check_weights(onnx_model, model)
        graph = params = state = None
        if need_graph or any(p.key == export.META_SPEC for p in onnx_model.metadata_props):
            from dlc.compile import compile_spec

            file, text = export.spec_of(onnx_model, model)
            try:
                graph = compile_spec(text, file=file)
            except DlcError:
                if need_graph:
                    raise
                # onnxruntime needs only the model; the spec served to check token ids
            if need_graph:
                params, state = export.weights_of(onnx_model, graph, model)
        return Network(graph, onnx_model, params, state, export.normalize_of(onnx_model, model),
                       f"{model}'s initializers", model)
    graph = load_graph(model, expr)
    return Network(graph, None, *weights_for(graph, weights, fresh_seed))


def weights_for(graph, weights: str | None, fresh_seed: int | None) -> tuple[dict, dict, dict | None, str]:
    """(params, state, normalize, where from): a checkpoint checked against the graph, or fresh weights."""
    if weights:
        from dlc.engine.params import load_checkpoint

        params, state, meta = load_checkpoint(weights, graph)
        return params, state, meta.get("normalize"), weights
    if fresh_seed is None:
        raise DlcError("a spec needs its trained weights: --weights CKPT (or give an exported .onnx file)")
    from dlc.engine.params import init_params

    params, state = init_params(graph, init=graph.train.get("init", "he"), seed=fresh_seed,
                                std=graph.train.get("init_std", 0.01))
    return params, state, None, f"fresh {graph.train.get('init', 'he')} weights (seed {fresh_seed})"


def onnx_model_of(net: Network):
    if net.model is None:
        from dlc.onnx.export import to_onnx

        net.model = to_onnx(net.graph, net.params, net.state, normalize=net.normalize)
    return net.model


def session_of(net: Network, device: str):
    """An onnxruntime session: on the file itself for an .onnx model (a model over 2 GB cannot travel
    as bytes, and its external data is found beside the file), else on dlc's export of the spec."""
    from dlc.onnx import runtime as rt

    if net.path:
        from dlc.onnx.model import check_ranked

        check_ranked(net.model)
    return rt.create_session(net.path or onnx_model_of(net), device)


def vocabularies(net: Network) -> dict[str, int]:
    """Input name -> the vocabulary its token ids must stay below, where the spec or the graph says it."""
    vocab = {}
    if net.model is not None:
        from dlc.onnx.model import token_vocabularies

        vocab.update(token_vocabularies(net.model))
    if net.graph is not None:
        from dlc.layers.dense import token_vocab

        spec_vocab = token_vocab(net.graph)
        if spec_vocab:
            vocab[net.graph.input.name] = spec_vocab
    return vocab


def read_feeds(ports: list, input_path: str | None, random_n: int | None, seed: int, vocab: dict[str, int],
               shapes: tuple[str, ...]) -> dict:
    """The arrays to feed each input: --random N drawn for each (token ids below their vocabulary), or
    --input: one array for one input, an .npz with one array per input name for several."""
    from dlc.onnx import runtime as rt

    if random_n is not None:
        return rt.random_feeds(ports, rt.sample_shapes(ports, parse_shapes(shapes)), random_n, vocab, seed)
    if shapes:
        raise DlcError("--shape goes with --random: the arrays of --input carry their shapes")
    if len(ports) == 1:
        p = ports[0]
        return {p.name: rt.prepare_input(read_array(input_path), p.shape, p.dtype, what=input_path)}
    arrays = read_named_arrays(input_path, [p.name for p in ports])
    return {p.name: rt.prepare_input(arrays[p.name], p.shape, p.dtype, what=f"{input_path}'s {p.name}")
            for p in ports}


def read_named_arrays(path: str, names: list[str]) -> dict:
    """One array per input name from an .npz, for a model with several inputs."""
    import numpy as np

    listed = ", ".join(names)
    if not path.lower().endswith(".npz"):
        raise DlcError(f"the model has {len(names)} inputs ({listed}): give them as an .npz holding one array "
                       f"per input name")
    existing_file(path)
    try:
        check_arrays_file(path)
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise DlcError(f"{path} holds {', '.join(data.files) or 'no arrays'}; the model reads {listed} "
                               f"(no array named {missing[0]})")
            return {n: data[n] for n in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DlcError(f"{path} cannot be read as a NumPy .npz file ({e})")


def write_outputs(path: str, names: list[str], ys: list) -> None:
    """--out: the only output as .npy, or every output by name in an .npz."""
    if len(ys) == 1:
        write_array(path, ys[0])
        return
    if not path.lower().endswith(".npz"):
        raise DlcError(f"the model has {len(ys)} outputs ({', '.join(names)}): give --out Y.npz to save them all")
    import numpy as np

    from dlc.atomic import atomic_write

    with atomic_write(path) as f:
        np.savez(f, **dict(zip(names, ys)))


def existing_file(path: str) -> Path:
    if not Path(path).is_file():
        raise DlcError(f"no such file: {path}")
    return Path(path)


def read_array(path: str):
    """X from an .npy file, or from an .npz file's `x` (or its only array)."""
    import numpy as np

    p = existing_file(path)
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):  # .npy's magic string; .npz is a zip
        raise DlcError(f"{path} is not a NumPy .npy or .npz file")
    try:
        check_arrays_file(path)
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DlcError(f"{path} cannot be read as a NumPy array ({e})")
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "x" in data.files:
                data = data["x"]
            elif len(data.files) == 1:
                data = data[data.files[0]]
            else:
                raise DlcError(f"{path} holds {', '.join(data.files) or 'no arrays'}; name the input array `x`")
    if data.dtype.kind not in "biuf":  # a cast to float32 would drop an imaginary part without a word
        raise DlcError(f"{path} holds {data.dtype} values; a network reads real numbers or token ids")
    return data


def write_array(path: str, y) -> None:
    """np.save (or np.savez with the array as `y` for a .npz name), atomically."""
    import numpy as np

    from dlc.atomic import atomic_write

    with atomic_write(path) as f:
        if path.lower().endswith(".npz"):
            np.savez(f, y=y)
        else:
            np.save(f, y)


def json_values(y) -> list:
    """An array as JSON lists, with null where a value is NaN or infinite (JSON has no NaN)."""
    import numpy as np

    if y.dtype.kind != "f":
        return y.tolist()
    cells = y.astype(object)
    cells[~np.isfinite(y)] = None
    return cells.tolist()


def warn_not_finite(y) -> None:
    import numpy as np

    bad = int(y.size - np.count_nonzero(np.isfinite(y))) if y.dtype.kind == "f" else 0
    if bad:
        click.echo(f"dlc: warning: {bad:,} of {y.size:,} output values are not finite (NaN or infinite)",
                   err=True)


def spec_file(spec: str | None, expr: str | None) -> str | None:
    """The file a SPEC argument names, if it names one (not a zoo name, stdin or -e)."""
    return spec if expr is None and spec not in (None, "-") and Path(spec).is_file() else None


def top_classes(y, k: int) -> list[list[tuple[int, float]]] | None:
    """Top-k (class, probability) per sample for a classifier's (N, classes) output; softmax first where
    the rows are not already distributions. None for outputs that are not class scores."""
    import numpy as np

    if y.ndim != 2 or y.shape[1] < 2:
        return None
    p = y.astype(np.float64)
    if not (np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3)):
        e = np.exp(p - p.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[i, c])) for c in row] for i, row in enumerate(order)]


@click.command()
@spec_input
@click.option(*OUT_FLAGS, "output", required=True, metavar="FILE", help="Where to write the model (.onnx, or .py).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "pytorch"]), default="onnx", show_default=True,
              help="pytorch: a standalone Python file, class Net(nn.Module), that loads dlc checkpoints.")
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint (.npz); else fresh weights from --seed.")
@click.option("--seed", type=SEED, default=None, help="Seed of the fresh weights (default 0).")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: the lowest in which every layer has its own "
                   f"operator: {MIN_OPSET}, 17 with layernorm, {GELU_OPSET} with gelu, {ROTARY_OPSET} with "
                   f"attention's rope).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fix the batch axis (default: dynamic N).")
def export(spec, expr, output, fmt, weights, seed, opset, batch):
    """Write SPEC as an ONNX model, checked: ONNX checker, shapes, parameter count; or as PyTorch source."""
    from dlc.analysis import analyse
    from dlc.machine import refuse_unless_fits
    from dlc.progress import progress

    output_file(output, "-o", (".py",) if fmt == "pytorch" else (".onnx",), [spec_file(spec, expr), weights])
    graph = load_graph(spec, expr)
    if fmt == "pytorch":
        from dlc.torch.export import write_pytorch

        for line in write_pytorch(graph, output, weights=weights, seed=seed, opset=opset, batch=batch):
            click.echo(line)
        return
    if weights and seed is not None:
        raise DlcError("--seed picks fresh weights; it has no effect with --weights")
    weight_bytes = analyse(graph).totals.param_bytes
    refuse_unless_fits(2 * weight_bytes, "export")  # the arrays, and the model's copy of them
    with progress("export: weights", 4) as update:
        from dlc.onnx.export import check_export, save_model, summary_line, to_onnx

        params, state, normalize, source = weights_for(graph, weights, 0 if seed is None else seed)
        update(what="export: lowering to ONNX")
        model = to_onnx(graph, params, state, opset=opset, batch=batch,
                        data_file=os.path.basename(output) + ".data", normalize=normalize)
        update(what="export: checking")
        check_export(model, graph, params, state)
        update(what="export: writing")
        data = save_model(model, output, {**state, **params})
    n_params, n_state = (sum(a.size for a in d.values()) for d in (params, state))
    click.echo(f"wrote {output}: {len(graph.nodes) - 1} layers, {n_params:,} params + {n_state:,} non-trainable, "
               f"{source}")
    click.echo(f"  {summary_line(model)}, batch {batch or 'N (dynamic)'}")
    click.echo("  checked: ONNX checker (full), shape inference agrees with dlc on every layer, parameter count"
               + (f"; input normalisation ({normalize.get('kind')}) stored" if normalize else ""))
    if data:
        click.echo(f"  over protobuf's 2 GB limit: the weights are in {data} (keep it beside {output})")


@click.command()
@model_input
@click.option("--input", "input_path", metavar="X.npy|X.npz", help="The input batch (.npz: array `x`).")
@click.option("--random", "random_n", type=click.IntRange(min=1), help="Run N random samples instead.")
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint for a spec MODEL.")
@click.option("--engine", type=click.Choice(ENGINES), default="onnxruntime", show_default=True,
              help="onnxruntime: the ONNX model on --device; numpy: dlc's own engine, on the CPU (a spec with "
                   "--weights, or an .onnx file dlc exported).")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per sample.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option(*OUT_FLAGS, "out", metavar="Y.npy|Y.npz", help="Save the raw output array (.npz: array `y`, or one per output name).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of --random.")
@shape_option
def infer(model, expr, input_path, random_n, weights, engine, top, as_json, out, device, seed, shapes):
    """Run MODEL (an .onnx file, or a spec with --weights) on a batch; show the top classes.

    A model with several inputs reads an .npz with one array per input name (--input), or draws each
    (--random); every output is shown."""
    import numpy as np

    from dlc.onnx import runtime as rt

    if (input_path is None) == (random_n is None):
        raise DlcError("give the input: --input X.npy (or .npz) or --random N")
    if engine == "numpy" and device == "cuda":
        raise DlcError("--device cuda: the numpy engine runs on the CPU; use --engine onnxruntime")
    if out:
        output_file(out, "--out", (".npy", ".npz"), [input_path, weights, model])
    if input_path is not None:
        existing_file(input_path)  # a mistyped name is the first thing said, before any device is tried
    net = load_network(model, expr, weights, need_graph=engine == "numpy")
    notice = None
    if engine == "onnxruntime":
        session = session_of(net, device)
        ports, names, notice, ran_on = session.inputs, session.outputs, session.notice, session.provider
    else:
        dtype = np.int64 if net.graph.input.dtype == "int64" else np.float32
        ports = [rt.Port(net.graph.input.name, ["N", *net.graph.input.out_shape], dtype)]
        names, ran_on = [net.graph.output.name], "the CPU"
    if notice:
        click.echo(f"dlc: {notice}", err=True)
    vocab = vocabularies(net)
    if random_n is not None:
        refuse_to_overrun(net.graph, ports, random_n, f"infer --random {random_n}",
                          infer_extra_bytes(net.graph, ports, True, as_json, top))
    feeds = read_feeds(ports, input_path, random_n, seed, vocab, shapes)
    if random_n is None:
        n = len(next(iter(feeds.values())))
        refuse_to_overrun(net.graph, ports, n, f"infer on {n:,} samples",
                          infer_extra_bytes(net.graph, ports, False, as_json, top))
    for p in ports:
        if p.name in vocab:
            rt.check_tokens(feeds[p.name], vocab[p.name])
    normalized = bool(net.normalize) and len(ports) == 1 and np.dtype(ports[0].dtype).kind == "f"
    if normalized:
        from dlc.normalize import normalize

        # the statistics dlc train stored, applied as it applies them
        feeds[ports[0].name] = normalize(feeds[ports[0].name], net.normalize)
    if engine == "onnxruntime":
        ys = rt.run(session, feeds)
    else:
        from dlc.engine.run import predict

        ys = [predict(net.graph, net.params, net.state, feeds[ports[0].name])]
    if out:
        write_outputs(out, names, ys)
    for y in ys:
        warn_not_finite(y)
    show_outputs(engine, ran_on, notice, net, feeds, names, ys, top, normalized, out, as_json)


def show_outputs(engine, ran_on, notice, net, feeds, names, ys, top, normalized, out, as_json) -> None:
    """infer's report: the top classes of a classifier's output, the first values of any other; every
    output of a model with several."""
    import numpy as np

    ranked = [top_classes(y, top) for y in ys]
    x, y = next(iter(feeds.values())), ys[0]
    if as_json:
        doc = {"schema": "dlc.infer/1", "engine": engine, "provider": ran_on, "notice": notice,
               "input_shape": list(x.shape), "output_shape": list(y.shape), "normalized": normalized, "out": out}
        results = [{"name": n, "shape": list(o.shape),
                    **({"top": [[{"class": c, "p": p if math.isfinite(p) else None} for c, p in row] for row in r]}
                       if r is not None else {"output": json_values(o)})} for n, o, r in zip(names, ys, ranked)]
        doc.update({k: v for k, v in results[0].items() if k in ("top", "output")})
        if len(ys) > 1 or len(feeds) > 1:
            doc["inputs"] = {n: list(a.shape) for n, a in feeds.items()}
            doc["outputs"] = results
        click.echo(json.dumps(doc, allow_nan=False))
        return
    shapes = lambda arrays: ", ".join(str(tuple(a.shape)) for a in arrays)  # noqa: E731
    click.echo(f"{engine} on {ran_on}, {net.weights}: input {shapes(feeds.values())} -> output {shapes(ys)}"
               + (f", normalised ({net.normalize.get('kind')})" if normalized else ""))
    shown = 10
    for name, y, rows in zip(names, ys, ranked):
        indent = "  "
        if len(ys) > 1:
            click.echo(f"  output {name} {tuple(y.shape)} {y.dtype}:")
            indent = "    "
        if rows is not None:
            for i, row in enumerate(rows[:shown]):
                click.echo(f"{indent}sample {i}: " + "  ".join(f"{c} ({p:.3f})" for c, p in row))
        else:
            for i, row in enumerate(y[:shown] if y.ndim else [y]):
                flat = np.ravel(row)
                head = ", ".join(f"{v:.4g}" for v in flat[:8]) + (", ..." if flat.size > 8 else "")
                click.echo(f"{indent}sample {i}: [{head}]")
        if y.ndim and len(y) > shown:
            click.echo(f"{indent}... {len(y) - shown} more samples (--json or --out for all)")
    if out:
        click.echo(f"  saved the output{'s' if len(ys) > 1 else ''} to {out}")


def refuse_to_overrun(graph, ports: list, batch: int, what: str, per_sample: int = 0) -> None:
    """Refuse a batch whose forward pass (and `per_sample` bytes more for each sample) cannot fit in
    memory (dlc.memory), before allocating it."""
    from dlc.machine import refuse_unless_fits
    from dlc.memory import forward_bytes, input_bytes

    if graph is not None:
        refuse_unless_fits(forward_bytes(graph, batch) + batch * per_sample, what)
    elif all(isinstance(d, int) for p in ports for d in p.shape[1:]):
        refuse_unless_fits(sum(input_bytes(tuple(p.shape[1:]), batch) for p in ports) + batch * per_sample, what)


def drawn_bytes(ports: list) -> int:
    """Per sample, the float64 batch --random draws before casting it."""
    return sum(8 * prod(d for d in p.shape[1:] if isinstance(d, int)) for p in ports)


def infer_extra_bytes(graph, ports: list, drawn: bool, as_json: bool, top: int) -> int:
    """What infer holds per sample beside the forward pass: the float64 draw of --random, top_classes'
    float64 copies and sort of the output, and with --json its Python objects (a float in a list takes
    about 32 bytes, a top-k entry about 200)."""
    n_out = prod(graph.output.out_shape) if graph is not None else 0
    return drawn_bytes(ports) * drawn + 32 * n_out + (32 * n_out + 200 * top if as_json else 0)


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

    net = load_network(model, expr, weights, need_graph=False, fresh_seed=0)
    session = session_of(net, device)
    if session.notice:
        click.echo(f"dlc: {session.notice}", err=True)
    sample = rt.sample_shapes(session.inputs, parse_shapes(shapes))
    if batches is None:
        fixed = rt.fixed_batch(session)
        batches = [fixed] if fixed else [1, 8, 32]
    refuse_to_overrun(net.graph, session.inputs, max(batches), f"bench --batch {max(batches)}",
                      drawn_bytes(session.inputs))
    results = []
    with progress("bench", len(batches)) as update:
        for i, b in enumerate(batches):
            update(i, what=f"bench: batch {b}")
            results.append(rt.bench(session, b, warmup, runs, vocabularies(net), sample))
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
