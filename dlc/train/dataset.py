"""A data set as dlc train holds it: splits of inputs and targets, already checked.

Images are float32 NCHW, vectors (N, F), token ids int64 (N, T); class labels are int64 (N,), or
(N, T) for a label at every step of a sequence output; regression or soft targets float32 (N, K).
A network with several inputs reads ByInput: an array per input label, whose rows go together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

import numpy as np


@runtime_checkable
class LazyRows(Protocol):
    """Inputs read a batch at a time (decoded images, windows of a memory-mapped token file), for data
    larger than memory: indexing by a slice or an index array gives a NumPy array of those rows only."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def __getitem__(self, idx) -> np.ndarray: ...

    def subset(self, idx: np.ndarray) -> "LazyRows":
        """The rows idx, still unread (a held-out split)."""

    def identity(self) -> bytes:
        """What the fingerprint hashes instead of every row: the files and their sizes."""


@dataclass
class ByInput:
    """The inputs of a network with several: an array per input label, in the spec's order, with one row
    per sample each. Rows are taken from every array at once, so a batch (and a shuffled order) keeps
    each sample's inputs together; indexing gives the engine's feed, a dict by input name."""

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, idx) -> dict[str, np.ndarray]:
        return {label: a[idx] for label, a in self.arrays.items()}

    def subset(self, idx: np.ndarray) -> "ByInput":
        return ByInput(self[idx])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


Inputs = Union[np.ndarray, LazyRows, ByInput]


def take(x: Inputs, idx: np.ndarray) -> Inputs:
    """Rows idx of inputs: an array's copy, the same rows of each input's, or lazy rows still unread."""
    return x.subset(idx) if isinstance(x, (LazyRows, ByInput)) else x[idx]


@dataclass
class Split:
    x: Inputs
    y: Inputs  # lazy too for a token file, whose targets are its windows one id on

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Data:
    train: Split
    val: Split | None = None
    test: Split | None = None
    name: str = ""  # the file or built-in set, for messages
    notes: list[str] = field(default_factory=list)  # what was done on the user's behalf, to announce
    vocab: str | None = None  # a text file's characters by token id, which `dlc sample` decodes with
    class_names: list[str] | None = None  # an image folder's classes by label, which `dlc infer` prints

    def splits(self) -> dict[str, Split]:
        return {k: s for k, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}

    def fingerprint(self) -> dict:
        """Each split's sample count and one SHA-256 over every input and target (their dtypes and
        shapes too): a checkpoint keeps it, so that --resume can tell the run's data from changed data."""
        digest = hashlib.sha256()
        for name, split in self.splits().items():
            xs = split.x.arrays.values() if isinstance(split.x, ByInput) else (split.x,)
            for a in (*xs, split.y):
                digest.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
                digest.update(a.identity() if isinstance(a, LazyRows) else np.ascontiguousarray(a))
        return {"samples": {name: len(split) for name, split in self.splits().items()},
                "sha256": digest.hexdigest()}
