"""Training data: loaders for the formats people keep MNIST-like data in, checked against the spec.

Every loader returns a `Data` of splits. Images are float32 NCHW, vectors (N, F); pixel bytes (uint8)
become float32 in [0, 1], as in the classic mnist.pkl.gz, so one model sees the same scale whatever
file its data came from. Class labels are int64 (N,); regression or soft targets are float32 (N, K).

Normalisation is computed on the training split only and travels in the checkpoint's meta
(`meta["normalize"]`), so inference applies the same numbers: `normalize(x, meta["normalize"])`.
A statistic is a scalar, or a list with one value per channel of an image (axis 1 of NCHW), per
feature of a vector (axis 1 of (N, F)), per feature of a sequence (the last axis of (N, T, D)).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show

# Seeds of the independent random streams a run draws from; each is (seed, STREAM, ...) so that
# changing one use (say, the augmentation) leaves the others' numbers as they were.
STREAM_ORDER, STREAM_VAL, STREAM_NOISE, STREAM_AUGMENT = 1, 2, 3, 4

NORMALIZE_KINDS = ("none", "mean-std", "minmax")


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Data:
    train: Split
    val: Split | None = None
    test: Split | None = None
    name: str = ""  # the file or built-in set, for messages
    notes: list[str] = field(default_factory=list)  # what was done on the user's behalf, to announce

    def splits(self) -> dict[str, Split]:
        return {k: s for k, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}


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


# ---------------------------------------------------------------------------------------- readers

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


def load_idx(path) -> Data:
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


def load_pickle(path) -> Data:
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


def load_npz(path) -> Data:
    """.npz with x and y; optionally x_val, y_val and x_test, y_test."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DlcError(f"{path}: unreadable .npz ({e})")
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


def load_csv(path) -> Data:
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


def load_file(path) -> Data:
    """Pick the reader by what the path is: a directory or *idx* file, .pkl[.gz], .npz, .csv[.gz]."""
    p = Path(path)
    if not p.exists():
        raise DlcError(f"no such data file or directory: {path}")
    name = p.name.lower()
    if p.is_dir() or "idx" in name:
        return load_idx(p)
    if name.endswith((".pkl", ".pkl.gz", ".pickle")):
        return load_pickle(p)
    if name.endswith(".npz"):
        return load_npz(p)
    if name.endswith((".csv", ".csv.gz")):
        return load_csv(p)
    raise DlcError(f"{path}: unknown data format (expected an IDX directory or file, .pkl.gz, .npz or .csv)")


# ---------------------------------------------------------------------------- fitting the spec

