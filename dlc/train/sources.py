"""From the --data flags to normalised arrays: where a run's data comes from, and how it is made.

The source is kept in the checkpoint, so `--resume` rebuilds the same arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from dlc.errors import DlcError
from dlc.normalize import normalize, normalizer
from dlc.train.catalog import (BUILTIN_SETS, SOURCES, InputWanted, Wanted, builtin_names, builtin_source,
                               file_source)
from dlc.train.dataset import Data, LazyRows, Split
from dlc.train.fit import announce_range, carve_val, check_labels, fit_inputs, step_labels
from dlc.train.readers import load_file


@dataclass
class DataSource:
    """How a run's data was made, kept in the checkpoint so `--resume` rebuilds the same arrays."""

    source: str  # a built-in set's name, or the absolute path of a file or directory
    builtin: bool = False
    sizes: tuple[int, int, int] | None = None  # built-in split sizes (train, val, test)
    reshape: bool = False
    layout: str | None = None  # chw or hwc: how a file's 3-D samples are laid out (None: from the shapes)
    val: float | None = None  # fraction of train held out when the data has no validation split
    seed: int = 0  # for built-in sets and the held-out split
    normalize: str = "none"
    resize: bool = False  # images of another size: scaled and centre-cropped to the spec's input
    token_dtype: str | None = None  # a .bin token file's element type, when the flags give it


def data_source(text: str, **kw) -> DataSource:
    """A --data value: an existing file or directory, else a built-in set's name."""
    if not text.strip():
        raise DlcError(f"--data {text!r} is empty: name a file, a directory, or a built-in set "
                       f"({builtin_names()})")
    p = Path(os.path.expanduser(text))
    if p.exists():
        return DataSource(str(p.resolve()), **kw)
    if text in BUILTIN_SETS:
        return DataSource(text, builtin=True, **kw)
    raise DlcError(f"--data {text}: no such file or directory, and no built-in data set of that name "
                   f"(built-in: {builtin_names()})")


def prepare(src: DataSource, input_shape: tuple[int, ...], classes: int, tokens: bool = False,
            norm: dict | None = None, on_phase: Callable[[str], None] = lambda what: None, *,
            steps: int | None = None, vocab: int | None = None,
            inputs: tuple[InputWanted, ...] = ()) -> tuple[Data, dict]:
    """Load, fit to the spec, check labels, hold out validation, normalise: (data, normalisation).

    classes: the output's width, of each step when the output is a sequence of `steps` (TxV).
    tokens: the spec reads token ids (`input seq T`), which must be integers and are not normalised;
    vocab: the embedding's vocabulary then (the sequence tasks' tokens, a text file's limit).
    inputs: every input of the spec; with several, the data is an array per input (ByInput), which its
    reader checks against them, and is not normalised.
    `norm` reuses stored statistics (a resumed run) instead of computing them from train.
    on_phase(what) names each phase as it starts (MNIST takes seconds to read and fit), for a display.
    """
    want = Wanted(tuple(input_shape), classes, vocab, src.sizes, src.seed, src.resize, src.token_dtype, inputs)
    several = len(inputs) > 1
    if several:
        check_several(src, inputs)
    if src.builtin:
        on_phase(f"making the built-in set {src.source}")
        data = builtin_source(src.source).read(src.source, want)
    else:
        on_phase(f"reading {src.source}")
        data = load_file(src.source, want)
    if not several:
        on_phase(f"fitting {data.name} to the spec")
        data = fit_inputs(data, input_shape, src.reshape, src.layout)
    if steps is None:
        check_labels(data, classes)
    else:
        data = step_labels(data, steps, classes)
    data = carve_val(data, src.val, src.seed)
    if several:
        return data, {"kind": "none"}
    if tokens:
        if not all(np.issubdtype(s.x.dtype, np.integer) for s in data.splits().values()):
            raise DlcError(f"{data.name}: the spec reads token ids, but the inputs are not integers")
        return data, {"kind": "none"}
    on_phase(f"normalising {data.name}")
    if isinstance(data.train.x, LazyRows):
        return normalize_lazy(data, src.normalize, norm)
    data = replace(data, **{k: Split(s.x.astype(np.float32, copy=False), s.y) for k, s in data.splits().items()})
    norm = norm or normalizer(data.train.x, src.normalize)
    data = announce_range(data, src.normalize)
    return replace(data, **{k: Split(normalize(s.x, norm), s.y) for k, s in data.splits().items()}), norm


def spec_inputs(graph) -> tuple[InputWanted, ...]:
    """Every input of a compiled spec as its data must feed it, in the spec's order."""
    from dlc.layers.dense import token_vocab

    return tuple(InputWanted(n.name, tuple(n.out_shape), token_vocab(graph, n.name)) for n in graph.inputs)


def check_several(src: DataSource, inputs: tuple[InputWanted, ...]) -> None:
    """Refuse, before reading it, data that cannot feed a spec with several inputs, and the flags that
    shape one input's data."""
    labels = ", ".join(i.label for i in inputs)
    source = builtin_source(src.source) if src.builtin else file_source(Path(src.source))
    if not source.several:
        takes = " or ".join(s.name for s in SOURCES if s.several)
        raise DlcError(f"--data {src.source}: {source.name} data feeds one input, but the spec has {len(inputs)} "
                       f"({labels}); data with an array per input: {takes}")
    flags = [flag for flag, on in (("--normalize", src.normalize != "none"), ("--reshape", src.reshape),
                                   ("--layout", src.layout), ("--resize", src.resize)) if on]
    if flags:
        raise DlcError(f"{' and '.join(flags)} fit one input's data; a spec with several inputs ({labels}) "
                       f"reads each array as it is")


NORM_SAMPLE = 2048  # training samples a folder's normalisation statistics are taken over


def normalize_lazy(data: Data, kind: str, norm: dict | None) -> tuple[Data, dict]:
    """Images decoded a batch at a time are normalised as each batch is decoded; their statistics come
    from a seeded sample of the training split (reading every image for them would cost an epoch)."""
    if (norm or {"kind": kind})["kind"] == "none":
        return data, {"kind": "none"}
    if norm is None:
        n = len(data.train)
        take = np.sort(np.random.default_rng(0).permutation(n)[:NORM_SAMPLE])
        norm = normalizer(data.train.x[take], kind)
        if n > NORM_SAMPLE:
            data = replace(data, notes=[*data.notes, f"--normalize {kind}: statistics of {NORM_SAMPLE} "
                                                     f"of the {n:,} training images"])
    return replace(data, **{k: Split(s.x.normalized(norm), s.y) for k, s in data.splits().items()}), norm
