"""Input normalisation, computed on the training split only and stored with the weights.

It travels in a checkpoint's meta (`meta["normalize"]`) and an exported model's metadata, so
inference applies the same numbers: `normalize(x, meta["normalize"])`. A statistic is a scalar, or a
list with one value per feature (`dlc.layers.feature_axis`): per channel of an image, per feature of
a vector or of a sequence's steps.
"""

from __future__ import annotations

import math

import numpy as np

from dlc.choices import NORMALIZE_KINDS
from dlc.errors import DlcError
from dlc.layers import feature_axis


STATS = {"none": (), "mean-std": ("mean", "std"), "minmax": ("min", "max")}  # what each kind stores


def _feature_axis(x: np.ndarray) -> int:
    return feature_axis(x.shape[1:]) + 1  # x is batch-first


def _stat_axes(x: np.ndarray) -> tuple[int, ...]:
    """Axes a statistic is taken over: all but the features."""
    keep = _feature_axis(x)
    return tuple(a for a in range(x.ndim) if a != keep)


def _plain(v: np.ndarray) -> float | list[float]:
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


def stats_error(norm: object, name: str) -> str | None:
    """What is wrong with stored statistics `name` (a checkpoint's meta["normalize"], an exported model's
    metadata: both files a user may have edited), or None: a `kind`, and for it finite numbers or lists."""
    if not isinstance(norm, dict) or norm.get("kind") not in NORMALIZE_KINDS:
        return f"`{name}` is not an object with a `kind` among {', '.join(NORMALIZE_KINDS)}"
    for key in STATS[norm["kind"]]:
        v = norm.get(key)
        values = v if isinstance(v, list) and v else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
            return f"`{name}.{key}` is not a finite number or a list of them"
    return None


def _broadcast(v, x: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.ndim == 0:
        return v
    axis = _feature_axis(x)
    if v.size != x.shape[axis]:
        raise DlcError(f"the stored normalisation has {v.size} values per statistic; the input has "
                       f"{x.shape[axis]} features")
    shape = [1] * x.ndim
    shape[axis] = v.size
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
