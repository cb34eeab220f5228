"""`dlc train SPEC`: train a spec on the NumPy engine, with resumable runs.

The command wires the pieces together: settings (train_settings), the run directory to resume
(train_resume), the data (dlc.train.sources), the run itself (dlc.train.loop), progress
(train_progress) and the closing report (train_summary). numpy and the engine are imported inside
the command, so the other commands start fast.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dlc import choices
from dlc.commands.arguments import load_graph, spec_input
from dlc.commands.train_progress import Display
from dlc.commands.train_resume import load_resume
from dlc.commands.train_settings import (default_data, fresh_out, output_steps, output_width, resolve_config,
                                         train_flags)
from dlc.commands.train_summary import aggregate, print_summary, run_summary
from dlc.errors import DlcError

if TYPE_CHECKING:  # numpy comes with them, so the command imports them only when it runs
    from dlc.train.config import TrainConfig
    from dlc.train.sources import DataSource


@click.command("train")
@spec_input
@train_flags
@click.option("--data", metavar="NAME|PATH", help="Training data: .npz, .csv, .pkl[.gz], an IDX directory or file, "
              "a .txt file (a character-level language model), or a built-in set (xor, spirals, blobs, "
              "glyphs; reverse, sort, copy for token sequences). Default: xor for 2 inputs, glyphs for "
              "images/784-vectors with 10 outputs.")
@click.option("--reshape", is_flag=True, help="Fit images of another size: centre-pad/crop, repeat one channel.")
@click.option("--normalize", type=click.Choice(choices.NORMALIZE_KINDS), default="none",
              show_default=True, help="Input normalisation, computed on the training split.")
@click.option("--val", type=float, default=None, metavar="FRACTION",
              help="Hold out this fraction of train for validation when the data has no validation split.")
@click.option("--balanced", is_flag=True, help="Class-balanced mini-batches.")
@click.option("--n-train", type=click.IntRange(min=1), help="Built-in sets: training samples.")
@click.option("--n-val", type=click.IntRange(min=0), help="Built-in sets: validation samples.")
@click.option("--n-test", type=click.IntRange(min=0), help="Built-in sets: test samples.")
@click.option("--flip", is_flag=True, help="Augment: random left-right flips.")
@click.option("--shift", type=click.IntRange(min=0), default=0, help="Augment: random shifts of up to N pixels.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.0, help="Augment: Gaussian noise of this sigma.")
@click.option("--mixup", type=click.FloatRange(min=0), default=0.0, help="Augment: mixup with Beta(alpha, alpha).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/<spec>-<time>).")
@click.option("--resume", type=click.Path(path_type=Path), metavar="DIR", help="Continue the run in DIR exactly.")
@click.option("--save-every", type=click.IntRange(min=1), metavar="STEPS",
              help="Checkpoint every N steps within an epoch (default: every 60 seconds).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, help="K runs with seeds seed..seed+K-1.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def train(spec, expr, data, reshape, normalize, val, balanced, n_train, n_val, n_test, flip, shift, noise,
          mixup, out, resume, save_every, repeat, quiet, as_json, **keys):
    """Train SPEC on the NumPy engine; flags override the spec's `train` statement."""
    from dlc.engine.allocator import tune_allocator
    from dlc.layers.dense import token_vocab
    from dlc.train.augment import Augment
    from dlc.train.loop import train as run_training
    from dlc.train.sources import prepare

    tune_allocator()
    display = Display(quiet or as_json)
    if resume is not None:
        graph, cfg, src, norm, checkpoint = load_resume(resume, spec, expr, keys)
        classes = output_width(graph)
        runs = [(cfg, resume, checkpoint)]
    else:
        graph = load_graph(spec, expr)
        classes = output_width(graph)  # a spec dlc cannot train is refused before any data is looked for
        cfg = resolve_config(graph, keys, Augment(flip, shift, noise, mixup), balanced)
        src = data_source_of(graph, cfg, data, reshape, val, normalize, (n_train, n_val, n_test))
        norm = None
        runs = fresh_runs(cfg, out or fresh_out(graph), repeat)
    data_arrays, norm = prepare(src, graph.input.out_shape, classes,
                                tokens=graph.input.dtype.startswith("int"), norm=norm,
                                steps=output_steps(graph), vocab=token_vocab(graph))
    for text in data_arrays.notes:
        display.note(text)
    meta = {"data": asdict(src), "normalize": norm, "classes": classes, "vocab": data_arrays.vocab}
    docs = []
    for cfg_i, out_i, checkpoint in runs:
        display.label = f"seed {cfg_i.seed} " if len(runs) > 1 else ""
        try:
            result = run_training(graph, data_arrays, cfg_i, out_i, meta=meta, checkpoint=checkpoint,
                                  save_every=save_every, on_event=display)
        finally:
            display.close()
        docs.append(run_summary(result, data_arrays, data_arrays.notes))
        if result.stopped:
            break
    print_summary(docs[0] if len(docs) == 1 else aggregate(docs), len(docs), quiet, as_json)
    stopped = next((d for d in docs if d["stopped"]), None)
    if stopped:
        click.echo(f"error: {stopped['message']}" if stopped["stopped"] == "diverged" else stopped["message"],
                   err=True)
        raise SystemExit(1 if stopped["stopped"] == "diverged" else 130)


def data_source_of(graph, cfg: TrainConfig, data: str | None, reshape: bool, val: float | None,
                   normalize: str, sizes: tuple[int | None, int | None, int | None]) -> DataSource:
    """The DataSource the flags name; --n-train/--n-val/--n-test resize a built-in set."""
    from dlc.train.builtin import BUILTIN_SIZES
    from dlc.train.sources import data_source

    src = data_source(data or default_data(graph), reshape=reshape, val=val, seed=cfg.seed, normalize=normalize)
    if any(v is not None for v in sizes):
        if not src.builtin:
            raise DlcError("--n-train, --n-val and --n-test size the built-in data sets, not a file")
        src.sizes = tuple(d if v is None else v for v, d in zip(sizes, BUILTIN_SIZES[src.source]))
    return src


def fresh_runs(cfg: TrainConfig, root: Path, repeat: int) -> list[tuple]:
    """(config, run directory, no checkpoint) per run: root itself, or root/seedN for --repeat."""
    if repeat == 1:
        runs = [(cfg, root, None)]
    else:
        runs = [(replace(cfg, seed=cfg.seed + i), root / f"seed{cfg.seed + i}", None) for i in range(repeat)]
    for _, d, _ in runs:
        if (d / "last.npz").exists():
            raise DlcError(f"{d} already holds a run: continue it with --resume {d}, or choose another --out")
    return runs
