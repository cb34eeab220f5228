"""Readers for the formats people keep MNIST-like data in: IDX, the classic pickle, .npz, CSV.

Every reader returns a `Data` of checked splits. Pixel bytes (uint8) become float32 in [0, 1], as in
the classic mnist.pkl.gz, so one model sees the same scale whatever file its data came from.
dlc.train.catalog names each reader beside the file names it reads and calls it as reader(path, want);
a file holds its own shapes (dlc.train.fit fits them to the spec), so these readers ignore `want`,
except an .npz for a network with several inputs: its arrays are found and checked by the inputs' labels.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.npz import check_arrays_file
from dlc.layers.spatial import show
from dlc.train.catalog import InputWanted, Wanted, file_source
from dlc.train.dataset import ByInput, Data, Split


def _pixels(x: np.ndarray) -> np.ndarray:
    """Pixel bytes to [0, 1]; other integers stay integers (they may be token ids); floats to float32."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64)
    return x.astype(np.float32, copy=False)


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise DlcError(f"{name}: labels must be numbers (found dtype {y.dtype})")
    y = y.astype(np.float32)
    if not np.all(np.isfinite(y)):
        raise DlcError(f"{name}: labels contain NaN or infinite values")
    if y.ndim == 1 and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


def _split(x, y, name: str, what: str) -> Split:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise DlcError(f"{name}: {what} inputs must have one row per sample (found shape {x.shape})")
    if len(x) != len(y):
        raise DlcError(f"{name}: {what} has {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DlcError(f"{name}: {what} is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise DlcError(f"{name}: {what} inputs must be numbers (found dtype {x.dtype})")
    x = _pixels(x)
    if not np.all(np.isfinite(x)):
        raise DlcError(f"{name}: {what} inputs contain NaN or infinite values")
    return Split(x, _labels(y, name))


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by its magic, whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DlcError(f"{path}: truncated gzip file (the compressed stream ends early)")
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DlcError(f"{path}: damaged gzip file ({e})")


# IDX type codes (LeCun's format description): code -> big-endian numpy dtype.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """One IDX file (gzipped or not): magic 00 00 TYPE NDIM, NDIM big-endian int32 sizes, the data."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DlcError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise DlcError(f"{path}: IDX header is cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    want = math.prod(dims) * dtype.itemsize
    if len(raw) - head != want:
        raise DlcError(f"{path}: IDX header says {'x'.join(map(str, dims))} values ({want} bytes) "
                       f"but the file holds {len(raw) - head} bytes of data")
    return np.frombuffer(raw, dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


IDX_NAMES = {  # role -> the stems MNIST and its mirrors use
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx(folder: Path, role: str) -> Path | None:
    for stem in IDX_NAMES[role]:
        for p in (folder / stem, folder / f"{stem}.gz"):
            if p.is_file():
                return p
    return None


def _idx_pair(xp: Path, yp: Path, what: str) -> Split:
    x, y = read_idx(xp), read_idx(yp)
    if x.ndim != 3:
        raise DlcError(f"{xp}: expected images N x H x W, found {x.ndim} dimensions")
    if y.ndim != 1:
        raise DlcError(f"{yp}: expected labels N, found {y.ndim} dimensions")
    if len(x) != len(y):
        raise DlcError(f"{xp.name} holds {len(x)} images but {yp.name} holds {len(y)} labels")
    return _split(x[:, None], y, str(xp), what)


def load_idx(path, want: Wanted | None = None) -> Data:
    """MNIST IDX: a directory with the four standard files, or one images file beside its labels."""
    path = Path(path)
    if path.is_dir():
        found = {role: _find_idx(path, role) for role in IDX_NAMES}
        if found["train_x"] is None or found["train_y"] is None:
            raise DlcError(f"{path}: no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] here")
        if (found["test_x"] is None) != (found["test_y"] is None):
            missing = "t10k-images-idx3-ubyte" if found["test_x"] is None else "t10k-labels-idx1-ubyte"
            raise DlcError(f"{path}: the test split lacks {missing}[.gz]")
        test = _idx_pair(found["test_x"], found["test_y"], "test") if found["test_x"] else None
        return Data(_idx_pair(found["train_x"], found["train_y"], "train"), None, test, name=str(path))
    labels = path.with_name(path.name.replace("images", "labels").replace("idx3", "idx1"))
    if labels == path or not labels.is_file():
        raise DlcError(f"{path}: an IDX images file needs its labels beside it ({labels.name})")
    return Data(_idx_pair(path, labels, "train"), name=str(path))


# The classic pickle holds numpy arrays only; anything else in a data file is refused, not run.
_PICKLE_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                   ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar"),
                   ("_codecs", "encode")}  # how protocol 2 spells a bytes object in Python 3


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not a numpy array")
        return super().find_class(module, name)


def load_pickle(path, want: Wanted | None = None) -> Data:
    """mnist.pkl.gz: gzip + pickle (latin1) of (train, valid, test), each (images (N, 784), labels)."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # a damaged pickle raises whatever its bytes happen to trigger
        raise DlcError(f"{path}: unreadable pickle ({e})")
    if not (isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 3
            and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in obj)):
        raise DlcError(f"{path}: expected (train, valid, test), each a pair (images, labels)")
    splits = [_split(x, y, str(path), what) for (x, y), what in zip(obj, ("train", "valid", "test"))]
    return Data(*splits, name=str(path))


def load_npz(path, want: Wanted | None = None) -> Data:
    """.npz with x and y; optionally x_val, y_val and x_test, y_test. For a network with several inputs,
    an array per input label instead of x (LABEL, LABEL_val, LABEL_test), y as ever."""
    path = Path(path)
    check_arrays_file(str(path))  # numpy would read a huge header, or allocate what a header declares, first
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DlcError(f"{path}: unreadable .npz ({e})")
    if want is not None and len(want.inputs) > 1:
        return _npz_by_input(arrays, path, want.inputs)
    if "x" not in arrays or "y" not in arrays:
        raise DlcError(f"{path}: needs arrays `x` and `y` (found {', '.join(sorted(arrays)) or 'none'})")
    splits = {}
    for what in ("val", "test"):
        xs, ys = arrays.get(f"x_{what}"), arrays.get(f"y_{what}")
        if (xs is None) != (ys is None):
            raise DlcError(f"{path}: has {'x' if ys is None else 'y'}_{what} without its partner")
        splits[what] = None if xs is None else _split(xs, ys, str(path), what)
    return Data(_split(arrays["x"], arrays["y"], str(path), "train"), splits["val"], splits["test"],
                name=str(path))


SPLIT_SUFFIXES = {"train": "", "val": "_val", "test": "_test"}


def _npz_by_input(arrays: dict[str, np.ndarray], path: Path, inputs: tuple[InputWanted, ...]) -> Data:
    """The splits of an .npz for a network with several inputs: each input's array under its label, the
    target under y, a split's arrays all present or all absent (train's present), one row per sample each.
    Token ids must be whole numbers below the vocabulary of the embed that reads them; other inputs are
    numbers, read as float32, each sample shaped as its input."""
    labels = [i.label for i in inputs]
    if "y" in labels:
        raise DlcError(f"{path}: the array y is the target, but the spec also has an input labelled y: "
                       f"relabel the input")
    expected = {name + suffix for name in (*labels, "y") for suffix in SPLIT_SUFFIXES.values()}
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise DlcError(f"{path}: holds the array `{unknown[0]}`, which is no input of the spec (its inputs: "
                       f"{', '.join(labels)}; the target is y; a split's arrays end in _val or _test)")
    splits: dict[str, Split | None] = {}
    for what, suffix in SPLIT_SUFFIXES.items():
        keys = [label + suffix for label in (*labels, "y")]
        if what != "train" and not any(k in arrays for k in keys):
            splits[what] = None
            continue
        missing = [k for k in keys if k not in arrays]
        if missing:
            key = missing[0]
            role = "the target" if key == "y" + suffix else f"the input {key[:len(key) - len(suffix)]}"
            raise DlcError(f"{path}: no array `{key}` for {role} (found {', '.join(sorted(arrays))})")
        y = np.asarray(arrays["y" + suffix])
        if len(y) == 0:
            raise DlcError(f"{path}: `y{suffix}` is empty")
        xs = {i.label: _input_array(np.asarray(arrays[i.label + suffix]), i, f"{path}: `{i.label + suffix}`", len(y))
              for i in inputs}
        splits[what] = Split(ByInput(xs), _labels(y, str(path)))
    return Data(splits["train"], splits["val"], splits["test"], name=str(path))


def _input_array(a: np.ndarray, wanted: InputWanted, name: str, rows: int) -> np.ndarray:
    """One input's array of an .npz, checked against the input it feeds (name: the file and the key)."""
    if a.ndim < 1 or len(a) != rows:
        raise DlcError(f"{name} has {len(a) if a.ndim else 'no'} rows, but the target has {rows}")
    if a.shape[1:] != wanted.shape:
        raise DlcError(f"{name} holds samples of shape {show(a.shape[1:]) or 'one value'}, but the input "
                       f"{wanted.label} is {show(wanted.shape)}")
    if wanted.tokens:
        if not np.issubdtype(a.dtype, np.integer):
            raise DlcError(f"{name} holds {a.dtype}, but the input {wanted.label} is read by an embed, which "
                           f"takes whole token ids (an integer array)")
        if a.size and (a.min() < 0 or a.max() >= wanted.vocab):
            raise DlcError(f"{name}: its token ids range over {a.min()}..{a.max()}, but the embed reading "
                           f"{wanted.label} has vocab={wanted.vocab} (ids 0..{wanted.vocab - 1})")
        return a.astype(np.int64, copy=False)
    if not np.issubdtype(a.dtype, np.number):
        raise DlcError(f"{name} must hold numbers (found dtype {a.dtype})")
    a = _pixels(a).astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise DlcError(f"{name} holds NaN or infinite values")
    return a


def load_csv(path, want: Wanted | None = None) -> Data:
    """CSV: the label first, then the features; a first row that is not all numbers is a header."""
    path = Path(path)
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise DlcError(f"{path}: not a text CSV file")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]  # a header
    if not lines:
        raise DlcError(f"{path}: no data rows")
    try:
        table = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DlcError(f"{path}: every row must hold the same number of comma-separated numbers ({e})")
    if table.shape[1] < 2:
        raise DlcError(f"{path}: each row needs a label and at least one feature")
    return Data(_split(table[:, 1:].astype(np.float32), table[:, 0], str(path), "train"), name=str(path))


