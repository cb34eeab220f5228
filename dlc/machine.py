"""What this machine can still give a piece of work: free memory, and the refusal when it cannot.

Below the analysis, so that checks at any tier (a checkpoint's declared arrays, a training step's
estimate from dlc.memory) refuse with the same words.
"""

from __future__ import annotations

from pathlib import Path

from dlc.errors import DlcError
from dlc.units import binary


def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, within a cgroup's limit; None
    where neither can be read (then nothing is refused)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def total_bytes() -> int:
    """The machine's physical memory (what `--device local` can hold)."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_bytes() -> int:
    """The largest cache of CPU 0 (its last level), 0 where the kernel does not say."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
            sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return max(sizes, default=0)


def refuse_unless_fits(needed: int, what: str) -> None:
    """A DlcError naming both figures when `what` needs more memory than this machine has free."""
    free = available_bytes()
    if free is not None and needed > free:
        raise DlcError(f"{what} needs at least {binary(needed)} of memory; {binary(free)} is available")
