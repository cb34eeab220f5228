"""ONNX commands: export, infer, bench. numpy, onnx and onnxruntime are imported inside them."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click

from dlc.commands.arguments import load_graph, spec_input
from dlc.errors import DlcError

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


def is_onnx(model: str | None) -> bool:
    return model is not None and model.lower().endswith(".onnx")


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
        onnx_model = export.load_model(model)
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
                params, state = export.weights_of(onnx_model, graph)
        return Network(graph, onnx_model, params, state, export.normalize_of(onnx_model), f"{model}'s initializers")
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


def token_vocab(graph) -> int | None:
    """The smallest vocabulary among the embeddings that read the input's token ids."""
    if graph is None or graph.input.dtype != "int64":
        return None
    vocabs = [n.attrs["vocab"] for n in graph.nodes if n.kind == "embed" and graph.input.name in n.inputs]
    return min(vocabs) if vocabs else None


def read_array(path: str):
    """X from an .npy file, or from an .npz file's `x` (or its only array)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DlcError(f"no such file: {path}")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):  # .npy's magic string; .npz is a zip
        raise DlcError(f"{path} is not a NumPy .npy or .npz file")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DlcError(f"{path} cannot be read as a NumPy array ({e})")
    if not isinstance(data, np.lib.npyio.NpzFile):
        return data
    with data:
        if "x" in data.files:
            return data["x"]
        if len(data.files) == 1:
            return data[data.files[0]]
        raise DlcError(f"{path} holds {', '.join(data.files) or 'no arrays'}; name the input array `x`")


def write_array(path: str, y) -> None:
    """np.save, atomically."""
    import numpy as np

    from dlc.atomic import atomic_write

    with atomic_write(path) as f:
        np.save(f, y)


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
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write the model (.onnx, or .py).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "pytorch"]), default="onnx", show_default=True,
              help="pytorch: a standalone Python file, class Net(nn.Module), that loads dlc checkpoints.")
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint (.npz); else fresh weights from --seed.")
@click.option("--seed", type=int, default=None, help="Seed of the fresh weights (default 0).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 21).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fix the batch axis (default: dynamic N).")
def export(spec, expr, output, fmt, weights, seed, opset, batch):
    """Write SPEC as an ONNX model, checked: ONNX checker, shapes, parameter count; or as PyTorch source."""
    graph = load_graph(spec, expr)
    if fmt == "pytorch":
        from dlc.torch.export import write_pytorch

        for line in write_pytorch(graph, output, weights=weights, seed=seed, opset=opset, batch=batch):
            click.echo(line)
        return
    from dlc.onnx.export import DEFAULT_OPSET, check_export, save_model, summary_line, to_onnx

    if weights and seed is not None:
        raise DlcError("--seed picks fresh weights; it has no effect with --weights")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise DlcError(f"cannot write {output}: no folder {folder}")
    params, state, normalize, source = weights_for(graph, weights, 0 if seed is None else seed)
    model = to_onnx(graph, params, state, opset=DEFAULT_OPSET if opset is None else opset, batch=batch,
                    normalize=normalize)
    check_export(model, graph, params, state)
    save_model(model, output)
    n_params, n_state = (sum(a.size for a in d.values()) for d in (params, state))
    click.echo(f"wrote {output}: {len(graph.nodes) - 1} layers, {n_params:,} params + {n_state:,} non-trainable, "
               f"{source}")
    click.echo(f"  {summary_line(model)}, batch {batch or 'N (dynamic)'}")
    click.echo("  checked: ONNX checker (full), shape inference agrees with dlc on every layer, parameter count"
               + (f"; input normalisation ({normalize.get('kind')}) stored" if normalize else ""))


@click.command()
@model_input
@click.option("--input", "input_path", metavar="X.npy|X.npz", help="The input batch (.npz: array `x`).")
@click.option("--random", "random_n", type=click.IntRange(min=1), help="Run N random samples instead.")
@click.option("--weights", metavar="CKPT", help="A dlc checkpoint for a spec MODEL.")
@click.option("--engine", type=click.Choice(ENGINES), default="onnxruntime", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per sample.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--out", metavar="Y.npy", help="Save the raw output array.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
def infer(model, expr, input_path, random_n, weights, engine, top, as_json, out, device, seed):
    """Run MODEL (an .onnx file, or a spec with --weights) on a batch; show the top classes."""
    import numpy as np

    from dlc.onnx import runtime as rt

    if (input_path is None) == (random_n is None):
        raise DlcError("give the input: --input X.npy (or .npz) or --random N")
    if engine == "numpy" and device == "cuda":
        raise DlcError("--device cuda: the numpy engine runs on the CPU; use --engine onnxruntime")
    net = load_network(model, expr, weights, need_graph=engine == "numpy")
    notice = None
    if engine == "onnxruntime":
        session = rt.create_session(onnx_model_of(net), device)
        shape, dtype, notice, ran_on = session.input_shape, session.input_dtype, session.notice, session.provider
    else:
        shape, ran_on = ["N", *net.graph.input.out_shape], "numpy"
        dtype = np.int64 if net.graph.input.dtype == "int64" else np.float32
    if notice:
        click.echo(f"dlc: {notice}", err=True)
    vocab = token_vocab(net.graph)
    if random_n is not None:
        x = rt.random_input(tuple(shape[1:]), dtype, random_n, vocab, seed)
    else:
        x = rt.prepare_input(read_array(input_path), shape, dtype, what=input_path)
    if dtype is np.int64 and vocab:
        rt.check_tokens(x, vocab)
    elif dtype is not np.int64:
        from dlc.normalize import normalize

        x = normalize(x, net.normalize)  # the statistics dlc train stored, applied as it applies them
    if engine == "onnxruntime":
        y = rt.infer(session, x)
    else:
        from dlc.engine.run import predict

        y = predict(net.graph, net.params, net.state, x)
    if out:
        write_array(out, y)
    ranked = top_classes(y, top)
    if as_json:
        doc = {"schema": "dlc.infer/1", "engine": engine, "provider": ran_on, "notice": notice,
               "input_shape": list(x.shape), "output_shape": list(y.shape),
               "normalized": bool(net.normalize) and dtype is not np.int64, "out": out}
        if ranked is not None:
            doc["top"] = [[{"class": c, "p": p} for c, p in row] for row in ranked]
        else:
            doc["output"] = y.tolist()
        click.echo(json.dumps(doc))
        return
    click.echo(f"{engine} on {ran_on}, {net.weights}: input {tuple(x.shape)} -> output {tuple(y.shape)}"
               + (f", normalised ({net.normalize.get('kind')})" if net.normalize and dtype is not np.int64 else ""))
    shown = 10
    if ranked is not None:
        for i, row in enumerate(ranked[:shown]):
            click.echo(f"  sample {i}: " + "  ".join(f"{c} ({p:.3f})" for c, p in row))
    else:
        for i, row in enumerate(y[:shown]):
            flat = row.ravel()
            head = ", ".join(f"{v:.4g}" for v in flat[:8]) + (", ..." if flat.size > 8 else "")
            click.echo(f"  sample {i}: [{head}]")
    if len(y) > shown:
        click.echo(f"  ... {len(y) - shown} more samples (--json or --out for all)")
    if out:
        click.echo(f"  saved the output to {out}")


def parse_batches(ctx, param, value: str) -> list[int]:
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
@click.option("--batch", "batches", default="1,8,32", show_default=True, callback=parse_batches,
              help="Batch sizes, comma-separated.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def bench(model, expr, weights, batches, warmup, runs, device, as_json):
    """onnxruntime latency (p50/p90/p99) and throughput of MODEL per batch size, after warm-up."""
    from dlc.onnx import runtime as rt

    net = load_network(model, expr, weights, need_graph=False, fresh_seed=0)
    session = rt.create_session(onnx_model_of(net), device)
    if session.notice:
        click.echo(f"dlc: {session.notice}", err=True)
    results = [rt.bench(session, b, warmup, runs, token_vocab(net.graph)) for b in batches]
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
