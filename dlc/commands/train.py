"""`dlc train SPEC`: train a spec on the NumPy engine, with resumable runs.

The command wires the pieces together: settings (train_settings), the run directory to resume
(train_resume), the data (dlc.train.sources), the run itself (dlc.train.loop), progress
(train_progress) and the closing report (train_summary). numpy and the engine are imported inside
the command, so the other commands start fast.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dlc import choices
from dlc.commands.arguments import NON_NEGATIVE, OUT_FLAGS, THREADS, load_graph, spec_input
from dlc.commands.train_progress import Display
from dlc.commands.train_resume import check_same_data, load_resume
from dlc.commands.train_settings import (default_data, fresh_out, output_steps, output_width, resolve_config,
                                         train_flags)
from dlc.commands.train_summary import aggregate, print_summary, run_summary
from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.catalog import data_epilog, data_help

if TYPE_CHECKING:  # numpy comes with them, so the command imports them only when it runs
    from dlc.train.config import TrainConfig
    from dlc.train.sources import DataSource


@click.command("train", epilog=data_epilog())
@partial(spec_input, metavar="[SPEC]")
@train_flags
@click.option("--data", metavar="NAME|PATH", help=f"{data_help()} Default: xor for 2 inputs, glyphs for "
              "images/784-vectors with 10 outputs.")
@click.option("--reshape", is_flag=True, help="Fit images of another size: centre-pad/crop, repeat one channel.")
@click.option("--layout", type=click.Choice(["chw", "hwc"]), help="How a data file's images are laid out: chw "
              "(channels first) or hwc (channels last, as PIL and Keras keep photos; transposed). Default: "
              "read from the shapes, refused when both fit.")
@click.option("--resize", is_flag=True, help="An image folder's images of another size: scale the shorter side "
              "to the spec's and crop the centre.")
@click.option("--token-dtype", type=click.Choice(["uint16", "uint32"]), help="A .bin token file's element type "
              "(else from meta.json beside it).")
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
@click.option("--weights-partial", is_flag=True, help="With --weights: take the tensors that fit by name and "
              "shape, start the rest fresh (a new head), and list both; without it every tensor must fit.")
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
@click.option("--threads", type=THREADS, metavar="auto|N",
              help="The NumPy engine's cores: auto follows the machine's load (as many as the cores other "
                   "processes leave free; the last bits of some results can then differ from run to run), N fixes "
                   "them. They are BLAS threads, or for a network whose batches split in two (no bn or dropout, "
                   "a large enough step) a helper process for the second half while two are free, with the same "
                   "numbers either way. Default: every core.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), metavar="N",
              help="--engine torch: data-parallel in N processes on this machine, started by PyTorch's launcher "
                   "(as torchrun --standalone) once the command is checked.")
def train(spec, expr, data, reshape, layout, resize, token_dtype, normalize, val, balanced, n_train, n_val, n_test,
          flip, shift, noise, mixup, out, resume, weights, weights_partial, save_every, repeat, plot, quiet, as_json,
          engine, device, nproc_per_node, threads, **keys):
    """Train SPEC on the NumPy engine or PyTorch; flags override the spec's `train` statement.
    `--resume DIR` continues a run from its folder, with no SPEC."""
    from dlc import plot as curves

    if plot and not curves.available():  # before any data is loaded or epoch run
        raise DlcError("--plot draws with matplotlib, which is not installed: pip install 'dlc[plot]'")

    from dlc.engine.allocator import tune_allocator
    from dlc.engine.threads import blas_threads, load_note
    from dlc.layers.dense import token_vocab
    from dlc.torch import launched, leave_process_group
    from dlc.torch.launch import launch_standalone, under_launcher
    from dlc.train.augment import Augment
    from dlc.train.loop import train as run_training
    from dlc.train.rundir import run_lock
    from dlc.train.sources import prepare, spec_inputs

    tune_allocator()
    if threads is not None and engine != "numpy":
        raise DlcError(f"--threads {threads} sets the NumPy engine's BLAS threads; PyTorch's are torch's own "
                       f"(torch.set_num_threads, OMP_NUM_THREADS)")
    if nproc_per_node and engine != "torch":
        raise DlcError("--nproc-per-node trains data-parallel with PyTorch: add --engine torch")
    trainer_class = trainer_for(engine, device)
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
        if len(graph.outputs) > 1:  # a loss and a target per output is a choice the data sources cannot make
            raise DlcError(f"{graph.file} has {len(graph.outputs)} outputs ({', '.join(graph.output_names)}): dlc "
                           f"train fits one target per sample, so a network with several outputs cannot train "
                           f"yet (train it with one `output`, then add the others)")
        classes = output_width(graph)  # a spec dlc cannot train is refused before any data is looked for
        cfg = resolve_config(graph, keys, Augment(flip, shift, noise, mixup), balanced)
        src = data_source_of(graph, cfg, data, reshape, layout, val, normalize, (n_train, n_val, n_test), engine,
                             resize, token_dtype)
        norm = None
        if weights:
            start = start_weights(weights, graph, cfg, weights_partial, display)
        elif weights_partial:
            raise DlcError("--weights-partial says how to load --weights CKPT: give the checkpoint")
        root = out or fresh_out(graph)
        runs = fresh_runs(cfg, root, repeat)
    folders = [d for _, d, _ in runs]
    if nproc_per_node and not under_launcher():
        # the command is checked (spec, data, run folder): now the processes, each of which runs it (and
        # rank 0 takes the run folder's lock: the launcher holding it would lock its own processes out)
        if resume is None:
            check_fresh_runs(root, folders, plot)
        raise SystemExit(launch_standalone(nproc_per_node, sys.argv[1:]))
    with contextlib.ExitStack() as held:
        if writer:  # one run per folder at a time (torchrun's other ranks write nothing), checked once held
            for d in folders:
                held.enter_context(run_lock(d))
            if resume is None:
                check_fresh_runs(root, folders, plot)
        load = held.enter_context(blas_threads(threads)) if engine == "numpy" else None
        try:
            data_arrays, norm = prepare(src, graph.input.out_shape, classes, tokens=graph.input.dtype.startswith("int"),
                                        norm=norm, on_phase=display.phase, steps=output_steps(graph),
                                        vocab=token_vocab(graph), inputs=spec_inputs(graph))
            display.phase("fingerprinting the data (--resume checks it)")
            fingerprint = data_arrays.fingerprint()
        except MemoryError:
            raise DlcError(f"out of memory while preparing the data {src.source}") from None
        finally:
            display.phase(None)
        if resume is not None:
            check_same_data(checkpoint[2], fingerprint, resume)
        step, step_name = training_step(graph, cfg, engine, len(data_arrays.train))
        if step:  # a file's sample count is known only now; free memory is now what the step can have
            from dlc.machine import refuse_unless_fits

            refuse_unless_fits(step, step_name)
        display.note(data_line(data_arrays, graph, default=data is None and resume is None))
        for text in data_arrays.notes:
            display.note(text)
        meta = {"data": asdict(src), "normalize": norm, "classes": classes, "data_fingerprint": fingerprint,
                "vocab": data_arrays.vocab, "class_names": data_arrays.class_names}
        docs = []
        for cfg_i, out_i, checkpoint in runs:
            display.label = f"seed {cfg_i.seed} " if len(runs) > 1 else ""
            try:
                result = run_training(graph, data_arrays, cfg_i, out_i, meta=meta, checkpoint=checkpoint,
                                      save_every=save_every, on_event=display, trainer=trainer_class, start=start)
            except MemoryError as e:  # what the checks above could not foresee: their estimates are lower bounds
                raise DlcError(f"out of memory while training: {e}") from None
            finally:
                display.close()
            docs.append(run_summary(result, data_arrays, data_arrays.notes))
            if result.stopped:
                break
        leave_process_group()  # every collective is done; rank 0 only writes its summary from here
        if not writer:
            return
        if (note := load_note(load)) is not None:
            display.note(note)
        summary = docs[0] if len(docs) == 1 else aggregate(docs)
        if plot and any(d["epochs"] for d in docs):  # a run stopped in its first epoch has no curve yet
            summary["curves"] = str(curves.write_curves(root))
        print_summary(summary, len(docs), quiet, as_json, root)
        stopped = next((d for d in docs if d["stopped"]), None)
        if stopped:
            click.echo(f"error: {stopped['message']}" if stopped["stopped"] == "diverged" else stopped["message"],
                       err=True)
            raise SystemExit(1 if stopped["stopped"] == "diverged" else 130)


def data_source_of(graph, cfg: TrainConfig, data: str | None, reshape: bool, layout: str | None,
                   val: float | None, normalize: str, sizes: tuple[int | None, int | None, int | None],
                   engine: str, resize: bool = False, token_dtype: str | None = None) -> DataSource:
    """The DataSource the flags name; --n-train/--n-val/--n-test resize a built-in set, which is refused
    before it is made when its arrays and a training step would not fit in memory (both grow with the
    spec: a 100,000-step input made 16 GB of sequences, then a step of attention over them)."""
    from dlc.machine import refuse_unless_fits
    from dlc.train.builtin import BUILTIN_SIZES, builtin_bytes
    from dlc.train.sources import data_source
    from dlc.units import binary

    src = data_source(default_data(graph) if data is None else data, reshape=reshape, layout=layout, val=val,
                      seed=cfg.seed, normalize=normalize, resize=resize, token_dtype=token_dtype)
    if layout and src.builtin:
        raise DlcError(f"--layout says how a data file's images are laid out; the built-in set {src.source} "
                       f"is made in the spec's own")
    if any(v is not None for v in sizes):
        if not src.builtin or src.source == "xor":
            sized = ", ".join(name for name in BUILTIN_SIZES if name != "xor")
            raise DlcError(f"--n-train, --n-val and --n-test size the built-in data sets {sized}, "
                           f"not {'the four points of xor' if src.builtin else 'a file'}")
        src.sizes = tuple(d if v is None else v for v, d in zip(sizes, BUILTIN_SIZES[src.source]))
    if src.builtin:
        split_sizes, shape = src.sizes or BUILTIN_SIZES[src.source], graph.input.out_shape
        held = builtin_bytes(src.source, shape, split_sizes)
        step, step_name = training_step(graph, cfg, engine, split_sizes[0])
        what = f"the data ({sum(split_sizes):,} samples of {show(shape)}: {binary(held)})"
        refuse_unless_fits(held + step, what + (f" plus {step_name} ({binary(step)})" if step else ""))
    return src


def training_step(graph, cfg: TrainConfig, engine: str, samples: int) -> tuple[int, str]:
    """The least memory of a NumPy training step on `samples` training samples, and its name; (0, "") on
    the torch trainer, whose step lives on a device dlc.memory does not see."""
    if engine != "numpy":
        return 0, ""
    from dlc.memory import backprop_bytes

    batch = min(cfg.batch, samples)  # a batch is at most the training split
    return backprop_bytes(graph, batch, cfg.optimizer), f"a training step at batch {batch}"


def data_line(data, graph, default: bool) -> str:
    """Which data set trains the run and its split sizes: a default that the spec's shapes picked is
    named as such, so a CIFAR-shaped spec is not trained on glyphs without a word."""
    sizes = ", ".join(f"{len(split):,} {name}" for name, split in data.splits().items())
    ins = (f"an input of {show(graph.input.out_shape)}" if len(graph.inputs) == 1 else
           f"the inputs {', '.join(f'{n.name} {show(n.out_shape)}' for n in graph.inputs)}")
    why = (f" (the default for {ins} and an output of "
           f"{show(graph.output.out_shape)}; --data names another)") if default else ""
    return f"data: {data.name}{why}: {sizes}"


def trainer_for(engine: str, device: str):
    """The trainer class `train --engine` runs: NumpyTrainer, or the torch one for a device."""
    if engine == "numpy":
        if device == "cuda":
            raise DlcError("--device cuda: the numpy engine runs on the CPU; use --engine torch")
        from dlc.train.trainer import NumpyTrainer

        return NumpyTrainer
    try:
        from dlc.torch.trainer import pick_device, torch_trainer
    except ImportError as e:
        raise DlcError(f"--engine torch needs PyTorch ({e}); install it: pip install 'dlc[torch]' "
                       "(the README says how to get the CPU build)")
    pick_device(device)  # a missing GPU is reported before any data is read
    return torch_trainer(device)


def start_weights(path: str, graph, cfg: TrainConfig, partial: bool, display: Display) -> tuple[dict, dict]:
    """--weights: the (params, state) a fresh run starts from. Every tensor must fit the spec, or with
    --weights-partial those that fit are taken, the rest drawn fresh, and the display lists both."""
    from dlc.engine.params import check_against, load_checkpoint, partial_start
    from dlc.graph import Network
    from dlc.train.trainer import starting_weights

    params, state, _ = load_checkpoint(path)
    if not partial:
        try:
            check_against(Network(graph, params, state, weights=path, checkpoint=path))
        except DlcError as e:
            raise DlcError(f"{e.message}; --weights-partial takes the tensors that fit and starts the rest "
                           f"fresh (a new head)", e.pos, e.file, e.source) from None
        return params, state
    fresh = starting_weights(graph, cfg, None)
    got = partial_start(graph, (params, state), (fresh.params, fresh.state), path)
    display.note(f"--weights-partial: from {path}: {', '.join(got.loaded)}")
    display.note(f"--weights-partial: started fresh: {', '.join(got.fresh) or 'none'}")
    if got.unused:
        display.note(f"--weights-partial: not used from {path}: {', '.join(got.unused)}")
    return got.params, got.state


def fresh_runs(cfg: TrainConfig, root: Path, repeat: int) -> list[tuple]:
    """(config, run directory, no checkpoint) per run: root itself, or root/seedN for --repeat."""
    if repeat == 1:
        return [(cfg, root, None)]
    return [(replace(cfg, seed=cfg.seed + i), root / f"seed{cfg.seed + i}", None) for i in range(repeat)]


def check_fresh_runs(root: Path, folders: list[Path], plot: bool) -> None:
    """Fresh runs write their files into `folders`, and --plot root's curves.png: refuse a folder that
    holds a file a run would write (a model or picture someone kept is not overwritten), before any data
    is loaded."""
    from dlc.plot import CURVES
    from dlc.train.rundir import LAST, RUN_FILES

    for folder in folders:
        if (folder / LAST).exists():
            raise DlcError(f"{folder} already holds a run ({LAST}): continue it with --resume {folder}, "
                           f"or choose another --out")
    written = {folder: list(RUN_FILES) for folder in folders}
    if plot:
        written.setdefault(root, []).append(CURVES)
    for folder, names in written.items():
        kept = [name for name in names if (folder / name).exists()]
        if kept:
            raise DlcError(f"{folder} holds {', '.join(kept)}, which the run writes: choose another --out "
                           f"(or move them) so they are not overwritten")
