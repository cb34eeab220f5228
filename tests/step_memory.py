"""A training step's memory as the NumPy engine really uses it, for the memory test and
bench/bench_train.py alike: both hold it against `dlc summary`'s engine estimate."""

from __future__ import annotations

import tracemalloc

import numpy as np

from dlc.engine.params import init_params
from dlc.engine.run import loss_and_grads
from dlc.graph import Graph, Network


def sgd_step_peak(graph: Graph, batch: int, rng: np.random.Generator) -> int:
    """Peak bytes of one plain-SGD xent step on a random batch, from fresh weights (tracemalloc), the
    batch included: it was allocated before tracing began, and the estimate counts it among the
    activations."""
    x = rng.standard_normal((batch, *graph.input.out_shape), dtype=np.float32)
    labels = rng.integers(0, graph.output.out_shape[-1], batch)
    tracemalloc.start()
    try:
        params, state = init_params(graph)
        _, _, grads = loss_and_grads(Network(graph, params, state), x, labels, "xent")
        for k, g in grads.items():
            params[k] -= 0.01 * g
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak + x.nbytes
