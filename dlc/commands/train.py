"""`dlc train SPEC`: train a spec on the NumPy engine, with resumable runs.

Settings come from three layers: dlc's defaults, the spec's `train` statement, the command line (each
overriding the one before), so a spec alone reproduces its run. numpy and the engine are imported
inside the command, so the other commands start fast.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
from click.core import ParameterSource

from dlc.analysis import OPTIMIZER_SLOTS
from dlc.commands.arguments import load_graph, spec_input
from dlc.errors import DlcError, Pos
from dlc.layers.spatial import show
from dlc.train.schedules import SCHEDULES

LOSSES = ("xent", "bce", "mse", "hinge")  # dlc.engine.losses.LOSSES, which imports numpy
OPTIMIZERS = tuple(OPTIMIZER_SLOTS)
INITS = ("he", "xavier", "gaussian")

# The `train` statement's keys as flags: (key, click type, help).
TRAIN_FLAGS = [
    ("loss", click.Choice(LOSSES), "Loss (default: xent after a final softmax, else mse)."),
    ("optimizer", click.Choice(OPTIMIZERS), "Optimizer (default sgd)."),
    ("lr", float, "Learning rate (default 0.01)."),
    ("momentum", float, "Momentum of momentum/nesterov (default 0.9)."),
    ("beta1", float, "Adam's beta1 (default 0.9)."),
    ("beta2", float, "Adam's beta2 (default 0.999); rmsprop's decay (default 0.9)."),
    ("eps", float, "Epsilon of adagrad/rmsprop/adam (default 1e-8)."),
    ("batch", click.IntRange(min=1), "Mini-batch size (default 32)."),
    ("epochs", click.IntRange(min=0), "Epochs (default 10)."),
    ("seed", int, "Seed of initialisation, data order, dropout and augmentation (default 0)."),
    ("weight_decay", float, "L2 weight decay on weights (not biases or bn)."),
    ("l1", float, "L1 penalty on weights."),
    ("maxnorm", float, "Max-norm constraint on each unit's incoming weights."),
    ("init", click.Choice(INITS), "Weight initialisation (default he)."),
    ("init_std", float, "Standard deviation of init=gaussian (default 0.01)."),
    ("schedule", click.Choice(SCHEDULES), "Learning-rate schedule over epochs (default constant)."),
    ("step_every", click.IntRange(min=1), "step: epochs between decays."),
    ("gamma", float, "step/exp: decay factor."),
    ("power", float, "poly: exponent."),
    ("restart_every", click.IntRange(min=1), "cosine: epochs between warm restarts."),
    ("lr_min", float, "cosine/linear: the lowest rate."),
    ("k", float, "exp/invsqrt: decay constant."),
]
TRAIN_KEY_NAMES = [k for k, _, _ in TRAIN_FLAGS]
INT_KEYS = {"batch", "epochs", "seed", "step_every", "restart_every"}
WORD_KEYS = {"loss": LOSSES, "optimizer": OPTIMIZERS, "init": INITS, "schedule": SCHEDULES}
# Flags that change what a run computes: refused with --resume, which continues the saved run as it was.
RUN_FLAGS = set(TRAIN_KEY_NAMES) - {"epochs"} | {"data", "reshape", "normalize", "val", "balanced", "n_train",
                                                 "n_val", "n_test", "flip", "shift", "noise", "mixup", "repeat", "out"}
METRICS = ["train_loss", "train_accuracy", "train_top5", "val_loss", "val_accuracy", "val_top5",
           "test_loss", "test_accuracy", "test_top5"]


def train_flags(fn):
    for key, kind, text in reversed(TRAIN_FLAGS):
        fn = click.option(f"--{key.replace('_', '-')}", key, type=kind, default=None, help=text)(fn)
    return fn


def setting_pos(graph, key: str) -> Pos | None:
    """Where the spec's `train` statement writes `key=` (the graph keeps the settings, not their places)."""
    for n, line in enumerate(graph.source.splitlines(), start=1):
        code = line.split("#", 1)[0]
        if re.match(r"\s*train\b", code):
            m = re.search(rf"\b{re.escape(key)}\s*=\s*\S+", code)
            if m:
                return Pos(n, m.start() + 1, m.end() + 1)
    return None


