"""The built-in two-input task `pairs` (`--data pairs`): sequence-pair matching for BERT-style networks,
which read token ids and token types (Devlin et al. 2019, "BERT", arXiv:1810.04805: a sentence pair is
one sequence of ids, and the types say which sentence each token is from).

Each sample is two sequences of T/2 tokens. The first input (in the spec's order) takes their ids side
by side, T from `input seq T` and the tokens 0..V-1 from the vocabulary of the embed that reads it; the
second takes each token's segment, 0 for the first sequence and 1 for the second. The class is 1 when
the second sequence repeats the first, token for token, 0 when it is drawn afresh: half the samples
each, the second of a class-0 sample drawn until it differs. Telling them apart means comparing the
tokens T/2 steps apart, which a model does through attention across the two segments.
Every set is a function of its seed and sizes alone.
"""

from __future__ import annotations

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.catalog import InputWanted

PAIRS_SIZES = (2000, 500, 500)  # (train, val, test)


def _check(inputs: tuple[InputWanted, ...], classes: int) -> tuple[int, int]:
    """(T, V) of a spec the task fits, or why it does not."""
    shapes = ", ".join(f"{i.label} {show(i.shape)}{' (token ids)' if i.tokens else ''}" for i in inputs) or "one"
    if (len(inputs) != 2 or not all(i.tokens and len(i.shape) == 1 for i in inputs)
            or inputs[0].shape != inputs[1].shape):
        raise DlcError(f"the built-in task `pairs` feeds two inputs of token ids of one length, each read by an "
                       f"embed: `input seq T as ids` (two sequences side by side) and `input seq T as types` "
                       f"(each token's segment); the spec's inputs are {shapes}")
    (steps,), (ids, types) = inputs[0].shape, inputs
    if steps < 2 or steps % 2:
        raise DlcError(f"the built-in task `pairs` puts two sequences of T/2 tokens side by side: T must be even "
                       f"and at least 2 (the spec's input {ids.label} is seq {steps})")
    if ids.vocab < 2 or types.vocab < 2:
        raise DlcError(f"the built-in task `pairs` draws tokens from 2 or more ids and segments 0 and 1: the embeds "
                       f"reading {ids.label} and {types.label} have vocab={ids.vocab} and vocab={types.vocab}")
    if classes not in (1, 2):
        raise DlcError(f"the built-in task `pairs` has 2 classes (the second sequence repeats the first, or not); "
                       f"the spec's output has {classes} units")
    return steps, ids.vocab


def pair_task(inputs: tuple[InputWanted, ...], classes: int, n: int,
              seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n samples: the two inputs' int64 arrays (n, T) by label, and int64 classes (n,)."""
    steps, vocab = _check(inputs, classes)
    half = steps // 2
    rng = np.random.default_rng([seed, 15])
    first = rng.integers(0, vocab, (n, half), dtype=np.int64)
    y = rng.permutation(np.arange(n) % 2)
    second = first.copy()
    fresh = np.flatnonzero(y == 0)
    while len(fresh):  # with a few tokens a fresh draw may repeat the first sequence: drawn again
        second[fresh] = rng.integers(0, vocab, (len(fresh), half), dtype=np.int64)
        fresh = fresh[(second[fresh] == first[fresh]).all(axis=1)]
    ids = np.concatenate([first, second], axis=1)
    types = np.repeat(np.arange(2, dtype=np.int64), half)[None].repeat(n, axis=0)
    return {inputs[0].label: ids, inputs[1].label: types}, y.astype(np.int64)
