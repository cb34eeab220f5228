"""Fitting a data set to the spec it trains: input shapes, label ranges, a held-out validation split."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.dataset import Data, Split, take
from dlc.train.streams import STREAM_VAL


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


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _channels_first(data: Data, target: tuple[int, int, int], reshape: bool, layout: str | None) -> Data:
    """Read 3-D samples as images laid out C x H x W (chw, as dlc's networks take them) or H x W x C
    (hwc: channels last, as PIL, Keras and most .npz files of photos keep them), and transpose the second.

    Without a `layout`, a reading fits when it is the spec's image (with --reshape: has its channels, or
    one to repeat). When both readings fit the shapes cannot tell the layout, and guessing would train
    on scrambled pixels without a word, so nothing is guessed."""
    a, b, c = data.train.x.shape[1:]
    first, last = (a, b, c), (c, a, b)
    if layout is None:
        fits = [r for r in (first, last) if r == target]
        if reshape and not fits:
            fits = [r for r in (first, last) if r[0] in (target[0], 1)]
        if len(fits) == 2 and a * b * c > 1:
            raise DlcError(f"{data.name}: inputs of shape {_dims(first)} fit the spec's input {show(target)} two "
                           f"ways, channels first (C x H x W = {_dims(first)}) or channels last (H x W x C, "
                           f"read as {show(last)}); say which the file holds: --layout chw or --layout hwc")
        layout = "hwc" if fits == [last] else "chw"
    if layout == "chw":
        return data
    fitted = {k: replace(s, x=np.ascontiguousarray(s.x.transpose(0, 3, 1, 2))) for k, s in data.splits().items()}
    note = (f"read the inputs of {data.name} as channels last ({_dims(first)} = H x W x C) and transposed "
            f"them to {show(last)}")
    return replace(data, **fitted, notes=[*data.notes, note])


def _same_pixels(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether reshaping one into the other keeps every value where it was: one side is a row of values
    (a flat vector, as MNIST's CSV and pickle keep pixels) or they differ only in axes of size 1."""
    a, b = (tuple(d for d in s if d != 1) for s in (shape, target))
    return len(a) <= 1 or len(b) <= 1 or a == b


def fit_inputs(data: Data, input_shape: tuple[int, ...], reshape: bool = False, layout: str | None = None) -> Data:
    """Make every split's inputs the spec's input shape, or say why they cannot be.

    Channels-last images are transposed to the spec's C@HxW (announced in data.notes). Equal element
    counts reshape automatically when that moves no pixel (a flat row to an image, 28x28 to 1@28x28);
    other sizes need `reshape=True`, which reads both sides as images and centre-pads/crops them
    (MNIST's 28x28 into LeNet-5's 32x32, as LeCun et al. 1998 did) and repeats a single channel.
    Pixel memory is never reinterpreted: an image 32x3x32 is not 3@32x32. `layout` (chw or hwc) says how
    3-D samples are laid out when the shapes cannot.
    """
    target = input_shape if isinstance(input_shape, tuple) else tuple(input_shape)  # a Signal stays one
    if layout is not None and data.train.x.ndim != 4:
        raise DlcError(f"{data.name}: --layout {layout} is for images stored one 3-D array per sample; "
                       f"these samples have shape {_dims(data.train.x.shape[1:])}")
    if data.train.x.ndim == 4 and len(target) == 3:
        data = _channels_first(data, target, reshape, layout)
    shape = tuple(data.train.x.shape[1:])
    if shape == target:
        return data
    if math.prod(shape) == math.prod(target) and _same_pixels(shape, target):
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
    elif math.prod(shape) == math.prod(target):
        raise DlcError(f"{data.name}: inputs have shape {_dims(shape)} but the spec's input is {show(target)}: "
                       f"as many values, but reshaping one into the other would scramble the pixels; "
                       f"--reshape pads or crops images to fit")
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


def step_labels(data: Data, steps: int, classes: int) -> Data:
    """A TxV output predicts a class at each step: targets are T class indices 0..V-1 per sample.

    The readers keep a 2-D label array as float target rows; whole numbers become indices here.
    """
    fitted = {}
    for what, s in data.splits().items():
        y = s.y
        whole = np.issubdtype(y.dtype, np.integer) or bool(np.all(y == np.round(y)))
        if not whole or y.shape[1:] != (steps,):
            raise DlcError(f"{data.name}: the spec's output predicts a class at each of {steps} steps, so each "
                           f"sample needs {steps} class indices; the {what} targets have shape "
                           f"{show(y.shape[1:]) or 'one value'}{'' if whole else ' and are not whole numbers'}")
        if y.min() < 0 or y.max() >= classes:
            raise DlcError(f"{data.name}: {what} labels range over {y.min():g}..{y.max():g} but the spec's output "
                           f"has {classes} classes at each step (0..{classes - 1})")
        fitted[what] = replace(s, y=y.astype(np.int64, copy=False))
    return replace(data, **fitted)


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
    return replace(data, train=Split(take(t.x, train), take(t.y, train)), val=Split(take(t.x, val), take(t.y, val)),
                   notes=[*data.notes, f"held out {k} of {n} training samples for validation (seed {seed})"])


def announce_range(data: Data, norm_kind: str) -> Data:
    """Add a hint when raw inputs are far from unit scale and nothing normalises them."""
    x = data.train.x
    # the largest magnitude without np.abs's copy of the split (MNIST's: 157 MB, 0.3 s of every start)
    peak = max(float(x.max()), -float(x.min()))
    if norm_kind == "none" and peak > 10:
        return replace(data, notes=[*data.notes, f"inputs of {data.name} reach {peak:g}; "
                                                 f"--normalize mean-std usually trains better"])
    return data
