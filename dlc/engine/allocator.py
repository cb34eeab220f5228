"""glibc malloc settings for the NumPy engine's training steps, applied by the commands that train.

Set DLC_MALLOPT=0 to leave the C library's allocator as it is (say, to measure its defaults).
"""

from __future__ import annotations

import ctypes
import os
import platform


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks up to 32 MiB for reuse instead of unmapping them.

    A training step allocates and frees the same few-MiB arrays (columns, activations, gradients)
    every time. glibc serves blocks over 128 KiB with fresh mmap pages and trims its heap eagerly, so
    each step page-faulted them all back in: about 2,500 faults a LeNet-5 step at batch 64, which took
    the engine's step from 4.5 ms to 12 ms. (Reading MNIST's 150 MB pickle first raises glibc's own
    threshold and hid it.) Freed memory stays in the process instead, up to 256 MiB at the heap top.
    Returns whether the settings took (glibc only).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))


def tune_allocator() -> bool:
    """keep_freed_memory() unless DLC_MALLOPT=0; process-wide, so only a command that trains or checks
    gradients calls it, never an import. Returns whether the settings took."""
    if os.environ.get("DLC_MALLOPT", "1") == "0":
        return False
    return keep_freed_memory()