def spec_settings(graph) -> dict:
    """The spec's `train` statement, each value checked and typed like its flag."""
    def error(key, message):
        return DlcError(message, setting_pos(graph, key), graph.file, graph.source)

    out = {}
    for key, value in graph.train.items():
        if key not in TRAIN_KEY_NAMES:
            raise error(key, f"unknown training setting `{key}` (expected one of {', '.join(TRAIN_KEY_NAMES)})")
        if key in WORD_KEYS:
            if value not in WORD_KEYS[key]:
                raise error(key, f"train {key}={value}: expected one of {', '.join(WORD_KEYS[key])}")
            out[key] = value
            continue
        if isinstance(value, str) or (key in INT_KEYS and value != int(value)):
            raise error(key, f"train {key}={value}: expected {'a whole number' if key in INT_KEYS else 'a number'}")
        out[key] = int(value) if key in INT_KEYS else float(value)
    return out


def resolve_config(graph, flags: dict, augment, balanced: bool):
    """dlc's defaults <- the spec's train statement <- the flags."""
    from dlc.engine.losses import default_loss
    from dlc.train.loop import TrainConfig

    settings = {"loss": default_loss(graph)}
    settings.update(spec_settings(graph))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**settings, balanced=balanced, augment=augment)


def default_data(graph) -> str:
    """xor for a 2-input spec; glyphs for an image or 784-vector input with 10 outputs."""
    shape, out = graph.input.out_shape, graph.output.out_shape
    if shape == (2,):
        return "xor"
    if (len(shape) == 3 or shape == (784,)) and out == (10,):
        return "glyphs"
    raise DlcError(f"no default data for an input of {show(shape)} and an output of {show(out)}: "
                   f"name it with --data (a .npz, .csv, .pkl.gz, IDX directory, or xor, spirals, blobs, glyphs)")


def output_width(graph) -> int:
    shape = graph.output.out_shape
    if len(shape) != 1:
        raise DlcError(f"dlc train fits a vector output (classes or values); {graph.file}'s output is "
                       f"{show(shape)}")
    return shape[0]


def fresh_out(graph) -> Path:
    stem = Path(graph.file).stem if graph.file not in ("<expr>", "<stdin>") else "spec"
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# --------------------------------------------------------------------------------------- display

