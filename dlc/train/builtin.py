"""Built-in data sets that need no download, shaped to the spec they train (`--data NAME`).

- xor: the four points of the XOR truth table (train only).
- spirals: K interleaved 2-D spirals, K the output width (the CS231n case study's data).
- blobs: K Gaussian clusters in F dimensions, K the output width, F the input width.
- glyphs: the digits 0-9 drawn procedurally from pen strokes (arcs and lines) with a random shift,
  scale, rotation, shear, stroke width, jittered stroke points and pixel noise, rendered at the
  spec's input size (C@HxW, with C copies of one grey image, or a square vector H·W).
- reverse, sort, copy: token sequences with a target at every step (dlc.train.sequences).
- pairs: two inputs, token ids and token types, for sequence-pair matching (dlc.train.pairs).
Every set is a function of its seed and sizes alone.
"""

from __future__ import annotations

import math

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.catalog import InputWanted, Wanted, builtin_source
from dlc.train.dataset import ByInput, Data, Split, take
from dlc.train.pairs import PAIRS_SIZES, pair_task
from dlc.train.sequences import SEQUENCE_SIZES, TARGETS, sequence_task

BUILTIN_SIZES = {  # default (train, val, test) sizes
    "xor": (4, 0, 0), "spirals": (600, 150, 150), "blobs": (600, 150, 150), "glyphs": (6000, 1000, 1000),
    **{name: SEQUENCE_SIZES for name in TARGETS}, "pairs": PAIRS_SIZES,
}


def _splits(x: np.ndarray | ByInput, y: np.ndarray, sizes: tuple[int, int, int], name: str) -> Data:
    a, b, c = sizes
    parts = [Split(take(x, slice(lo, hi)), y[lo:hi]) if hi > lo else None
             for lo, hi in ((0, a), (a, a + b), (a + b, a + b + c))]
    return Data(*parts, name=name)


def _vector_input(input_shape, name: str, width: int | None = None) -> int:
    if len(input_shape) != 1 or (width is not None and input_shape[0] != width):
        need = f"a {width}-vector input" if width else "a vector input"
        raise DlcError(f"the built-in data set `{name}` needs {need}; the spec's input is {show(input_shape)}")
    return input_shape[0]


def xor(input_shape, classes: int, sizes=None, seed: int = 0) -> Data:
    _vector_input(input_shape, "xor", 2)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    return Data(Split(x, np.array([0, 1, 1, 0], np.int64)), name="xor")


def spirals(input_shape, classes: int, sizes, seed: int = 0) -> Data:
    """K arms of 4 radians each, radius 0..1, angle noise 0.2 (CS231n, "Putting it together")."""
    _vector_input(input_shape, "spirals", 2)
    n = sum(sizes)
    rng = np.random.default_rng([seed, 11])
    y = rng.permutation(np.arange(n) % classes)
    r = rng.random(n)
    angle = y * (2 * np.pi / classes) + r * 4 + rng.normal(0, 0.2, n)
    x = np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1).astype(np.float32)
    return _splits(x, y.astype(np.int64), sizes, "spirals")


def blobs(input_shape, classes: int, sizes, seed: int = 0) -> Data:
    """Unit-variance Gaussian clusters around centres drawn uniformly from [-4, 4]^F."""
    f = _vector_input(input_shape, "blobs")
    n = sum(sizes)
    rng = np.random.default_rng([seed, 12])
    centres = rng.uniform(-4, 4, (classes, f))
    y = rng.permutation(np.arange(n) % classes)
    x = (centres[y] + rng.standard_normal((n, f))).astype(np.float32)
    return _splits(x, y.astype(np.int64), sizes, "blobs")


# ------------------------------------------------------------------------------------------ glyphs

def _arc(cx, cy, rx, ry, a0, a1, n=10):
    """Points on an elliptical arc; angles in degrees with y pointing down (90 is the bottom)."""
    a = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))


