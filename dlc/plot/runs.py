"""Run folders as curves: the epoch records of log.jsonl, averaged over the seeds of a --repeat run."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from dlc.errors import DlcError
from dlc.train.rundir import LOG, read_log

SPLITS = ("train", "val", "test")
FLOAT32_MAX = 3.4028234663852886e38  # float32's largest finite value, numpy's finfo(float32).max


@dataclass
class Run:
    name: str  # as the legend shows it: the folder's name
    seeds: list[list[dict]]  # the log.jsonl records of each run: one, or one per seed folder of --repeat


@dataclass
class Curve:
    epochs: list[int]
    mean: list[float]
    std: list[float] | None  # over the seeds, population std as `dlc train --repeat` reports it
    limits: tuple[float, float]  # the values the metric can take

    def band(self) -> tuple[list[float], list[float]]:
        """mean - std and mean + std, within the metric's limits: seeds at 94%, 100% and 100% have a band
        reaching 100.8%, which no accuracy reaches."""
        lo, hi = self.limits
        std = self.std or [0.0] * len(self.mean)
        return [max(m - s, lo) for m, s in zip(self.mean, std)], [min(m + s, hi) for m, s in zip(self.mean, std)]


def read_run(folder: Path) -> Run:
    """A run folder of `dlc train`, or the folder of a --repeat run holding one folder per seed."""
    if not folder.is_dir():
        raise DlcError(f"{folder}: {'not a folder' if folder.exists() else 'no such run folder'}")
    logs = [folder / LOG] if (folder / LOG).exists() else \
        sorted(folder.glob(f"*/{LOG}"), key=lambda p: _natural(p.parent.name))
    if not logs:
        raise DlcError(f"{folder} holds no {LOG}: is it a folder written by `dlc train`?")
    seeds = [s for s in map(read_log, logs) if s]
    if not seeds:
        raise DlcError(f"{folder}: no epoch has finished yet ({LOG} holds no epoch record)")
    return Run(folder.resolve().name, seeds)


def _natural(name: str) -> list:
    """seed2 before seed10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def curve(run: Run, key: str) -> Curve | None:
    """`key` ("train_loss", "val_accuracy", "lr", ...) per epoch, over the epochs every seed reached."""
    per_seed = [{r["epoch"]: v for r in records if (v := _number(r.get(key))) is not None} for records in run.seeds]
    epochs = sorted(set.intersection(*(set(s) for s in per_seed)))
    if not epochs:
        return None
    mean = [statistics.fmean(s[e] for s in per_seed) for e in epochs]
    std = [statistics.pstdev([s[e] for s in per_seed]) for e in epochs]
    # accuracies are fractions; losses (xent, bce, mse, hinge, and their penalties) and rates are not negative
    limits = (0.0, 1.0) if key.endswith(("accuracy", "top5")) else (0.0, math.inf)
    return Curve(epochs, mean, std if len(per_seed) > 1 else None, limits)


def _number(value) -> float | None:
    """A number a run can log, as a float; None for what else an edited log may hold (text, null, true,
    10**400, 1e308). A run's figures are float32 sums and means, within float32's range; past it, means
    overflow and matplotlib cannot lay out an axis."""
    if type(value) not in (int, float) or not -FLOAT32_MAX <= value <= FLOAT32_MAX:
        return None
    return float(value)
