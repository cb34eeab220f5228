"""`dlc infer`: run a model on a batch and show its top classes (or its first values)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from math import prod

import click

from dlc.commands.arguments import OUT_FLAGS, SEED, output_file, shape_option
from dlc.commands.arrays import existing_file, json_values, read_feeds, write_outputs
from dlc.commands.model import (DEVICE_HELP, drawn_bytes, load_model, model_input, refuse_to_overrun, session_of,
                                vocabularies)
from dlc.errors import DlcError

ENGINES = ("onnxruntime", "numpy")


def warn_not_finite(y) -> None:
    import numpy as np

    bad = int(y.size - np.count_nonzero(np.isfinite(y))) if y.dtype.kind == "f" else 0
    if bad:
        click.echo(f"dlc: warning: {bad:,} of {y.size:,} output values are not finite (NaN or infinite)",
                   err=True)


def top_classes(y, k: int) -> list[list[tuple[int, float]]] | None:
    """Top-k (class, probability) per sample for a classifier's (N, classes) output; softmax first where
    the rows are not already distributions. None for outputs that are not class scores."""
    import numpy as np

    if y.ndim != 2 or y.shape[1] < 2:
        return None
    p = y.astype(np.float64)
    if not (np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3)):
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite outputs: warn_not_finite says so
            e = np.exp(p - p.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[i, c])) for c in row] for i, row in enumerate(order)]


@click.command()
@model_input
@click.option("--input", "input_path", metavar="X.npy|X.npz|IMAGE|DIR", help="The input batch (.npz: array `x`), "
              "or a PNG/JPEG image or a folder of them (scaled and centre-cropped to the input's size).")
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
    if input_path is not None and not Path(input_path).is_dir():
        existing_file(input_path)  # a mistyped name is the first thing said, before any device is tried
    loaded = load_model(model, expr, weights, need_weights=engine == "numpy")
    notice = None
    if engine == "onnxruntime":
        session = session_of(loaded, device)
        ports, names, notice, ran_on = session.inputs, session.outputs, session.notice, session.provider
    else:
        ports = [rt.Port(i.name, [*([] if i.attrs.get("shared") else ["N"]), *i.out_shape],
                         np.int64 if i.dtype == "int64" else np.float32, not i.attrs.get("shared"))
                 for i in loaded.graph.inputs]
        names, ran_on = loaded.graph.output_names, "the CPU"
    if notice:
        click.echo(f"dlc: {notice}", err=True)
    vocab = vocabularies(loaded)
    if random_n is not None:
        refuse_to_overrun(loaded.graph, ports, random_n, f"infer --random {random_n}",
                          infer_extra_bytes(loaded.graph, ports, True, as_json, top))
    feeds = read_feeds(ports, input_path, random_n, seed, vocab, shapes)
    if random_n is None:
        n = len(next(feeds[p.name] for p in ports if p.batched))
        refuse_to_overrun(loaded.graph, ports, n, f"infer on {n:,} samples",
                          infer_extra_bytes(loaded.graph, ports, False, as_json, top))
    for p in ports:
        if p.name in vocab:
            rt.check_tokens(feeds[p.name], vocab[p.name])
    normalized = bool(loaded.normalize) and len(ports) == 1 and np.dtype(ports[0].dtype).kind == "f"
    if normalized:
        from dlc.normalize import normalize

        # the statistics dlc train stored, applied as it applies them
        feeds[ports[0].name] = normalize(feeds[ports[0].name], loaded.normalize)
    if engine == "onnxruntime":
        ys = rt.run(session, feeds)
    else:
        from dlc.engine.run import predict

        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # warn_not_finite says it once
            ys = predict(loaded.net, feeds if len(ports) > 1 else feeds[ports[0].name])
        ys = [ys[n] for n in names] if isinstance(ys, dict) else [ys]
    if out:
        write_outputs(out, names, ys)
    for y in ys:
        warn_not_finite(y)
    files = None
    if input_path is not None:
        from dlc.train.images import image_paths, is_images

        files = image_paths(input_path) if is_images(input_path) else None
    show_outputs(engine, ran_on, notice, loaded, feeds, names, ys, top, normalized, out, as_json, files)


def show_outputs(engine, ran_on, notice, loaded, feeds, names, ys, top, normalized, out, as_json,
                 files: list[str] | None = None) -> None:
    """infer's report: the top classes of a classifier's output, the first values of any other; every
    output of a model with several. `files`: the image files the samples were read from, which name them."""
    import numpy as np

    ranked = [top_classes(y, top) for y in ys]
    x, y = next(iter(feeds.values())), ys[0]
    if as_json:
        doc = {"schema": "dlc.infer/1", "engine": engine, "provider": ran_on, "notice": notice,
               "input_shape": list(x.shape), "output_shape": list(y.shape), "normalized": normalized, "out": out,
               **({"files": files} if files else {})}
        results = [{"name": n, "shape": list(o.shape),
                    **({"top": [[{"class": c, **({"name": loaded.class_names[c]} if loaded.class_names else {}),
                                  "p": p if math.isfinite(p) else None} for c, p in row] for row in r]}
                       if r is not None else {"output": json_values(o)})} for n, o, r in zip(names, ys, ranked)]
        doc.update({k: v for k, v in results[0].items() if k in ("top", "output")})
        if len(ys) > 1 or len(feeds) > 1:
            doc["inputs"] = {n: list(a.shape) for n, a in feeds.items()}
            doc["outputs"] = results
        click.echo(json.dumps(doc, allow_nan=False))
        return
    shapes = lambda arrays: ", ".join(str(tuple(a.shape)) for a in arrays)  # noqa: E731
    click.echo(f"{engine} on {ran_on}, {loaded.weights}: input {shapes(feeds.values())} -> output {shapes(ys)}"
               + (f", normalised ({loaded.normalize.get('kind')})" if normalized else ""))
    shown = 10
    for name, y, rows in zip(names, ys, ranked):
        indent = "  "
        if len(ys) > 1:
            click.echo(f"  output {name} {tuple(y.shape)} {y.dtype}:")
            indent = "    "
        if rows is not None:
            named = loaded.class_names if loaded.class_names and len(loaded.class_names) == y.shape[1] else None
            for i, row in enumerate(rows[:shown]):
                click.echo(f"{indent}{files[i] if files else f'sample {i}'}: " + "  ".join(
                    f"{named[c] if named else c} ({p:.3f})" for c, p in row))
        else:
            for i, row in enumerate(y[:shown] if y.ndim else [y]):
                flat = np.ravel(row)
                head = ", ".join(f"{v:.4g}" for v in flat[:8]) + (", ..." if flat.size > 8 else "")
                click.echo(f"{indent}sample {i}: [{head}]")
        if y.ndim and len(y) > shown:
            click.echo(f"{indent}... {len(y) - shown} more samples (--json or --out for all)")
    if out:
        click.echo(f"  saved the output{'s' if len(ys) > 1 else ''} to {out}")


def infer_extra_bytes(graph, ports: list, drawn: bool, as_json: bool, top: int) -> int:
    """What infer holds per sample beside the forward pass: the float64 draw of --random, top_classes'
    float64 copies and sort of the output, and with --json its Python objects (a float in a list takes
    about 32 bytes, a top-k entry about 200)."""
    n_out = sum(prod(o.out_shape) for o in graph.outputs) if graph is not None else 0  # every output
    return drawn_bytes(ports) * drawn + 32 * n_out + (32 * n_out + 200 * top if as_json else 0)
