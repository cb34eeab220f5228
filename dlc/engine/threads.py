"""The BLAS library's threads while dlc trains: `dlc train --threads auto` runs as many as the cores
other processes leave free, `--threads N` a fixed count.

numpy's OpenBLAS runs one thread per core, and its threads meet at every matrix product, spinning
while they wait. When another process keeps a core busy, a thread that is not scheduled holds the
others up: beside other work on this 2-core machine a LeNet-5 step at batch 64 took 46-71 ms with 2
threads and 10-12 ms with 1 (PyTorch's OpenMP threads do the same: 55-175 ms against 9-16 ms). With
`auto` a training run reads, every few seconds, how much CPU time the machine spent outside this
process (/proc/stat, less the process's own time) and runs as many BLAS threads as there are cores
left free: at least one, at most the library's own count.

It is not the default because the count can change a result's last bits: OpenBLAS mostly splits a
product's output among its threads, but not always the same way (a 64x784 by 784x30 product, the MLP's
first layer at batch 64, rounds differently on 1 and 2 threads), and a run's numbers should not depend
on what else the machine was doing. LeNet-5's and a transformer's gradients are the same bits on 1 and 2
threads (tests/engine/test_threads.py). Nothing is done where numpy's BLAS is not OpenBLAS or there is
no /proc/stat.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from dlc.errors import DlcError

CHECK_SECONDS = 2.0  # how often the machine's load is read: each read costs about 20 us
SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
           "openblas_set_num_threads")
GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
           "openblas_get_num_threads")


@dataclass
class Openblas:
    """numpy's OpenBLAS, found among the libraries this process has loaded."""

    set_threads: Callable[[int], None]
    get_threads: Callable[[], int]


def find_openblas() -> Openblas | None:
    """The OpenBLAS numpy loaded (so only once numpy is imported), or None: another BLAS, or no /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, s) for s in GETTERS if hasattr(lib, s)), None)
        if setter is not None and getter is not None:
            setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
            return Openblas(setter, getter)
    return None


def busy_seconds(stat: str, tick: float) -> float:
    """CPU seconds every core of the machine has spent working, from /proc/stat's text: its first line's
    user, nice, system, irq, softirq and steal (time the hypervisor gave to other machines is no free core)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("not /proc/stat")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in (fields[1:9] + ["0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) * tick


def threads_for(cores: int, others: float, most: int) -> int:
    """BLAS threads for a machine of `cores` where other processes keep `others` cores busy: the cores
    left free, rounded to the nearest, at least 1 and at most `most`."""
    return max(1, min(most, int(cores - others + 0.5)))


def load_sample(tick_seconds: float) -> tuple[float, float, float] | None:
    """(wall, the machine's busy seconds, this process's CPU seconds) now; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            busy = busy_seconds(f.read(), tick_seconds)
    except (OSError, ValueError):
        return None
    own = os.times()
    return time.monotonic(), busy, own.user + own.system


@dataclass
class Governor:
    """Watches the machine's load, and follows it with `follow`: `tick()` after each training step reads
    the load every CHECK_SECONDS and sets the thread count when it should change."""

    blas: Openblas
    cores: int
    most: int  # the library's own count at the start
    threads: int
    tick_seconds: float  # one /proc/stat jiffy
    since: tuple[float, float, float]  # load_sample's at the last check
    follow: bool = True  # False: only watch (the run's count is the library's own), for busiest
    busiest: float = 0.0  # the most cores other processes kept busy over one check
    pinned: bool = False  # some split step held BLAS at one thread (pin_one_thread), so load_note does not apply

    def tick(self) -> None:
        if time.monotonic() - self.since[0] < CHECK_SECONDS:
            return
        now = load_sample(self.tick_seconds)
        if now is None:
            return
        (wall0, busy0, own0), (wall1, busy1, own1) = self.since, now
        self.since = now
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)
        self.busiest = max(self.busiest, others)
        want = threads_for(self.cores, others, self.most)
        if self.follow and want != self.threads:
            if not PINNED:  # a split batch's halves keep one BLAS thread; `threads` still says the cores free
                self.blas.set_threads(want)
            self.threads = want


ACTIVE: list[Governor] = []  # the governor of the run under way, following or only watching
FIXED: list[int] = []  # `--threads N` of the run under way
PINNED: list[int] = []  # the BLAS count before pin_one_thread, while some split step holds one thread


@contextlib.contextmanager
def blas_threads(count: str | None) -> Iterator[Governor | None]:
    """`--threads` for the length of a run: "auto" follows the machine's load, a whole number fixes the
    count, None leaves the library's count and only watches the load (its `busiest` says whether `auto`
    would have paid). Yields the governor, None for a fixed count or where there is no /proc/stat; the
    library's own count is back afterwards. DlcError for a count where numpy's BLAS is not OpenBLAS,
    whose threads dlc cannot set."""
    blas = find_openblas()
    if blas is None:
        if count is not None:
            raise DlcError(f"--threads {count}: numpy's BLAS here is not OpenBLAS, whose threads dlc sets; "
                           f"set your BLAS library's own thread variable instead")
        yield None
        return
    most = blas.get_threads()
    governor = None
    if count is None or count == "auto":
        tick_seconds = 1 / os.sysconf("SC_CLK_TCK")
        first = load_sample(tick_seconds)
        if first is not None:
            cores = usable_cores()
            governor = Governor(blas, cores, most, most, tick_seconds, first, follow=count == "auto")
            ACTIVE.append(governor)
    else:
        blas.set_threads(int(count))
        FIXED.append(int(count))
    try:
        yield governor
    finally:
        ACTIVE.clear()
        FIXED.clear()
        blas.set_threads(most)


BUSY_NOTE = 0.5  # cores other processes kept busy from which a run on every core is told of --threads auto


def load_note(governor: Governor | None) -> str | None:
    """After a run on the library's own count: a line saying `--threads auto` would have paid, when other
    processes kept BUSY_NOTE of a core or more busy over some check (None otherwise)."""
    if governor is None or governor.follow or governor.most < 2 or governor.busiest < BUSY_NOTE or governor.pinned:
        return None
    return (f"other processes kept {governor.busiest:.1f} of the {governor.cores} cores busy during training, "
            f"and OpenBLAS's {governor.most} threads wait for each other at every matrix product: "
            f"--threads auto runs as many as the load leaves free")


def tick() -> None:
    """After a training step: let the governor of the run, if there is one, look at the load."""
    if ACTIVE:
        ACTIVE[0].tick()


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_free() -> int:
    """The cores the run under way may keep busy: `--threads N`'s N, `--threads auto`'s latest count, else
    every core this process may run on."""
    if FIXED:
        return FIXED[0]
    if ACTIVE and ACTIVE[0].follow:
        return ACTIVE[0].threads
    return usable_cores()


def pin_one_thread() -> None:
    """One BLAS thread until unpin(): the halves of a split batch (dlc.engine.halves) compute on one
    each, wherever they run, so that their bits do not depend on where. Nested pins hold one thread too."""
    blas = find_openblas()
    if blas is None:
        return
    PINNED.append(blas.get_threads())
    blas.set_threads(1)
    if ACTIVE:
        ACTIVE[0].pinned = True


def unpin() -> None:
    """Undo the last pin_one_thread: the count before it, or what a following governor counts now."""
    blas = find_openblas()
    if blas is None or not PINNED:
        return
    before = PINNED.pop()
    if not PINNED:
        blas.set_threads(ACTIVE[0].threads if ACTIVE and ACTIVE[0].follow else before)
