"""The files of a run directory.

last.npz is the checkpoint a run resumes from; best.npz the best epoch's (by validation accuracy,
else training loss), whose weights wait in memory until the next checkpoint is written, so a best
epoch costs no extra write; log.jsonl has one line per epoch, appended before the checkpoint that
counts the epoch (resume trims lines past its checkpoint, so a kill between the two loses nothing);
metrics.json is written at the end. Temp files that killed writes left are removed when a run opens its
folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from dlc.atomic import atomic_write, stale_temps
from dlc.engine.params import save_checkpoint
from dlc.errors import DlcError

RUN_SCHEMA = "dlc.train/1"
LAST, BEST, LOG, METRICS = "last.npz", "best.npz", "log.jsonl", "metrics.json"
RUN_FILES = (LAST, BEST, LOG, METRICS)  # what a run writes into its folder

Snapshot = tuple[dict, dict, dict]  # (params, state, meta), as save_checkpoint takes them


def write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def append_line(path: Path, record: dict) -> None:
    """One JSON line in one write(2) on an O_APPEND descriptor: a reader never sees half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_log(path: Path, upto_epoch: int) -> list[dict]:
    """The epoch records of log.jsonl up to an epoch; lines past it (written after the checkpoint a
    run resumes from) or cut short by a kill are dropped, and the file is rewritten to match."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("epoch", math.inf) <= upto_epoch:
            records.append(r)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


class RunFiles:
    """The run directory `out`, and the best checkpoint that waits to be written. With writes=False
    (a data-parallel process other than rank 0) nothing is read or written: rank 0 keeps the files."""

    def __init__(self, out: Path, writes: bool = True):
        self.out, self.writes = out, writes
        self.last, self.best, self.log = out / LAST, out / BEST, out / LOG
        self.pending_best: Snapshot | None = None
        self.last_save = time.perf_counter()
        if not writes:
            return
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DlcError(f"cannot make the run folder {out}: {e.strerror}") from None
        for name in RUN_FILES:  # what writes of an earlier, killed run left; never read, never renamed
            for tmp in stale_temps(out / name):
                tmp.unlink(missing_ok=True)

    def history(self, fresh: bool, upto_epoch: int) -> list[dict]:
        """The epoch records so far: none for a fresh run (an old log goes), else log.jsonl's."""
        if not self.writes:
            return []
        if fresh:
            self.log.unlink(missing_ok=True)
            return []
        return read_log(self.log, upto_epoch)

    def flush(self, last: Snapshot | None) -> None:
        """Write the pending best checkpoint, then `last` (None: keep the last.npz there is)."""
        if not self.writes:
            self.pending_best = None
        elif self.pending_best is not None:
            save_checkpoint(self.best, *self.pending_best)
            self.pending_best = None
        if last is not None and self.writes:
            save_checkpoint(self.last, *last)
        self.last_save = time.perf_counter()

    def since_save(self) -> float:
        return time.perf_counter() - self.last_save

    def append(self, record: dict) -> None:
        if self.writes:
            append_line(self.log, record)

    def write_metrics(self, doc: dict) -> None:
        if self.writes:
            write_atomic(self.out / METRICS, json.dumps(doc, indent=1))
