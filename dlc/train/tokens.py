"""Token files: a flat array of token ids (nanoGPT's train.bin, or an .npy), never read whole.

A .bin file has no header, so its element type comes from --token-dtype or from a meta.json beside it
({"dtype": "uint16", "vocab_size": 50257}); an .npy carries its own. The ids are cut into windows of
T + 1 tokens one after another (inputs the first T, targets the last T), and each epoch visits them in
a seeded random order (dlc.train.order): a window is drawn at random each step, as nanoGPT draws its
offsets, but every token is a target once per epoch, so a resumed run sees no window twice and skips
none. A val.bin (or val.npy) beside train.bin is the validation split. Every id is checked against
the spec's vocabulary once, by reading the file in chunks. The file is held as a np.memmap (its dtype,
size and data offset, an .npy's header parsed), but windows are read with pread, so that the pages
read do not stay mapped and resident.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.catalog import Wanted
from dlc.train.dataset import Data, Split

TOKEN_DTYPES = ("uint16", "uint32")
META_FILE = "meta.json"
CHUNK = 1 << 24  # ids read at a time by the vocabulary check


@dataclass(frozen=True)
class TokenWindows:
    """Windows of a memory-mapped id array as lazy rows (dlc.train.dataset.LazyRows): window k is
    ids[k*T + shift : k*T + shift + T], shift 0 for the inputs and 1 for the targets."""

    ids: np.ndarray  # np.memmap
    steps: int
    count: int
    shift: int
    top: int  # the largest id in the file (checked against the vocabulary)
    picked: np.ndarray | None = None  # the windows a held-out split keeps; None: all `count`

    dtype = np.dtype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), self.steps)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return len(self) * self.steps

    @property
    def nbytes(self) -> int:
        return self.size * 8

    def __len__(self) -> int:
        return self.count if self.picked is None else len(self.picked)

    def __getitem__(self, idx) -> np.ndarray:
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).ravel()
        windows = rows if self.picked is None else self.picked[rows]
        return self.read(windows * self.steps + self.shift, self.steps)

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """ids[s:s + length] for each start, as int64 rows, read with pread rather than through the map:
        each page fault in a map reads ahead and maps up to megabytes around it, which then count as the
        process's resident memory (random windows of a 4 GB file made 3 GB of it resident in a minute)."""
        dtype, item = self.ids.dtype, self.ids.dtype.itemsize
        out = np.empty((len(starts), length), np.int64)
        fd = os.open(self.ids.filename, os.O_RDONLY)
        try:
            for i, start in enumerate(starts):
                out[i] = np.frombuffer(os.pread(fd, length * item, self.ids.offset + int(start) * item), dtype)
        finally:
            os.close(fd)
        return out

    def subset(self, idx: np.ndarray) -> TokenWindows:
        return replace(self, picked=np.asarray(idx) if self.picked is None else self.picked[idx])

    def identity(self) -> bytes:
        """The file's path, size and a digest of 64 spread chunks of it (hashing gigabytes would take the
        time of an epoch), with the windows taken."""
        digest = hashlib.sha256(f"{self.ids.filename} {self.ids.size} {self.steps} {self.shift}".encode())
        length = min(4096, self.ids.size)
        digest.update(self.read(np.linspace(0, self.ids.size - length, 64).astype(np.int64), length))
        if self.picked is not None:
            digest.update(np.ascontiguousarray(self.picked))
        return digest.digest()

    # The label checks (fit.step_labels, losses.check_class_labels) ask targets for these; the bounds
    # were found when the file was read.
    def min(self) -> int:
        return 0

    def max(self) -> int:
        return self.top

    def astype(self, dtype, copy: bool = True) -> TokenWindows:
        """Already int64: indexing gives int64 rows (fit.step_labels asks for them)."""
        return self