class Display:
    """Progress on stderr: a rich bar for an epoch that lasts, and an epoch summary line (all of them
    for a few long epochs, about one a second for many short ones); silent when quiet."""

    BAR_AFTER = 0.5  # seconds into an epoch before its bar appears
    LINE_EVERY = 1.0  # seconds between summary lines of short epochs

    def __init__(self, quiet: bool, label: str = ""):
        self.quiet, self.label = quiet, label
        self.progress = self.task = None
        self.epoch = {}
        self.last_update = self.last_line = 0.0
        if not quiet:
            from rich.console import Console
            self.console = Console(stderr=True, highlight=False)

    def note(self, text: str) -> None:
        if not self.quiet:
            from rich.markup import escape
            self.console.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True)

    def __call__(self, kind: str, info: dict) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if kind == "epoch":
            self.epoch = dict(info, started=now)
        elif kind == "step":
            if now - self.last_update < 0.1 or now - self.epoch["started"] < self.BAR_AFTER:
                return
            self.last_update = now
            if self.progress is None:
                self._start_bar()
            acc = "" if info["accuracy"] is None else f"  acc {info['accuracy']:.2%}"
            stats = f"loss {info['loss']:.4g}{acc}  {info['images_per_second']:,.0f} img/s"
            self.progress.update(self.task, completed=info["batch"], stats=stats)
        elif kind == "end":
            self.close()
            if info["epoch"] == self.epoch["epochs"] or now - self.last_line >= self.LINE_EVERY:
                self.console.print(epoch_line(info, self.label), soft_wrap=True)
                self.last_line = now

    def _start_bar(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        e = self.epoch
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(f"{self.label}epoch {e['epoch']}/{e['epochs']}",
                                           total=e["batches"], completed=e["done"], stats="")

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def epoch_line(r: dict, label: str = "") -> str:
    parts = [f"{label}epoch {r['epoch']}", f"loss {r['train_loss']:.4g}"]
    if r["train_accuracy"] is not None:
        parts.append(f"acc {_pct(r['train_accuracy'])}")
    for split in ("val", "test"):
        if r[f"{split}_loss"] is not None:
            acc = r[f"{split}_accuracy"]
            parts.append(f"{split} {_pct(acc) if acc is not None else format(r[f'{split}_loss'], '.4g')}")
    parts += [f"lr {r['lr']:.3g}", f"{r['images_per_second']:,.0f} img/s", f"{r['seconds']:.1f} s"]
    return "  ".join(parts)


def closing_table(summary: dict):
    """Rows train/val/test; a cell is a value or, with --repeat, mean ± std."""
    from rich.table import Table

    def cell(v, pct):
        if isinstance(v, dict):
            if v["mean"] is None:
                return "-"
            return f"{v['mean']:.2%} ± {v['std']:.2%}" if pct else f"{v['mean']:.4g} ± {v['std']:.2g}"
        return "-" if v is None else (f"{v:.2%}" if pct else f"{v:.4g}")

    t = Table(show_edge=False, pad_edge=False)
    for col in ("split", "loss", "accuracy", "top-5"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "val", "test"):
        values = [summary.get(f"{split}_{m}") for m in ("loss", "accuracy", "top5")]
        if all(v is None or (isinstance(v, dict) and v["mean"] is None) for v in values):
            continue
        t.add_row(split, cell(values[0], False), cell(values[1], True), cell(values[2], True))
    return t


# --------------------------------------------------------------------------------------- summary

def run_summary(result, data, notes) -> dict:
    final = result.final
    trained = sum(r["images_per_second"] * r["seconds"] for r in result.history)
    train_seconds = sum(r["seconds"] for r in result.history)
    doc = {"epochs": len(result.history)}
    doc.update({m: final.get(m) for m in METRICS})
    doc.update(seconds=result.seconds, images_per_second=trained / train_seconds if train_seconds else None,
               out=str(result.out), best=result.best or None, stopped=result.stopped,
               message=result.message or None, data=data.name, notes=notes)
    return doc


def aggregate(docs: list[dict]) -> dict:
    """Each metric over the runs as {mean, std, runs} (population std, as numpy's default)."""
    import numpy as np

    doc = {}
    for key in ["epochs", *METRICS, "seconds", "images_per_second"]:
        runs = [d[key] for d in docs]
        values = [v for v in runs if v is not None]
        doc[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values)) if values else None, "runs": runs}
    doc.update(out=[d["out"] for d in docs], stopped=[d["stopped"] for d in docs],
               data=docs[0]["data"], notes=docs[0]["notes"])
    return doc


# --------------------------------------------------------------------------------------- command

@click.command("train")
@spec_input
@train_flags
@click.option("--data", metavar="NAME|PATH", help="Training data: .npz, .csv, .pkl[.gz], an IDX directory or file, "
              "or a built-in set (xor, spirals, blobs, glyphs). Default: xor for 2 inputs, glyphs for "
              "images/784-vectors with 10 outputs.")