def load_file(path, want: Wanted | None = None) -> Data:
    """Read a file or directory with the reader dlc.train.catalog picks by what the path is."""
    p = Path(path)
    if not p.exists():
        raise DlcError(f"no such data file or directory: {path}")
    return file_source(p).read(str(p), want)


# CIFAR's python version (Krizhevsky 2009): pickled dicts of `data` (N x 3072 bytes: 1024 red, then
# green, then blue, each row-major 32x32) and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100); the
# class names are in batches.meta (label_names) or meta (fine_label_names).
CIFAR_FILES = {  # split -> its files: CIFAR-10's, else CIFAR-100's
    "train": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("train",)),
    "test": (("test_batch",), ("test",)),
}


def _cifar_members(path: Path) -> dict[str, bytes]:
    """File name -> bytes of the pickles in a CIFAR folder or its .tar.gz (read by name, never extracted)."""
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    import tarfile

    try:
        with tarfile.open(path) as tar:
            return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DlcError(f"{path}: not a readable .tar.gz ({e})") from None


def _cifar_pickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # a damaged pickle raises whatever its bytes happen to trigger
        raise DlcError(f"{where}: unreadable pickle ({e})") from None
    if not isinstance(obj, dict):
        raise DlcError(f"{where}: expected a CIFAR batch (a dict of `data` and labels)")
    return obj


