"""Data augmentation of one training batch, drawn from the run's own augmentation stream.

Flips, shifts and noise change the inputs; mixup (Zhang et al. 2018) also blends the targets, which
then become soft: class labels turn into probability rows (xent and mse accept them), values of a
one-unit output blend as values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show


@dataclass(frozen=True)
class Augment:
    flip: bool = False  # mirror left-right, each image with probability 1/2
    shift: int = 0  # pad by this many zero pixels and crop back at a random offset
    noise: float = 0.0  # add Gaussian noise of this standard deviation
    mixup: float = 0.0  # Beta(alpha, alpha) mixing weight; 0 is off

    @property
    def active(self) -> bool:
        return self.flip or self.shift > 0 or self.noise > 0 or self.mixup > 0


def check_augment(aug: Augment, input_shape: tuple[int, ...]) -> None:
    if (aug.flip or aug.shift) and len(input_shape) != 3:
        what = "--flip" if aug.flip else "--shift"
        raise DlcError(f"{what} needs an image input (C@HxW); the spec's input is {show(input_shape)}")
    if aug.shift < 0 or aug.noise < 0 or aug.mixup < 0:
        raise DlcError("--shift, --noise and --mixup must be >= 0")


def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mirror = rng.random(len(x)) < 0.5
    x = x.copy()
    x[mirror] = x[mirror, :, :, ::-1]
    return x


def shift(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pad by n and crop each image back to its size at a random offset: shifts of up to n pixels."""
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (n, n), (n, n)))
    dy, dx = rng.integers(0, 2 * n + 1, size=(2, len(x)))
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def soft_targets(y: np.ndarray, classes: int) -> np.ndarray:
    """Class indices as one-hot float32 rows; values (one unit, or rows) as float32."""
    if y.ndim == 1 and classes > 1:
        t = np.zeros((len(y), classes), np.float32)
        t[np.arange(len(y)), y] = 1
        return t
    return y.astype(np.float32)


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, classes: int, rng: np.random.Generator):
    """x' = λx + (1-λ)x[perm], the same for the targets, λ ~ Beta(alpha, alpha), one λ per batch."""
    lam = np.float32(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    t = soft_targets(y, classes)
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


def augment_batch(x: np.ndarray, y: np.ndarray, aug: Augment, classes: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The batch after every augmentation `aug` asks for, in a fixed order (so a run replays exactly)."""
    if aug.flip:
        x = flip(x, rng)
    if aug.shift:
        x = shift(x, aug.shift, rng)
    if aug.noise:
        x = x + rng.normal(0, aug.noise, x.shape).astype(np.float32)
    if aug.mixup:
        x, y = mixup(x, y, aug.mixup, classes, rng)
    return x, y
