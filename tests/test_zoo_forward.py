"""Every zoo network runs forward in the NumPy engine and every node's output has the shape the
analysis predicts; one LeNet-5 training step stays within the training-memory estimate."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import activations, loss_and_grads
from dlc.zoo import zoo_names, zoo_path


BIG = 50_000_000  # params above which a zoo network runs at batch 1 (GPT-2 small: 145 G MACs a sample)


def zoo_graph(name: str):
    return compile_spec(zoo_path(name).read_text(), file=f"{name}.dlc")


def random_batch(graph, batch: int, rng) -> np.ndarray:
    shape = (batch, *graph.input.out_shape)
    if graph.input.dtype.startswith("int"):
        vocab = min(n.attrs["vocab"] for n in graph.nodes if n.kind == "embed")
        return rng.integers(0, vocab, size=shape)
    return rng.standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("name", zoo_names())
def test_every_node_has_the_analysed_shape(name):
    graph = zoo_graph(name)
    params, state = init_params(graph)
    batch = 1 if analyse(graph).totals.params > BIG else 2
    x = random_batch(graph, batch, np.random.default_rng(0))
    seen = []
    for node, out in activations(graph, params, state, x):
        assert out.shape == (batch, *node.out_shape), f"{name}: {node.name} ({node.kind})"
        if node.kind != "input":
            assert out.dtype == np.float32, f"{name}: {node.name} computes in {out.dtype}"
            assert np.isfinite(out).all(), f"{name}: {node.name} has non-finite outputs"
        seen.append(node.name)
    assert seen == [n.name for n in graph.nodes]


def test_lenet5_training_step_memory_is_within_twice_the_estimate():
    graph = zoo_graph("lenet5")
    batch = 256
    # conventions.md "Memory": parameters + gradients + optimizer state (none for sgd) + batch x
    # activations, 4 bytes each
    estimate = analyse(graph, batch=batch, optimizer="sgd").totals.train_bytes
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    tracemalloc.start()
    try:
        params, state = init_params(graph)
        _, _, grads = loss_and_grads(graph, params, state, x, labels, "xent")
        for k, g in grads.items():
            params[k] -= 0.01 * g
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the batch itself was allocated before tracing began; the estimate counts it among the activations
    peak += x.nbytes
    assert estimate / 2 <= peak <= 2 * estimate, f"peak {peak:,} bytes, estimate {estimate:,}"
