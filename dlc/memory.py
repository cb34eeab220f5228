"""Refusing work that cannot fit in memory, with the figure, before NumPy or onnxruntime tries.

The estimates come from the analysis (dlc.analysis) and count what an engine must hold at once, so a
refusal turns away only work that could not have fit; work that passes may still need more.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

from dlc.analysis import BYTES_PER_VALUE, analyse
from dlc.errors import DlcError
from dlc.graph import Graph
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


def refuse_unless_fits(needed: int, what: str) -> None:
    """A DlcError naming both figures when `what` needs more memory than this machine has free."""
    free = available_bytes()
    if free is not None and needed > free:
        raise DlcError(f"{what} needs at least {binary(needed)} of memory; {binary(free)} is available")


def forward_bytes(graph: Graph, batch: int, value_bytes: int = BYTES_PER_VALUE) -> int:
    """A forward pass's least memory: the weights, and for each sample the input, the output and the
    largest tensor in between (an engine that frees every tensor once read still holds those at once)."""
    stats = analyse(graph).nodes
    weights = sum(s.params + s.non_trainable for s in stats)
    per_sample = stats[0].activations + stats[-1].activations + max(s.activations for s in stats)
    return value_bytes * (weights + batch * per_sample)


def backprop_bytes(graph: Graph, batch: int, optimizer: str = "sgd", value_bytes: int = BYTES_PER_VALUE) -> int:
    """A NumPy engine training step's peak (dlc.analysis: weights, gradients, optimizer state, every
    layer's output kept for backward, im2col columns), in values of `value_bytes` (gradcheck's are 8)."""
    return analyse(graph, batch, optimizer).totals.engine_train_bytes * value_bytes // BYTES_PER_VALUE


def input_bytes(shape: tuple[int, ...], batch: int, value_bytes: int = BYTES_PER_VALUE) -> int:
    """The input batch alone (for a model whose graph dlc does not know)."""
    return value_bytes * batch * prod(shape)