# Pen strokes of each digit in a unit box (x right, y down), one polyline per stroke.
STROKES = {
    0: [_arc(0.5, 0.5, 0.27, 0.42, 0, 360, 18)],
    1: [[(0.33, 0.25), (0.55, 0.08), (0.55, 0.92)]],
    2: [_arc(0.5, 0.3, 0.26, 0.22, 170, 400, 10) + [(0.22, 0.92), (0.8, 0.92)]],
    3: [_arc(0.5, 0.29, 0.24, 0.21, 200, 450, 10), _arc(0.5, 0.71, 0.27, 0.21, 270, 520, 10)],
    4: [[(0.62, 0.92), (0.62, 0.08), (0.18, 0.66), (0.84, 0.66)]],
    5: [[(0.76, 0.08), (0.32, 0.08), (0.28, 0.46)] + _arc(0.5, 0.66, 0.26, 0.26, 232, 520, 12)],
    6: [[(0.7, 0.08), (0.45, 0.25), (0.28, 0.5), (0.25, 0.68)], _arc(0.5, 0.68, 0.25, 0.24, 180, 540, 16)],
    7: [[(0.2, 0.08), (0.8, 0.08), (0.4, 0.92)]],
    8: [_arc(0.5, 0.28, 0.22, 0.2, 0, 360, 14), _arc(0.5, 0.7, 0.27, 0.22, 0, 360, 16)],
    9: [_arc(0.5, 0.32, 0.25, 0.24, 0, 360, 16), [(0.75, 0.32), (0.72, 0.6), (0.55, 0.92)]],
}


def _segments(digit: int) -> np.ndarray:
    """(S, 2, 2): every stroke cut into its straight pieces."""
    segs = [(p, q) for stroke in STROKES[digit] for p, q in zip(stroke[:-1], stroke[1:])]
    return np.array(segs, np.float32)