def _meta(path: Path) -> dict:
    meta = path.with_name(META_FILE)
    if not meta.is_file():
        return {}
    try:
        doc = json.loads(meta.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DlcError(f"{meta}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DlcError(f"{meta}: expected an object such as {{\"dtype\": \"uint16\", \"vocab_size\": 50257}}")
    return doc


def map_ids(path: Path, dtype: str | None) -> np.ndarray:
    """The file's ids as a read-only memory map: an .npy's own, or a .bin's of `dtype`."""
    if path.suffix.lower() == ".npy":
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DlcError(f"{path}: not a readable .npy file ({e})") from None
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DlcError(f"{path}: a token file holds one flat array of integer ids (found {ids.dtype} "
                           f"of shape {ids.shape})")
        return ids
    if dtype is None:
        raise DlcError(f"{path}: a .bin token file has no header; give its element type: --token-dtype uint16 "
                       f"(nanoGPT's) or uint32, or a {META_FILE} beside it with \"dtype\"")
    if dtype not in TOKEN_DTYPES:
        raise DlcError(f"{path.with_name(META_FILE)}: dtype {dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
    size, item = os.path.getsize(path), np.dtype(dtype).itemsize
    if size == 0:
        raise DlcError(f"{path}: the token file is empty")
    if size % item:
        raise DlcError(f"{path}: {size:,} bytes is not a whole number of {dtype} ids: the file is truncated "
                       f"or not {dtype}")
    return np.memmap(path, dtype, mode="r")


def _largest(ids: np.ndarray, limit: int) -> int:
    """The largest id, which must be below `limit`: read in chunks from the file, not through the map
    (the pages read would stay resident)."""
    top = 0
    with open(ids.filename, "rb") as f:
        f.seek(ids.offset)
        for start in range(0, ids.size, CHUNK):
            chunk = np.fromfile(f, ids.dtype, count=CHUNK)
            bad = np.flatnonzero((chunk < 0) | (chunk >= limit))
            if bad.size:
                raise DlcError(f"{ids.filename}: token id {chunk[bad[0]]} (at position {start + bad[0]:,}) is past "
                               f"the vocabulary: the spec's embed and output take ids 0..{limit - 1}")
            top = max(top, int(chunk.max()) if chunk.size else 0)
    return top


def _windows(path: Path, dtype: str | None, steps: int, limit: int) -> TokenWindows:
    ids = map_ids(path, dtype)
    count = (ids.size - 1) // steps
    if count < 1:
        raise DlcError(f"{path}: {ids.size:,} token ids are too few for one window of {steps + 1} "
                       f"(the spec's input is seq {steps})")
    return TokenWindows(ids, steps, count, 0, _largest(ids, limit))


def load_tokens(where: str, want: Wanted | None) -> Data:
    """A token file (and a val file beside it) as windows of the spec's input length, memory-mapped."""
    path = Path(where)
    if want is None or len(want.input_shape) != 1 or want.vocab is None:
        shape = show(want.input_shape) if want else "not given"
        raise DlcError(f"{where}: a token file trains a language model, so the spec must read token ids "
                       f"(`input seq T` then `embed D vocab=V`); its input is {shape}")
    meta = _meta(path)
    dtype = want.token_dtype or meta.get("dtype")
    limit = min(want.vocab, want.classes)
    vocab = meta.get("vocab_size")
    if isinstance(vocab, int) and vocab > limit:
        raise DlcError(f"{path.with_name(META_FILE)}: vocab_size {vocab} is more than the spec takes: its embed "
                       f"has vocab={want.vocab} and its output {want.classes} classes per step")
    steps = want.input_shape[0]
    splits = {}
    val_name = path.name.replace("train", "val")
    for what, p in (("train", path), ("val", path.with_name(val_name) if val_name != path.name else None)):
        if p is not None and p.is_file():
            x = _windows(p, dtype, steps, limit)
            splits[what] = Split(x, replace(x, shift=1))
    train = splits["train"]
    counts = ", ".join(f"{len(s):,} {what}" for what, s in splits.items())
    note = (f"{where}: {train.x.ids.size:,} {train.x.ids.dtype} token ids, memory-mapped; windows of {steps} "
            f"predicting the next id at every step, in a random order each epoch: {counts}")
    return Data(train, splits.get("val"), name=where, notes=[note])
