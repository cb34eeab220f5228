"""Every zoo network runs forward in the NumPy engine and every node's output has the shape the
analysis predicts; a LeNet-5 training step peaks within 1.5x of the engine's memory estimate."""

from __future__ import annotations

import numpy as np
import pytest

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import activations
from dlc.graph import Network
from dlc.layers.dense import token_vocab
from step_memory import sgd_step_peak
from zoo_weights import zoo_names_with_weights


BIG = 50_000_000  # params above which a zoo network runs at batch 1 (GPT-2 small: 145 G MACs a sample)


def random_batch(graph, batch: int, rng) -> np.ndarray | dict:
    """A batch of the input, or of each input by name (BERT's ids, token types and mask)."""
    def draw(node):
        shape = (batch, *node.out_shape)
        if node.dtype.startswith("int"):
            return rng.integers(0, token_vocab(graph, node.name), size=shape)
        return rng.standard_normal(shape, dtype=np.float32)
    feeds = {n.name: draw(n) for n in graph.inputs}
    return feeds if len(feeds) > 1 else feeds[graph.input.name]


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names_with_weights())
def test_every_node_has_the_analysed_shape(name, zoo_graph):
    graph = zoo_graph(name)
    params, state = init_params(graph)
    batch = 1 if analyse(graph).totals.params > BIG else 2
    x = random_batch(graph, batch, np.random.default_rng(0))
    seen = []
    for node, out in activations(Network(graph, params, state), x):
        assert out.shape == (batch, *node.out_shape), f"{name}: {node.name} ({node.kind})"
        if node.kind != "input":
            assert out.dtype == np.float32, f"{name}: {node.name} computes in {out.dtype}"
            assert np.isfinite(out).all(), f"{name}: {node.name} has non-finite outputs"
        seen.append(node.name)
    assert seen == [n.name for n in graph.nodes]


@pytest.mark.parametrize("batch", [1, 32, 64, 256])  # 32 is dlc train's default batch
def test_lenet5_training_step_peak_is_within_1_5x_of_the_engine_estimate(batch, zoo_graph):
    graph = zoo_graph("lenet5")
    # conventions.md "Memory": parameters + gradients + optimizer state (none for sgd) + batch x
    # activations, 4 bytes each, plus the im2col columns the engine holds at once
    estimate = analyse(graph, batch=batch, optimizer="sgd").totals.engine_train_bytes
    peak = sgd_step_peak(graph, batch, np.random.default_rng(0))
    assert estimate / 1.5 <= peak <= 1.5 * estimate, f"peak {peak:,} bytes, estimate {estimate:,}"


def test_lenet5_columns_by_hand(zoo_graph):
    graph = zoo_graph("lenet5")
    # batch 32: C1 builds 1*5*5 x 28*28*32 columns, C3 6*5*5 x 10*10*32; both fit 8 MiB and are kept,
    # and C1's, the larger, is in flight once more in backward
    c1, c3 = 4 * 25 * 784 * 32, 4 * 150 * 100 * 32
    assert analyse(graph, batch=32).totals.columns_bytes == c1 + c3 + c1
    # batch 256: C1's 20 MB exceed 8 MiB (8,388,608 bytes), so it keeps nothing and goes in bands of 11
    # output rows of 716,800 bytes; C3's 15 MB too, in bands of 5 rows of 1,536,000 bytes
    assert analyse(graph, batch=256).totals.columns_bytes == max(11 * 716_800, 5 * 1_536_000)


def test_a_1x1_conv_builds_no_columns():
    # MobileNet's and EfficientNet's pointwise convs: the engine reads the (C, H, W, N) input itself
    # as the columns, where a 3x3 conv of the same input builds 9 rows per channel
    pointwise = compile_spec("input 16@8x8\nconv 32@1x1\n")
    assert analyse(pointwise, batch=64).totals.columns_bytes == 0
    three = compile_spec("input 16@8x8\nconv 32@3x3 pad=1\n")
    assert analyse(three, batch=64).totals.columns_bytes == 2 * 4 * 16 * 9 * 8 * 8 * 64