def _as_image(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """The image a sample shape can be read as: itself, H x W with one channel, or a square vector."""
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (1, *shape)
    r = math.isqrt(shape[0])
    return (1, r, r) if r * r == shape[0] else None


def _fit_image(x: np.ndarray, src: tuple[int, int, int], dst: tuple[int, int, int]) -> np.ndarray:
    """Centre-pad or centre-crop each image to dst's size; one channel repeats to dst's channels."""
    x = x.reshape(len(x), *src)
    (c, h, w), (dc, dh, dw) = src, dst
    out = np.zeros((len(x), c, dh, dw), np.float32)
    top, left = (dh - h) // 2, (dw - w) // 2
    sy, sx = max(-top, 0), max(-left, 0)  # crop offsets into the source
    ty, tx = max(top, 0), max(left, 0)  # paste offsets into the target
    ch, cw = min(h - sy, dh - ty), min(w - sx, dw - tx)
    out[:, :, ty:ty + ch, tx:tx + cw] = x[:, :, sy:sy + ch, sx:sx + cw]
    return np.repeat(out, dc, axis=1) if c == 1 and dc > 1 else out


def fit_inputs(data: Data, input_shape: tuple[int, ...], reshape: bool = False) -> Data:
    """Make every split's inputs the spec's input shape, or say why they cannot be.

    Equal element counts reshape automatically (announced in data.notes); other sizes need
    `reshape=True`, which reads both sides as images and centre-pads/crops them (MNIST's 28x28 into
    LeNet-5's 32x32, as LeCun et al. 1998 did) and repeats a single channel.
    """
    shape = tuple(data.train.x.shape[1:])
    target = tuple(input_shape)
    if shape == target:
        return data
    if math.prod(shape) == math.prod(target):
        fitted = {k: replace(s, x=s.x.reshape(len(s), *target)) for k, s in data.splits().items()}
        note = f"reshaped the inputs of {data.name} from {show(shape)} to {show(target)}"
    elif reshape:
        src, dst = _as_image(shape), _as_image(target)
        if src is None or dst is None or not (src[0] == dst[0] or src[0] == 1):
            raise DlcError(f"{data.name}: cannot fit inputs of shape {show(shape)} to the spec's input "
                           f"{show(target)}: --reshape pads/crops images and repeats one channel only")
        fitted = {k: replace(s, x=_fit_image(s.x, src, dst).reshape(len(s), *target))
                  for k, s in data.splits().items()}
        note = f"fitted the inputs of {data.name} from {show(shape)} to {show(target)} (centred pad/crop)"
    else:
        raise DlcError(f"{data.name}: inputs have shape {show(shape)} ({math.prod(shape)} values) but the "
                       f"spec's input is {show(target)} ({math.prod(target)} values); "
                       f"--reshape pads or crops images to fit")
    return replace(data, **fitted, notes=[*data.notes, note])


def check_labels(data: Data, out_width: int) -> None:
    """Class labels must lie in 0..K-1 for a K-unit output; target rows must be K wide."""
    for what, s in data.splits().items():
        y = s.y
        if y.ndim == 2:
            if y.shape[1] != out_width:
                raise DlcError(f"{data.name}: {what} targets are {y.shape[1]} wide but the spec's output "
                               f"has {out_width} units")
        elif y.dtype != np.int64 and out_width > 1:
            raise DlcError(f"{data.name}: {what} labels must be class indices 0..{out_width - 1} "
                           f"(found non-integer values)")
        elif out_width > 1 and (y.min() < 0 or y.max() >= out_width):
            raise DlcError(f"{data.name}: {what} labels range over {y.min()}..{y.max()} but the spec's "
                           f"output has {out_width} units (classes 0..{out_width - 1})")


def carve_val(data: Data, fraction: float, seed: int) -> Data:
    """Hold out a seeded `fraction` of train as the validation split when the data has none."""
    if not fraction:
        return data
    if data.val is not None:
        return replace(data, notes=[*data.notes, f"{data.name} has its own validation split; --val is not used"])
    if not 0 < fraction < 1:
        raise DlcError(f"--val must be a fraction between 0 and 1 (received {fraction})")
    n = len(data.train)
    k = max(1, round(fraction * n))
    if k >= n:
        raise DlcError(f"{data.name}: --val {fraction} leaves no training samples out of {n}")
    order = np.random.default_rng([seed, STREAM_VAL]).permutation(n)
    val, train = np.sort(order[:k]), np.sort(order[k:])
    t = data.train
    return replace(data, train=Split(t.x[train], t.y[train]), val=Split(t.x[val], t.y[val]),
                   notes=[*data.notes, f"held out {k} of {n} training samples for validation (seed {seed})"])


# -------------------------------------------------------------------------------- normalisation

def _stat_axes(x: np.ndarray) -> tuple[int, ...]:
    """Axes a statistic is taken over: all but channels (images, vectors) or features (sequences)."""
    keep = x.ndim - 1 if x.ndim == 3 else 1
    return tuple(a for a in range(x.ndim) if a != keep)


def _plain(v: np.ndarray):
    v = np.asarray(v, np.float64).ravel()
    return float(v[0]) if v.size == 1 else v.tolist()


def normalizer(x_train: np.ndarray, kind: str) -> dict:
    """The statistics `kind` needs, from the training inputs only, as JSON-ready numbers."""
    if kind not in NORMALIZE_KINDS:
        raise DlcError(f"unknown normalisation `{kind}` (expected {', '.join(NORMALIZE_KINDS)})")
    if kind == "none":
        return {"kind": "none"}
    axes = _stat_axes(x_train)
    x = x_train.astype(np.float64)
    if kind == "mean-std":
        return {"kind": kind, "mean": _plain(x.mean(axis=axes)), "std": _plain(x.std(axis=axes))}
    return {"kind": kind, "min": _plain(x.min(axis=axes)), "max": _plain(x.max(axis=axes))}


def _broadcast(v, x: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.ndim == 0:
        return v
    shape = [1] * x.ndim
    shape[x.ndim - 1 if x.ndim == 3 else 1] = v.size
    return v.reshape(shape)


def normalize(x: np.ndarray, norm: dict | None) -> np.ndarray:
    """Apply stored statistics (see normalizer); a constant feature is centred but not scaled."""
    if not norm or norm["kind"] == "none":
        return x
    if norm["kind"] == "mean-std":
        lo, scale = _broadcast(norm["mean"], x), _broadcast(norm["std"], x)
    else:
        lo, hi = _broadcast(norm["min"], x), _broadcast(norm["max"], x)
        scale = hi - lo
    scale = np.where(scale > 1e-8, scale, np.float32(1))
    return ((x - lo) / scale).astype(np.float32)


# ---------------------------------------------------------------------------------- batch order

def epoch_order(n: int, seed: int, epoch: int, labels: np.ndarray | None = None,
                balanced: bool = False) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) alone so a resumed run repeats it.

    Balanced: slot i of every run of K slots holds each class once (in shuffled order), and each
    class's samples are taken in a shuffled cycle, so small classes repeat and large ones are sampled.
    """
    rng = np.random.default_rng([seed, STREAM_ORDER, epoch])
    if not balanced:
        return rng.permutation(n)
    classes = np.unique(labels)
    k = len(classes)
    slots = np.concatenate([rng.permutation(k) for _ in range(-(-n // k))])[:n]
    order = np.empty(n, np.int64)
    for c, cls in enumerate(classes):
        where = np.flatnonzero(slots == c)
        members = rng.permutation(np.flatnonzero(labels == cls))
        order[where] = members[np.arange(len(where)) % len(members)]
    return order


def announce_range(data: Data, norm_kind: str) -> Data:
    """Add a hint when raw inputs are far from unit scale and nothing normalises them."""
    peak = float(np.abs(data.train.x).max())
    if norm_kind == "none" and peak > 10:
        return replace(data, notes=[*data.notes, f"inputs of {data.name} reach {peak:g}; "
                                                 f"--normalize mean-std usually trains better"])
    return data


# ------------------------------------------------------------------------- from flags to arrays

@dataclass
class DataSource:
    """How a run's data was made, kept in the checkpoint so `--resume` rebuilds the same arrays."""

    source: str  # a built-in set's name, or the absolute path of a file or directory
    builtin: bool = False
    sizes: tuple[int, int, int] | None = None  # built-in split sizes (train, val, test)
    reshape: bool = False
    val: float | None = None  # fraction of train held out when the data has no validation split
    seed: int = 0  # for built-in sets and the held-out split
    normalize: str = "none"


def data_source(text: str, **kw) -> DataSource:
    """A --data value: an existing file or directory, else a built-in set's name."""
    from dlc.train.builtin import BUILTIN

    p = Path(os.path.expanduser(text))
    if p.exists():
        return DataSource(str(p.resolve()), **kw)
    if text in BUILTIN:
        return DataSource(text, builtin=True, **kw)
    raise DlcError(f"--data {text}: no such file or directory, and no built-in data set of that name "
                   f"(built-in: {', '.join(BUILTIN)})")


def prepare(src: DataSource, input_shape: tuple[int, ...], classes: int, tokens: bool = False,
            norm: dict | None = None) -> tuple[Data, dict]:
    """Load, fit to the spec, check labels, hold out validation, normalise: (data, normalisation).

    tokens: the spec reads token ids (`input seq T`), which must be integers and are not normalised.
    `norm` reuses stored statistics (a resumed run) instead of computing them from train.
    """
    from dlc.train.builtin import builtin_data

    if src.builtin:
        data = builtin_data(src.source, input_shape, classes, src.sizes, src.seed)
    else:
        data = load_file(src.source)
    data = fit_inputs(data, input_shape, src.reshape)
    check_labels(data, classes)
    data = carve_val(data, src.val, src.seed)
    if tokens:
        if not all(np.issubdtype(s.x.dtype, np.integer) for s in data.splits().values()):
            raise DlcError(f"{data.name}: the spec reads token ids, but the inputs are not integers")
        return data, {"kind": "none"}
    data = replace(data, **{k: Split(s.x.astype(np.float32, copy=False), s.y) for k, s in data.splits().items()})
    norm = norm or normalizer(data.train.x, src.normalize)
    data = announce_range(data, src.normalize)
    return replace(data, **{k: Split(normalize(s.x, norm), s.y) for k, s in data.splits().items()}), norm
