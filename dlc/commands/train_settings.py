"""`dlc train`'s settings: dlc's defaults, then the spec's `train` statement, then the flags.

Each layer overrides the one before, so a spec alone reproduces its run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from dlc import choices
from dlc.commands.arguments import NON_NEGATIVE, POSITIVE, SEED
from dlc.errors import DlcError, Pos
from dlc.layers import is_sequence
from dlc.layers.spatial import show
from dlc.train.catalog import data_choices

if TYPE_CHECKING:  # numpy comes with them, so the command imports them only when it runs
    from dlc.train.augment import Augment
    from dlc.train.config import TrainConfig

# The `train` statement's keys as flags: (key, click type, help). The type is the one rule for a key's
# values, read for the flag and for the spec's `train` statement alike: a rate, decay or penalty is a
# finite number (nan passes every comparison, so it is refused by name), a seed a whole number >= 0.
TRAIN_FLAGS = [
    ("loss", click.Choice(choices.LOSSES), "Loss (default: xent after a final softmax, else mse)."),
    ("optimizer", click.Choice(tuple(choices.OPTIMIZER_SLOTS)), "Optimizer (default sgd)."),
    ("lr", POSITIVE, "Learning rate (default 0.01)."),
    ("momentum", NON_NEGATIVE, "Momentum of momentum/nesterov (default 0.9)."),
    ("beta1", NON_NEGATIVE, "Adam's beta1 (default 0.9)."),
    ("beta2", NON_NEGATIVE, "Adam's beta2 (default 0.999); rmsprop's decay (default 0.9)."),
    ("eps", POSITIVE, "Epsilon of adagrad/rmsprop/adam (default 1e-8)."),
    ("batch", click.IntRange(min=1), "Mini-batch size (default 32)."),
    ("epochs", click.IntRange(min=0), "Epochs (default 10)."),
    ("seed", SEED, "Seed of initialisation, data order, dropout and augmentation (default 0)."),
    ("weight_decay", NON_NEGATIVE, "L2 weight decay on weights (not biases or bn); adamw's decoupled decay."),
    ("l1", NON_NEGATIVE, "L1 penalty on weights."),
    ("maxnorm", NON_NEGATIVE, "Max-norm constraint on each unit's incoming weights."),
    ("init", click.Choice(choices.INITS), "Weight initialisation (default he)."),
    ("init_std", NON_NEGATIVE, "Standard deviation of init=gaussian (default 0.01)."),
    ("schedule", click.Choice(choices.SCHEDULES), "Learning-rate schedule over epochs (default constant)."),
    ("step_every", click.IntRange(min=1), "step: epochs between decays."),
    ("gamma", POSITIVE, "step/exp: decay factor."),
    ("power", NON_NEGATIVE, "poly: exponent."),
    ("restart_every", click.IntRange(min=1), "cosine: epochs between warm restarts."),
    ("lr_min", NON_NEGATIVE, "cosine/linear: the lowest rate."),
    ("k", NON_NEGATIVE, "exp/invsqrt: decay constant."),
    ("warmup", click.IntRange(min=0), "Optimizer steps of linear warmup to the scheduled rate (default 0)."),
    ("clip", NON_NEGATIVE, "Clip the gradient to this global norm (default 0: off)."),
    ("freeze", str, "Keep every layer up to and including this label (or layer name) fixed: no gradients, "
                    "bn statistics frozen (transfer learning, with --weights)."),
]
TRAIN_KEY_NAMES = [k for k, _, _ in TRAIN_FLAGS]
INT_KEYS = {"batch", "epochs", "seed", "step_every", "restart_every", "warmup"}
LABEL_KEYS = {"freeze"}  # a spec's label, checked against the graph by the engine
WORD_KEYS = {"loss": choices.LOSSES, "optimizer": tuple(choices.OPTIMIZER_SLOTS), "init": choices.INITS,
             "schedule": choices.SCHEDULES}
# Flags that change what a run computes: refused with --resume, which continues the saved run as it was.
RUN_FLAGS = set(TRAIN_KEY_NAMES) - {"epochs"} | {"data", "reshape", "layout", "normalize", "val", "balanced",
                                                 "n_train", "n_val", "n_test", "flip", "shift", "noise", "mixup",
                                                 "repeat", "out"}


def train_flags(fn: Callable) -> Callable:
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

    kinds = {key: kind for key, kind, _ in TRAIN_FLAGS}
    out = {}
    for key, value in graph.train.items():
        if key not in TRAIN_KEY_NAMES:
            raise error(key, f"unknown training setting `{key}` (expected one of {', '.join(TRAIN_KEY_NAMES)})")
        if key in LABEL_KEYS:
            out[key] = str(value)
            continue
        if key in WORD_KEYS:
            if value not in WORD_KEYS[key]:
                raise error(key, f"train {key}={value}: expected one of {', '.join(WORD_KEYS[key])}")
            out[key] = value
            continue
        if isinstance(value, str) or (key in INT_KEYS and isinstance(value, float) and not value.is_integer()):
            raise error(key, f"train {key}={value}: expected {'a whole number' if key in INT_KEYS else 'a number'}")
        try:
            out[key] = kinds[key].convert(int(value) if key in INT_KEYS else value, None, None)
        except click.BadParameter as e:
            raise error(key, f"train {key}={value}: {e.message}")
    return out


def resolve_config(graph, flags: dict, augment: Augment, balanced: bool) -> TrainConfig:
    """dlc's defaults <- the spec's train statement <- the flags."""
    from dlc.train.config import TrainConfig

    settings = {"loss": choices.default_loss(graph)}
    settings.update(spec_settings(graph))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**settings, balanced=balanced, augment=augment)


def default_data(graph) -> str:
    """xor for a 2-input spec; glyphs for an image or 784-vector input with 10 outputs; pairs for a spec
    with two inputs."""
    shape, out = graph.input.out_shape, graph.output.out_shape
    if len(graph.inputs) == 2:
        return "pairs"
    if len(graph.inputs) > 2:
        raise DlcError(f"no default data for a spec with {len(graph.inputs)} inputs: name it with --data (an .npz "
                       f"with an array per input label and the target y)")
    if shape == (2,):
        return "xor"
    if (len(shape) == 3 or shape == (784,)) and out == (10,):
        return "glyphs"
    raise DlcError(f"no default data for an input of {show(shape)} and an output of {show(out)}: "
                   f"name it with --data ({data_choices()})")


def output_width(graph) -> int:
    """The classes (or values) of one prediction: a vector output's, or each step's of a TxV output."""
    shape = graph.output.out_shape
    if len(shape) != 1 and not is_sequence(shape):  # a signal C@L is no sequence of predictions
        raise DlcError(f"dlc train fits a vector output (classes or values) or a sequence TxV (classes at "
                       f"each step); {graph.file}'s output is {show(shape)}")
    return shape[-1]


def output_steps(graph) -> int | None:
    """T when the output is a sequence TxV (a class label per step), else None."""
    shape = graph.output.out_shape
    return shape[0] if is_sequence(shape) else None


def fresh_out(graph) -> Path:
    stem = Path(graph.file).stem if graph.file not in ("<expr>", "<stdin>") else "spec"
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out
