"""`dlc train SPEC`: train a spec on the NumPy engine, with resumable runs.

The command wires the pieces together: settings (train_settings), the run directory to resume
(train_resume), the data (dlc.train.sources), the run itself (dlc.train.loop), progress
(train_progress) and the closing report (train_summary). numpy and the engine are imported inside
the command, so the other commands start fast.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dlc import choices
from dlc.commands.arguments import NON_NEGATIVE, OUT_FLAGS, load_graph, spec_input
from dlc.commands.train_progress import Display
from dlc.commands.train_resume import check_same_data, load_resume
from dlc.commands.train_settings import (default_data, fresh_out, output_steps, output_width, resolve_config,
                                         train_flags)
from dlc.commands.train_summary import aggregate, print_summary, run_summary
from dlc.errors import DlcError
from dlc.layers.spatial import show

if TYPE_CHECKING:  # numpy comes with them, so the command imports them only when it runs
    from dlc.train.config import TrainConfig
    from dlc.train.sources import DataSource


@click.command("train")
@partial(spec_input, metavar="[SPEC]")
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
@click.option("--noise", type=NON_NEGATIVE, default=0.0, help="Augment: Gaussian noise of this sigma.")
@click.option("--mixup", type=NON_NEGATIVE, default=0.0, help="Augment: mixup with Beta(alpha, alpha).")
@click.option(*OUT_FLAGS, "out", type=click.Path(path_type=Path), metavar="DIR", help="Run directory (default runs/<spec>-<time>).")
@click.option("--resume", type=click.Path(path_type=Path), metavar="DIR", help="Continue the run in DIR exactly.")
@click.option("--weights", metavar="CKPT", help="Start from this checkpoint's weights (e.g. dlc import's NET.npz) "
              "instead of fresh ones; with --freeze LABEL, train only the layers after LABEL.")
@click.option("--save-every", type=click.IntRange(min=1), metavar="STEPS",
              help="Checkpoint every N steps within an epoch (default: every 60 seconds).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, help="K runs with seeds seed..seed+K-1.")
@click.option("--plot", is_flag=True, help="At the end, draw the loss and accuracy curves into the run folder's "
              "curves.png (needs the `plot` extra; --repeat: mean ± std over the seeds).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; print only the run folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.option("--engine", type=click.Choice(choices.TRAIN_ENGINES), default="numpy", show_default=True,
              help="numpy: dlc's own; torch: PyTorch, on --device, and data-parallel under torchrun.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="--engine torch: auto uses CUDA when torch sees a GPU; cuda: CUDA or exit 2.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), metavar="N",
              help="--engine torch: data-parallel in N processes on this machine, started by PyTorch's launcher "
                   "(as torchrun --standalone) once the command is checked.")
def train(spec, expr, data, reshape, normalize, val, balanced, n_train, n_val, n_test, flip, shift, noise,
          mixup, out, resume, weights, save_every, repeat, plot, quiet, as_json, engine, device, nproc_per_node,
          **keys):
    """Train SPEC on the NumPy engine or PyTorch; flags override the spec's `train` statement.
    `--resume DIR` continues a run from its folder, with no SPEC."""
    from dlc import plot as curves

    if plot and not curves.available():  # before any data is loaded or epoch run
        raise DlcError("--plot draws with matplotlib, which is not installed: pip install 'dlc[plot]'")

    from dlc.engine.allocator import tune_allocator
    from dlc.layers.dense import token_vocab
    from dlc.torch import launched, leave_process_group
    from dlc.torch.launch import launch_standalone, under_launcher
    from dlc.train.augment import Augment
    from dlc.train.loop import train as run_training
    from dlc.train.sources import prepare

    tune_allocator()
    if nproc_per_node and engine != "torch":
        raise DlcError("--nproc-per-node trains data-parallel with PyTorch: add --engine torch")
    engine_class = engine_for(engine, device)
    writer = launched()[0] == 0  # under torchrun, rank 0 alone writes and prints
    display = Display(quiet or as_json or not writer)
    start = None
    if resume is not None:
        if weights:
            raise DlcError("--weights starts a new run; --resume continues one with its own weights")
        graph, cfg, src, norm, checkpoint = load_resume(resume, spec, expr, keys)
        classes = output_width(graph)
        runs = [(cfg, resume, checkpoint)]
        root = resume
    else:
        graph = load_graph(spec, expr)
        classes = output_width(graph)  # a spec dlc cannot train is refused before any data is looked for
        cfg = resolve_config(graph, keys, Augment(flip, shift, noise, mixup), balanced)
        src = data_source_of(graph, cfg, data, reshape, val, normalize, (n_train, n_val, n_test))
        norm = None
        if weights:
            from dlc.engine.params import load_checkpoint

            start = load_checkpoint(weights, graph)[:2]
        root = out or fresh_out(graph)
        runs = fresh_runs(cfg, root, repeat, check=writer)
    if nproc_per_node and not under_launcher():
        # the command is checked (spec, data, run folder): now the processes, each of which runs it
        raise SystemExit(launch_standalone(nproc_per_node, sys.argv[1:]))
    try:
        data_arrays, norm = prepare(src, graph.input.out_shape, classes, tokens=graph.input.dtype.startswith("int"),
                                    norm=norm, on_phase=display.phase, steps=output_steps(graph),
                                    vocab=token_vocab(graph))
        display.phase("fingerprinting the data (--resume checks it)")
        fingerprint = data_arrays.fingerprint()
    except MemoryError:
        raise DlcError(f"out of memory while preparing the data {src.source}") from None
    finally:
        display.phase(None)
    if resume is not None:
        check_same_data(checkpoint[2], fingerprint, resume)
    display.note(data_line(data_arrays, graph, default=data is None and resume is None))
    for text in data_arrays.notes:
        display.note(text)
    meta = {"data": asdict(src), "normalize": norm, "classes": classes, "data_fingerprint": fingerprint,
            "vocab": data_arrays.vocab}
    docs = []
    for cfg_i, out_i, checkpoint in runs:
        display.label = f"seed {cfg_i.seed} " if len(runs) > 1 else ""
        try:
            result = run_training(graph, data_arrays, cfg_i, out_i, meta=meta, checkpoint=checkpoint,
                                  save_every=save_every, on_event=display, engine=engine_class, start=start)
        finally:
            display.close()
        docs.append(run_summary(result, data_arrays, data_arrays.notes))
        if result.stopped:
            break
    leave_process_group()  # every collective is done; rank 0 only writes its summary from here
    if not writer:
        return
    summary = docs[0] if len(docs) == 1 else aggregate(docs)
    if plot and any(d["epochs"] for d in docs):  # a run stopped in its first epoch has no curve yet
        summary["curves"] = str(curves.write_curves(root))
    print_summary(summary, len(docs), quiet, as_json, root)
    stopped = next((d for d in docs if d["stopped"]), None)
    if stopped:
        click.echo(f"error: {stopped['message']}" if stopped["stopped"] == "diverged" else stopped["message"],
                   err=True)
        raise SystemExit(1 if stopped["stopped"] == "diverged" else 130)


def data_source_of(graph, cfg: TrainConfig, data: str | None, reshape: bool, val: float | None,
                   normalize: str, sizes: tuple[int | None, int | None, int | None]) -> DataSource:
    """The DataSource the flags name; --n-train/--n-val/--n-test resize a built-in set."""
    from dlc.train.builtin import BUILTIN_SIZES
    from dlc.memory import refuse_unless_fits
    from dlc.train.sources import data_source

    src = data_source(default_data(graph) if data is None else data, reshape=reshape, val=val, seed=cfg.seed,
                      normalize=normalize)
    if any(v is not None for v in sizes):
        if not src.builtin or src.source == "xor":
            raise DlcError(f"--n-train, --n-val and --n-test size the built-in data sets spirals, blobs and "
                           f"glyphs, not {'the four points of xor' if src.builtin else 'a file'}")
        src.sizes = tuple(d if v is None else v for v, d in zip(sizes, BUILTIN_SIZES[src.source]))
        samples, shape = sum(src.sizes), graph.input.out_shape
        # the arrays alone, as float32: a lower bound (generating and normalising them takes more)
        refuse_unless_fits(4 * samples * math.prod(shape), f"the data ({samples:,} samples of {show(shape)})")
    return src


def data_line(data, graph, default: bool) -> str:
    """Which data set trains the run and its split sizes: a default that the spec's shapes picked is
    named as such, so a CIFAR-shaped spec is not trained on glyphs without a word."""
    sizes = ", ".join(f"{len(split):,} {name}" for name, split in data.splits().items())
    why = (f" (the default for an input of {show(graph.input.out_shape)} and an output of "
           f"{show(graph.output.out_shape)}; --data names another)") if default else ""
    return f"data: {data.name}{why}: {sizes}"


def engine_for(engine: str, device: str):
    """The engine class `train` runs: NumpyEngine, or the torch one for a device."""
    if engine == "numpy":
        if device == "cuda":
            raise DlcError("--device cuda: the numpy engine runs on the CPU; use --engine torch")
        from dlc.train.engine import NumpyEngine

        return NumpyEngine
    try:
        from dlc.torch.engine import pick_device, torch_engine
    except ImportError as e:
        raise DlcError(f"--engine torch needs PyTorch ({e}); install it: pip install 'dlc[torch]' "
                       "(the README says how to get the CPU build)")
    pick_device(device)  # a missing GPU is reported before any data is read
    return torch_engine(device)


def fresh_runs(cfg: TrainConfig, root: Path, repeat: int, check: bool = True) -> list[tuple]:
    """(config, run directory, no checkpoint) per run: root itself, or root/seedN for --repeat.
    check: refuse a directory that holds a run (not on torchrun's other ranks, which rank 0 races)."""
    if repeat == 1:
        runs = [(cfg, root, None)]
    else:
        runs = [(replace(cfg, seed=cfg.seed + i), root / f"seed{cfg.seed + i}", None) for i in range(repeat)]
    for _, d, _ in runs:
        if check:
            check_fresh_folder(d)
    return runs


def check_fresh_folder(folder: Path) -> None:
    """A fresh run writes its files into `folder`: refuse one that is a file, lies under a file, or holds a
    file the run would write (a model someone kept is not overwritten), before any data is loaded."""
    from dlc.train.rundir import LAST, RUN_FILES

    existing = next(p for p in (folder, *folder.parents) if p.exists())  # `.` or `/` at the latest
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise DlcError(f"--out {folder}: {where}, not a folder")
    if (folder / LAST).exists():
        raise DlcError(f"{folder} already holds a run ({LAST}): continue it with --resume {folder}, "
                       f"or choose another --out")
    kept = [name for name in RUN_FILES if (folder / name).exists()]
    if kept:
        raise DlcError(f"{folder} holds {', '.join(kept)}, which a run writes: choose another --out "
                       f"(or move them) so they are not overwritten")