def _render(digit: int, n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """n random variants of one digit as (n, h, w) grey images in [0, 1]."""
    segs = _segments(digit)  # (S, 2, 2): segment, end, xy
    size = min(h, w)
    # A random affine map per image: unit box centred at 0, scaled to ~65% of the image, rotated,
    # sheared and shifted; stroke points jitter by ~3% of the glyph so no two images share a shape.
    scale = size * rng.uniform(0.55, 0.75, n)
    theta = np.radians(rng.uniform(-15, 15, n))
    shear = rng.uniform(-0.25, 0.25, n)
    cos, sin = np.cos(theta), np.sin(theta)
    m = np.stack([np.stack([cos, cos * shear - sin], 1), np.stack([sin, sin * shear + cos], 1)], 1)
    m *= scale[:, None, None]
    centre = np.stack([w / 2 + rng.uniform(-0.12, 0.12, n) * size,
                       h / 2 + rng.uniform(-0.12, 0.12, n) * size], 1)
    pts = segs[None] - 0.5 + rng.normal(0, 0.03, (n, *segs.shape))
    pts = np.einsum("nij,nsej->nsei", m, pts) + centre[:, None, None, :]
    width = size * rng.uniform(0.05, 0.1, n)
    # squared distance from each pixel centre to the nearest segment, per axis to spare the temporaries
    pts = pts.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + np.float32(0.5)
    ax, ay = pts[:, :, 0, 0, None], pts[:, :, 0, 1, None]  # (n, S, 1) segment starts
    bx, by = pts[:, :, 1, 0, None] - ax, pts[:, :, 1, 1, None] - ay  # segment directions
    px, py = xx.ravel() - ax, yy.ravel() - ay  # (n, S, P)
    t = np.clip((px * bx + py * by) / np.maximum(bx * bx + by * by, np.float32(1e-9)), 0, 1)
    px -= t * bx
    py -= t * by
    d = np.sqrt((px * px + py * py).min(axis=1))  # (n, P)
    ink = np.clip(width[:, None] / 2 + 0.5 - d, 0, 1)  # one pixel of anti-aliasing at the edge
    ink += rng.normal(0, 1, ink.shape) * rng.uniform(0, 0.1, (n, 1))
    return np.clip(ink, 0, 1).reshape(n, h, w).astype(np.float32)


def glyphs(input_shape, classes: int, sizes, seed: int = 0) -> Data:
    """Digits 0-9 at the spec's input size: C@HxW (C equal channels) or a square vector."""
    if classes != 10:
        raise DlcError(f"glyphs are the 10 digits; the spec's output has {classes} units")
    if len(input_shape) == 3:
        c, h, w = input_shape
    elif len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        c, h = 1, math.isqrt(input_shape[0])
        w = h
    else:
        raise DlcError(f"glyphs need an image input or a square vector (784 = 28x28); "
                       f"the spec's input is {show(input_shape)}")
    if min(h, w) < 8:
        raise DlcError(f"glyphs need images of at least 8x8 (the spec's input is {show(input_shape)})")
    n = sum(sizes)
    rng = np.random.default_rng([seed, 13])
    y = rng.permutation(np.arange(n) % 10)
    x = np.empty((n, h, w), np.float32)
    chunk = max(1, 4_000_000 // (h * w * 30))  # keeps each (n, S, P) array near 16 MB
    for digit in range(10):
        where = np.flatnonzero(y == digit)
        for lo in range(0, len(where), chunk):
            idx = where[lo:lo + chunk]
            x[idx] = _render(digit, len(idx), h, w, rng)
    x = np.repeat(x[:, None], c, axis=1) if len(input_shape) == 3 else x.reshape(n, h * w)
    return _splits(x, y.astype(np.int64), sizes, "glyphs")


def builtin_bytes(name: str, input_shape: tuple[int, ...], sizes: tuple[int, int, int]) -> int:
    """What a built-in set's arrays hold once made: float32 inputs with an int64 label each, for the
    sequence tasks int64 token ids with an int64 target at every step (making them takes more), for
    pairs two int64 inputs of the first's shape and a label."""
    values = math.prod(input_shape)
    if name in TARGETS:
        return sum(sizes) * 16 * values
    return sum(sizes) * ((16 if name == "pairs" else 4) * values + 8)


# Each set's generator, under the name dlc.train.catalog lists it by (tests/train/test_data_sources.py
# checks that the two agree). The sequence tasks take the embedding's vocabulary too, pairs every input
# (builtin_data passes them).
BUILTIN = {"xor": xor, "spirals": spirals, "blobs": blobs, "glyphs": glyphs, **dict.fromkeys(TARGETS, sequence_task),
           "pairs": pair_task}


def builtin_data(name: str, input_shape, classes: int, sizes=None, seed: int = 0, vocab: int | None = None,
                 inputs: tuple[InputWanted, ...] = ()) -> Data:
    """A built-in set by name; sizes (train, val, test) default to BUILTIN_SIZES (xor is fixed).

    classes: the output's width (of each step, for a sequence output); vocab: the embedding's
    vocabulary when the spec reads token ids, which the sequence tasks draw their tokens from;
    inputs: every input of a spec with several, which pairs feeds.
    """
    builtin_source(name)  # refuses a name the table does not list
    sizes = tuple(BUILTIN_SIZES[name]) if sizes is None else tuple(sizes)
    if name != "xor" and sizes[0] < 1:
        raise DlcError(f"the training split of `{name}` needs at least one sample")
    if name in TARGETS:
        x, y = sequence_task(name, tuple(input_shape), classes, vocab, sum(sizes), seed)
        return _splits(x, y, sizes, name)
    if name == "pairs":
        x, y = pair_task(inputs, classes, sum(sizes), seed)
        return _splits(ByInput(x), y, sizes, name)
    return BUILTIN[name](tuple(input_shape), classes, sizes, seed)


def builtin_set(name: str, want: Wanted) -> Data:
    """The built-in sets' reader in dlc.train.catalog's table, with its one signature."""
    return builtin_data(name, want.input_shape, want.classes, want.sizes, want.seed, vocab=want.vocab,
                        inputs=want.inputs)
