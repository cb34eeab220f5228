"""The files of a run directory.

last.npz is the checkpoint a run resumes from; best.npz the best epoch's (by validation accuracy,
else training loss), whose weights wait in memory until the next checkpoint is written, so a best
epoch costs no extra write; log.jsonl has one line per epoch, appended before the checkpoint that
counts the epoch (resume trims lines past its checkpoint, so a kill between the two loses nothing);
metrics.json is written at the end. Temp files that killed writes left are removed when a run opens its
folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Iterator

from dlc.atomic import atomic_write, stale_temps
from dlc.engine.params import save_checkpoint
from dlc.errors import DlcError

RUN_SCHEMA = "dlc.train/1"
# What a run's last.npz holds beside the checkpoint's own fields, and of which JSON type: --resume reads
# every one of them, so a checkpoint edited by hand is refused by name before any is used.
RUN_FIELDS = {"spec": str, "file": str, "config": dict, "data": dict, "position": dict, "running": dict,
              "best": dict, "elapsed": (int, float), "rng": dict, "optimizer": dict}
LAST, BEST, LOG, METRICS = "last.npz", "best.npz", "log.jsonl", "metrics.json"
RUN_FILES = (LAST, BEST, LOG, METRICS)  # what a run writes into its folder
LOCK = ".lock"  # held while a run writes its folder; holds the writer's process id

Snapshot = tuple[dict, dict, dict]  # (params, state, meta), as save_checkpoint takes them


def write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def append_line(path: Path, record: dict) -> None:
    """One JSON line in one write(2) on an O_APPEND descriptor: a reader never sees half a line
    (read_log drops a line a full disk cut short)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise DlcError(f"cannot write {path}: {e.strerror or e}") from None


# A log line is about 400 bytes, so this holds some 500,000 epochs; more is not a log dlc wrote.
MAX_LOG_BYTES = 200 * 2**20


def read_log(path: Path) -> list[dict]:
    """The epoch records of a run's log.jsonl in epoch order ([] when there is none). A line that is
    not a record (cut short by a kill) is left out; a file that is not a regular file of text, or is
    larger than any log, is a DlcError naming it, refused before it is read (a FIFO would block)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise DlcError(f"{path} is not a regular file, so not a run log")
        with open(path, "rb") as f:
            raw = f.read(MAX_LOG_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DlcError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_LOG_BYTES:
        raise DlcError(f"{path} is larger than {MAX_LOG_BYTES // 2**20} MiB, more than any run log")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DlcError(f"{path} is not text (not UTF-8), so not a run log") from None
    records = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's stack
            continue
        if isinstance(r, dict) and type(r.get("epoch")) is int:
            records.append(r)
    return sorted(records, key=lambda r: r["epoch"])


def trim_log(path: Path, upto_epoch: int) -> list[dict]:
    """The epoch records up to an epoch; lines past it (written after the checkpoint a run resumes
    from) or cut short by a kill are dropped, and the file is rewritten to match."""
    if not path.exists():
        return []
    records = [r for r in read_log(path) if r["epoch"] <= upto_epoch]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` for one run, so that two runs never write into one (their epochs would interleave
    in one log). A run that finds the folder held raises DlcError naming the holder's process id.

    The lock is flock(2) on `folder/.lock`: the kernel drops it when its holder dies, however it dies,
    so a killed run leaves no lock that needs clearing by hand. The file goes when the run ends; a
    folder this made and the run left empty (refused before it wrote) goes too."""
    import fcntl

    made = [d for d in (folder, *folder.parents) if not d.exists()]  # leaf first, as they empty
    existing = folder.parents[len(made) - 1] if made else folder  # `.` or `/` at the latest
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise DlcError(f"--out {folder}: {where}, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DlcError(f"cannot make the run folder {folder}: {e.strerror}") from None
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DlcError(f"{folder} is in use by another dlc train (process {holder}): wait for it to "
                           f"end, or choose another --out") from None
        try:  # the file a run that just ended unlinked is not the lock any more: take the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, its holder unnamed
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        with contextlib.suppress(OSError):  # rmdir removes only empty folders; the first full one stops it
            for d in made:
                d.rmdir()


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
        return trim_log(self.log, upto_epoch)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A failed write (a full disk) ends the run with one line that says what is still safe: every
        checkpoint is written atomically, so the last one written before the failure is intact."""
        try:
            yield
        except DlcError as e:
            if not self.last.exists():
                raise
            raise DlcError(f"{e.message}; the last checkpoint written, {self.last}, is intact: "
                           f"--resume {self.out} continues from it") from None

    def flush(self, last: Snapshot | None) -> None:
        """Write the pending best checkpoint, then `last` (None: keep the last.npz there is)."""
        with self.writing():
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
            with self.writing():
                append_line(self.log, record)

    def write_metrics(self, doc: dict) -> None:
        if self.writes:
            with self.writing():
                write_atomic(self.out / METRICS, json.dumps(doc, indent=1))


def check_run_fields(meta: dict, path) -> None:
    """A DlcError naming the first field --resume needs that the checkpoint lacks or holds as another type."""
    for name, kind in RUN_FIELDS.items():
        if name not in meta:
            raise DlcError(f"{path} holds no `{name}`: it was not written by dlc train (or was edited), so it "
                           f"cannot be resumed")
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            raise DlcError(f"{path}: its `{name}` is not what dlc train writes (edited?), so it cannot be resumed")
