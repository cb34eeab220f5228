"""Run folders as curves: the epoch records of log.jsonl, averaged over the seeds of a --repeat run."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from dlc.errors import DlcError

SPLITS = ("train", "val", "test")


@dataclass
class Run:
    name: str  # as the legend shows it: the folder's name
    seeds: list[list[dict]]  # the log.jsonl records of each run: one, or one per seed folder of --repeat


@dataclass
class Curve:
    epochs: list[int]
    mean: list[float]
    std: list[float] | None  # over the seeds, population std as `dlc train --repeat` reports it


def read_run(folder: Path) -> Run:
    """A run folder of `dlc train`, or the folder of a --repeat run holding one folder per seed."""
    if not folder.is_dir():
        raise DlcError(f"{folder}: no such run folder")
    logs = [folder / "log.jsonl"] if (folder / "log.jsonl").exists() else \
        sorted(folder.glob("*/log.jsonl"), key=lambda p: _natural(p.parent.name))
    if not logs:
        raise DlcError(f"{folder} holds no log.jsonl: is it a folder written by `dlc train`?")
    seeds = [_records(p) for p in logs]
    seeds = [s for s in seeds if s]
    if not seeds:
        raise DlcError(f"{folder}: no epoch has finished yet (log.jsonl is empty)")
    return Run(folder.resolve().name, seeds)


def _records(path: Path) -> list[dict]:
    """Epoch records in epoch order; a line cut short by a kill is left out, as the trainer does."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("epoch"), int):
            records.append(r)
    return sorted(records, key=lambda r: r["epoch"])


def _natural(name: str) -> list:
    """seed2 before seed10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def curve(run: Run, key: str) -> Curve | None:
    """`key` ("train_loss", "val_accuracy", "lr", ...) per epoch, over the epochs every seed reached."""
    per_seed = [{r["epoch"]: float(r[key]) for r in records
                 if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])} for records in run.seeds]
    epochs = sorted(set.intersection(*(set(s) for s in per_seed)))
    if not epochs:
        return None
    mean = [statistics.fmean(s[e] for s in per_seed) for e in epochs]
    std = [statistics.pstdev([s[e] for s in per_seed]) for e in epochs] if len(per_seed) > 1 else None
    return Curve(epochs, mean, std)
