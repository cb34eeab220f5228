"""Every data source `--data` reads, in one table: a built-in set by name, a file or directory by its name.

Each Source says how it is found (a name, file-name patterns, a directory), one line for `dlc train
--help`, and its reader as "module:function", imported only when a run reads it (the way the CLI finds
its commands), so that the help and the errors built from this table need neither numpy nor the readers.

Every reader has one signature, `reader(where: str, want: Wanted) -> Data`: `where` is the set's name
or the file's path, `want` what the spec asks of the data (a reader uses what it needs; a file that
holds its own arrays needs none of it). For data larger than memory a reader returns lazy rows
(dlc.train.dataset.LazyRows: image files, token windows), read a batch at a time. A new source is one
entry here, its reader, and its sample in tests/train/test_data_sources.py, which checks that every
entry has one.

The first entry in table order that matches a path reads it. IDX claims any directory (so that a
folder of misnamed MNIST files is told which names it lacks), so a new directory source goes before it
and claims only a directory that `holds` its own files (CIFAR's "data_batch_*", or "*/" for a folder of
class folders; an image folder also claims loose images, to say that they need class folders).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dlc.errors import DlcError

if TYPE_CHECKING:  # numpy comes with it; the help is built without it
    from dlc.train.dataset import Data


@dataclass(frozen=True)
class InputWanted:
    """One input of the spec, as its data must feed it."""

    label: str  # the input's node name: the key of its array
    shape: tuple[int, ...]  # one sample's
    vocab: int | None = None  # token ids (read by an `embed`): the smallest vocabulary among their readers

    @property
    def tokens(self) -> bool:
        return self.vocab is not None


@dataclass(frozen=True)
class Wanted:
    """What the spec asks of its data, for the readers that make or cut data to fit it."""

    input_shape: tuple[int, ...]
    classes: int  # the output's width (each step's, for a sequence output)
    vocab: int | None = None  # the embedding's vocabulary when the spec reads token ids
    sizes: tuple[int, int, int] | None = None  # a built-in set's (train, val, test); None: its default
    seed: int = 0
    resize: bool = False  # images of another size are scaled and centre-cropped to the input's
    token_dtype: str | None = None  # a .bin token file's element type (uint16 or uint32), when given
    inputs: tuple[InputWanted, ...] = ()  # every input, in the spec's order (the first's are input_shape, vocab)


@dataclass(frozen=True)
class Source:
    name: str  # a built-in set: what --data names; a file format: what a list of formats calls it
    summary: str  # one line for `dlc train --help`
    reader: str  # "module:function", called as function(where, want) -> Data
    files: tuple[str, ...] = ()  # patterns a file's lower-cased name matches (fnmatch)
    folder: bool = False  # reads a directory
    holds: tuple[str, ...] = ()  # ...one with an entry matching one of these (a subdirectory's name ends in /); (): any
    several: bool = False  # feeds a network with several inputs (an array per input label)

    @property
    def builtin(self) -> bool:
        """Named by --data, not found at a path."""
        return not self.files and not self.folder

    def matches(self, path: Path) -> bool:
        if path.is_dir():
            return self.folder and (not self.holds or any(
                fnmatch(p.name.lower() + "/" * p.is_dir(), pattern) for p in path.iterdir() for pattern in self.holds))
        return any(fnmatch(path.name.lower(), pattern) for pattern in self.files)

    def read(self, where: str, want: Wanted | None) -> Data:
        module, function = self.reader.split(":")
        read: Callable[[str, Wanted | None], Data] = getattr(importlib.import_module(module), function)
        return read(where, want)


SOURCES: tuple[Source, ...] = (
    Source("xor", "the XOR truth table's four points (2 inputs; train only)", "dlc.train.builtin:builtin_set"),
    Source("spirals", "K interleaved 2-D spirals, K the output width (CS231n)", "dlc.train.builtin:builtin_set"),
    Source("blobs", "K Gaussian clusters in F dimensions (F inputs, K outputs)", "dlc.train.builtin:builtin_set"),
    Source("glyphs", "the digits 0-9 drawn from pen strokes at the input's size", "dlc.train.builtin:builtin_set"),
    Source("reverse", "random token sequences; target: the input backwards", "dlc.train.builtin:builtin_set"),
    Source("sort", "random token sequences; target: their tokens sorted", "dlc.train.builtin:builtin_set"),
    Source("copy", "random token sequences; target: the input itself", "dlc.train.builtin:builtin_set"),
    Source("pairs", "token ids and types of two sequences; class 1: the second repeats",
           "dlc.train.builtin:builtin_set", several=True),
    # Files are tried in this order: text first, then "idx" anywhere in a name (MNIST's files and its
    # mirrors' spellings: train-images-idx3-ubyte[.gz], train-images.idx3-ubyte), then the suffixes.
    Source(".txt", "UTF-8 text, for a character-level language model", "dlc.train.text:text_data",
           files=("*.txt",)),
    # Your own data: CIFAR's pickles before the image folder (CIFAR-100's folder holds files train and
    # test), both before IDX; token files are memory-mapped, never read whole.
    Source("CIFAR", "CIFAR-10/100 as distributed: the python folder or its .tar.gz",
           "dlc.train.readers:load_cifar", files=("*cifar*.tar.gz", "*cifar*.tgz"), folder=True,
           holds=("data_batch_*", "train")),
    Source("images", "a folder per class of PNG/JPEG images (or train/, val/, test/ so)",
           "dlc.train.images:load_folder", folder=True, holds=("*/", "*.png", "*.jpg", "*.jpeg")),
    Source("tokens", "token ids: .npy, or .bin of uint16/uint32 (--token-dtype)",
           "dlc.train.tokens:load_tokens", files=("*.bin", "*.npy")),
    Source("IDX", "MNIST's IDX files: their directory, or an images file", "dlc.train.readers:load_idx",
           files=("*idx*",), folder=True),
    Source(".pkl[.gz]", "pickled arrays (train, valid, test): mnist.pkl.gz", "dlc.train.readers:load_pickle",
           files=("*.pkl", "*.pkl.gz", "*.pickle")),
    Source(".npz", "x and y, or an array per input label and y; _val, _test: splits", "dlc.train.readers:load_npz",
           files=("*.npz",), several=True),
    Source(".csv[.gz]", "a row per sample: the label, then the features", "dlc.train.readers:load_csv",
           files=("*.csv", "*.csv.gz")),
)

BUILTIN_SETS = {s.name: s for s in SOURCES if s.builtin}
FILE_FORMATS = [s for s in SOURCES if not s.builtin]


def builtin_names() -> str:
    return ", ".join(BUILTIN_SETS)


def format_names() -> str:
    """IDX, .npz or .txt: the file formats, as a list a sentence ends with."""
    names = [s.name for s in FILE_FORMATS]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def builtin_source(name: str) -> Source:
    if name not in BUILTIN_SETS:
        raise DlcError(f"no built-in data set `{name}` (expected {builtin_names()})")
    return BUILTIN_SETS[name]


def file_source(path: Path) -> Source:
    """The format that reads an existing path: the first in table order that claims it."""
    for source in FILE_FORMATS:
        if source.matches(path):
            return source
    raise DlcError(f"{path}: unknown data format (expected {format_names()})")


def data_choices() -> str:
    """What --data takes, for its help and for the messages that ask for it."""
    return f"a file or directory: {format_names()}; or a built-in set: {builtin_names()}"


def data_help() -> str:
    """--data's help; each source's own line is in the command's epilog."""
    return f"Training data ({data_choices()}); each is described at the end."


def data_epilog() -> str:
    """A line per source, built-in sets then files, for the end of `dlc train --help` (\b keeps click
    from rewrapping the lines into one paragraph)."""
    width = max(len(s.name) for s in SOURCES)
    sets = [f"  {s.name:<{width}}  {s.summary}" for s in BUILTIN_SETS.values()]
    files = [f"  {s.name:<{width}}  {s.summary}" for s in FILE_FORMATS]
    return "\n\n".join(["\b\nBuilt-in sets (--data NAME), made to fit the spec:\n" + "\n".join(sets),
                        "\b\nFiles and directories (--data PATH), by name:\n" + "\n".join(files)])
