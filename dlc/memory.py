"""Refusing work that cannot fit in memory, with the figure, before NumPy or onnxruntime tries.

The estimates come from the analysis (dlc.analysis) and count what a runtime must hold at once, so a
refusal turns away only work that could not have fit; work that passes may still need more. What is
free, and the refusal itself, are dlc.machine's (the npz checks below dlc.engine use them too).
"""

from __future__ import annotations

from math import prod

from dlc.analysis import BYTES_PER_VALUE, analyse
from dlc.graph import Graph

def forward_bytes(graph: Graph, batch: int, value_bytes: int = BYTES_PER_VALUE) -> int:
    """A forward pass's least memory: the weights, and for each sample the input, the output and the
    largest tensor in between (a runtime that frees every tensor once read still holds those at once)."""
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