@click.option("--reshape", is_flag=True, help="Fit images of another size: centre-pad/crop, repeat one channel.")
@click.option("--normalize", type=click.Choice(["none", "mean-std", "minmax"]), default="none",
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
    from dlc.train import data as dataio
    from dlc.train.augment import Augment
    from dlc.train.loop import train as run_training

    display = Display(quiet or as_json)
    if resume is not None:
        graph, cfg, src, norm, checkpoint = load_resume(resume, spec, expr, keys)
        runs = [(cfg, resume, checkpoint)]
    else:
        graph = load_graph(spec, expr)
    classes = output_width(graph)  # a spec dlc cannot train is refused before any data is looked for
    if resume is None:
        cfg = resolve_config(graph, keys, Augment(flip, shift, noise, mixup), balanced)
        src = dataio.data_source(data or default_data(graph), reshape=reshape, val=val, seed=cfg.seed,
                                 normalize=normalize)
        if any(v is not None for v in (n_train, n_val, n_test)):
            from dlc.train.builtin import BUILTIN_SIZES
            if not src.builtin:
                raise DlcError("--n-train, --n-val and --n-test size the built-in data sets, not a file")
            src.sizes = tuple(d if v is None else v
                              for v, d in zip((n_train, n_val, n_test), BUILTIN_SIZES[src.source]))
        norm = None
        root = out or fresh_out(graph)
        if repeat == 1:
            runs = [(cfg, root, None)]
        else:
            runs = [(replace(cfg, seed=cfg.seed + i), root / f"seed{cfg.seed + i}", None) for i in range(repeat)]
        for _, d, _ in runs:
            if (d / "last.npz").exists():
                raise DlcError(f"{d} already holds a run: continue it with --resume {d}, or choose another --out")
    data_arrays, norm = dataio.prepare(src, graph.input.out_shape, classes,
                                       tokens=graph.input.dtype.startswith("int"), norm=norm)
    for text in data_arrays.notes:
        display.note(text)
    meta = {"data": asdict(src), "normalize": norm, "classes": classes}
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
    summary = docs[0] if len(docs) == 1 else aggregate(docs)
    stopped = next((d for d in docs if d["stopped"]), None)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif not quiet:
        from rich.console import Console
        console = Console(highlight=False)
        console.print(closing_table(summary))
        outs = summary["out"] if isinstance(summary["out"], str) else ", ".join(summary["out"])
        ips = summary["images_per_second"]
        ips = ips["mean"] if isinstance(ips, dict) else ips
        secs = summary["seconds"]["mean"] if isinstance(summary["seconds"], dict) else summary["seconds"]
        console.print(f"{len(docs)} run(s), {secs:.1f} s each, "
                      f"{'-' if ips is None else format(ips, ',.0f')} img/s; written to {outs}")
    if stopped:
        click.echo(f"error: {stopped['message']}" if stopped["stopped"] == "diverged" else stopped["message"],
                   err=True)
        raise SystemExit(1 if stopped["stopped"] == "diverged" else 130)


def load_resume(folder: Path, spec, expr, keys: dict):
    """(graph, config, data source, normalisation, checkpoint) of the run saved in folder."""
    from dlc.compile import compile_spec
    from dlc.engine.params import check_against, load_checkpoint
    from dlc.train.data import DataSource
    from dlc.train.loop import config_from_json

    ctx = click.get_current_context()
    given = sorted(name for name in RUN_FLAGS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE)
    if given:
        flags = ", ".join(f"--{g.replace('_', '-')}" for g in given)
        raise DlcError(f"--resume continues the saved run with its own settings; drop {flags} "
                       f"(only --epochs may change, to extend the run)")
    path = folder / "last.npz"
    if not path.exists():
        raise DlcError(f"--resume {folder}: no last.npz there (is it a dlc train run directory?)")
    params, state, meta = load_checkpoint(path)
    if "spec" not in meta or "optimizer" not in meta:
        raise DlcError(f"{path} was not written by dlc train, so it cannot be resumed")
    if spec is not None or expr is not None:
        from dlc.commands.arguments import load_graph, spec_input
        _, text = read_spec(spec, expr)
        if text != meta["spec"]:
            raise DlcError(f"the spec given differs from the one the run in {folder} trained; "
                           f"drop SPEC to continue that run")
    graph = compile_spec(meta["spec"], file=meta["file"])
    check_against(graph, params, state, str(path))
    cfg = config_from_json(meta["config"])
    if keys.get("epochs") is not None:
        cfg = replace(cfg, epochs=keys["epochs"])
    src = DataSource(**dict(meta["data"], sizes=tuple(meta["data"]["sizes"]) if meta["data"]["sizes"] else None))
    return graph, cfg, src, meta["normalize"], (params, state, meta)
