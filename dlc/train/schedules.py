"""Learning-rate schedules: `make_schedule(...)` returns lr(t), t the epoch counted from 0.

The rate changes between epochs and holds for every step of one, so a resumed run finds the same rate
from the epoch number alone. With base rate η0 and E epochs in the run:
- constant: η0
- step:     η0 · gamma^floor(t / step_every)                  (gamma 0.1, step_every max(1, E // 3))
- poly:     η0 · (1 - t / E)^power                            (power 0.9, as DeepLab)
- cosine:   lr_min + (η0 - lr_min) · (1 + cos(π · (t mod P) / P)) / 2, P = restart_every
            (SGDR, Loshchilov & Hutter 2017, with warm restarts every P epochs; P = E means none;
            lr_min 0)
- exp:      η0 · gamma^t, or η0 · e^(-k·t) when k is given     (gamma 0.95; CS231n's exponential decay)
- linear:   η0 + (lr_min - η0) · t / E                         (from η0 towards lr_min, default 0)
- invsqrt:  η0 / √(1 + k·t)                                    (k 1)

Warmup (`warmup=N` steps, any schedule) scales optimizer step s (counted from 0) by min(1, (s + 1) / N):
a linear ramp from η/N up to the scheduled rate at step N - 1 (Goyal et al. 2017's gradual warmup;
Vaswani et al. 2017 ramp linearly too), which keeps adam's first updates on a fresh transformer small.
"""

from __future__ import annotations

import math
from typing import Callable

from dlc.choices import SCHEDULES
from dlc.errors import DlcError


def _positive(name: str, value) -> None:
    if value <= 0:
        raise DlcError(f"{name} must be > 0 (received {value})")


def warmup_factor(step: int, warmup: int) -> float:
    """The share of the scheduled rate that optimizer step `step` (counted from 0) takes."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def make_schedule(kind: str, lr: float, epochs: int, *, step_every: int | None = None,
                  gamma: float | None = None, power: float | None = None,
                  restart_every: int | None = None, lr_min: float | None = None,
                  k: float | None = None) -> Callable[[int], float]:
    """lr(epoch) for one of SCHEDULES; keys left None take the defaults in the module docstring."""
    if kind not in SCHEDULES:
        raise DlcError(f"unknown schedule `{kind}` (expected {', '.join(SCHEDULES)})")
    epochs = max(1, epochs)
    lr_min = 0.0 if lr_min is None else lr_min
    if kind == "constant":
        return lambda t: lr
    if kind == "step":
        every = max(1, epochs // 3) if step_every is None else int(step_every)
        gamma = 0.1 if gamma is None else gamma
        _positive("step_every", every)
        return lambda t: lr * gamma ** (t // every)
    if kind == "poly":
        power = 0.9 if power is None else power
        return lambda t: lr * max(0.0, 1 - t / epochs) ** power
    if kind == "cosine":
        period = epochs if restart_every is None else int(restart_every)
        _positive("restart_every", period)
        return lambda t: lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (t % period) / period)) / 2
    if kind == "exp":
        if k is not None:
            return lambda t: lr * math.exp(-k * t)
        gamma = 0.95 if gamma is None else gamma
        return lambda t: lr * gamma ** t
    if kind == "linear":
        return lambda t: lr + (lr_min - lr) * min(t, epochs) / epochs
    k = 1.0 if k is None else k
    return lambda t: lr / math.sqrt(1 + k * t)