def load_cifar(path, want: Wanted | None = None) -> Data:
    """CIFAR-10 or CIFAR-100 as distributed: the cifar-10-batches-py / cifar-100-python folder or its .tar.gz."""
    path = Path(path)
    members = _cifar_members(path)
    hundred = "train" in members and "data_batch_1" not in members
    splits = {}
    for split, names in CIFAR_FILES.items():
        names = names[hundred]
        if split == "train" and not all(n in members for n in names):
            raise DlcError(f"{path}: a CIFAR set needs {', '.join(names)} (missing "
                           f"{next(n for n in names if n not in members)})")
        xs, ys = [], []
        for name in (n for n in names if n in members):
            batch = _cifar_pickle(members[name], f"{path}:{name}")
            data, labels = batch.get("data"), batch.get("fine_labels" if hundred else "labels")
            if data is None or labels is None or np.asarray(data).ndim != 2 or np.asarray(data).shape[1] != 3072:
                raise DlcError(f"{path}:{name}: expected `data` of N x 3072 pixel bytes and "
                               f"`{'fine_labels' if hundred else 'labels'}`")
            xs.append(np.asarray(data, np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels))
        if xs:
            splits[split] = _split(np.concatenate(xs), np.concatenate(ys), str(path), split)
    meta = members.get("meta" if hundred else "batches.meta")
    names = _cifar_pickle(meta, f"{path}:meta").get("fine_label_names" if hundred else "label_names") if meta else None
    return Data(splits["train"], None, splits.get("test"), name=str(path),
                class_names=[str(n) for n in names] if names else None)
