"""Layers the NumPy engine runs as one step (dlc/engine/fusion.py): the same numbers as layer by layer.

relu then maxpool runs as maxpool then relu; bn then silu makes silu's halved input in bn's affine map.
The references: the plan's unfused steps (each kernel checked on its own against central differences and
onnxruntime), central differences through the fused plan, the textbook silu, and hand-worked windows with
ties, where only the first maximum may take the gradient.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.engine import run
from dlc.engine.gradcheck import check_gradients
from dlc.engine.params import init_params
from dlc.graph import Network

LENET_RELU = ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\n"
              "fc 120 relu -> fc 84 relu -> fc 10 softmax\n")
EFFICIENTNET_STEM = ("input 3@12x12\nconv 8@3x3 pad=1 bias=off bn silu\ndwconv 3x3/2 pad=1 bias=off bn silu\n"
                     "conv 4@1x1 bn\ngap\nfc 5 softmax\n")


def network(spec: str) -> Network:
    g = compile_spec(spec, "<test>")
    params, state = init_params(g)
    return Network(g, params, state)


def slots(net: Network, *names: str) -> set[int]:
    plan = run.compile_plan(net.graph)
    return {plan.index[n] for n in names}


def names_of_kind(net: Network, kind: str) -> list[str]:
    return [n.name for n in net.graph.nodes if n.kind == kind]


@contextlib.contextmanager
def unfused(net: Network):
    """The network's plan running its unfused steps, layer by layer."""
    plan = run.compile_plan(net.graph)
    fused = plan.steps
    object.__setattr__(plan, "steps", plan.exact)
    try:
        yield
    finally:
        object.__setattr__(plan, "steps", fused)


def assert_trains_as_unfused(net: Network, x, y, frozen: str | None = None) -> dict:
    """One training step fused and one unfused from the same running statistics: the same loss, output,
    gradients and moved statistics, bit for bit. Returns the gradients."""
    start = {k: v.copy() for k, v in net.state.items()}
    value, out, grads = run.loss_and_grads(net, x, y, "xent", frozen=frozen)
    moved = {k: v.copy() for k, v in net.state.items()}
    net.state.update({k: v.copy() for k, v in start.items()})
    with unfused(net):
        ref_value, ref_out, ref_grads = run.loss_and_grads(net, x, y, "xent", frozen=frozen)
    assert value == ref_value
    np.testing.assert_array_equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        np.testing.assert_array_equal(grads[name], ref_grads[name], err_msg=name)
    for name in moved:  # the running statistics move alike
        np.testing.assert_array_equal(moved[name], net.state[name], err_msg=name)
    return grads


def test_lenet5_relu_before_each_pool_fuses_and_trains_to_the_same_bits():
    net = network(LENET_RELU)
    relus = names_of_kind(net, "relu")
    # the two relus before a pool fuse; fc's relus read no pool
    assert run.compile_plan(net.graph).passed == slots(net, *relus[:2])
    rng = np.random.default_rng(0)
    # MNIST-like: most pixels 0, so whole windows tie in the first layer
    x = (rng.random((8, 1, 28, 28)) * (rng.random((8, 1, 28, 28)) < 0.2)).astype(np.float32)
    assert_trains_as_unfused(net, x, rng.integers(0, 10, 8))


@pytest.mark.parametrize("spec", [
    "input 2@40 -> conv 4@5/2 bn relu -> maxpool 4 -> gap -> fc 10 softmax",  # a signal, as specs/m5_audio.dlc
    "input 1@6x6x6 -> conv 3@3x3x3 pad=1 relu -> maxpool 2 -> flatten -> fc 10 softmax",  # a volume
])
def test_signals_and_volumes_fuse_to_the_same_bits(spec):
    net = network(spec)
    assert run.compile_plan(net.graph).passed == slots(net, *names_of_kind(net, "relu"))
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((3, *net.graph.input.out_shape)), 1).astype(np.float32)  # ties
    assert_trains_as_unfused(net, x, rng.integers(0, 10, 3))


def test_fused_pool_passes_the_gradient_only_to_the_first_positive_maximum():
    # one channel, 2/2 pooling of a 2x4 image: window 1 ties at 3 (top-left wins), window 2 is all negative
    net = network("input 1@2x4 -> relu -> maxpool 2 -> flatten")
    assert run.compile_plan(net.graph).passed == slots(net, *names_of_kind(net, "relu"))
    x = np.array([[[[3, 1, -1, -5], [3, 2, -2, -1]]]], np.float32)
    y, tape = run.forward(net, x, keep=True)
    np.testing.assert_array_equal(y, [[3, 0]])
    _, dx = run.backward(tape, np.array([[10, 20]], np.float32))
    np.testing.assert_array_equal(dx, [[[[10, 0, 0, 0], [0, 0, 0, 0]]]])


def test_fused_plan_passes_central_differences():
    # overlapping windows with padding: each window's maximum is a different cell's, summed by col2im
    graph = compile_spec("input 2@6x6 -> conv 3@3x3 pad=1 relu -> maxpool 3/2 pad=1 -> fc 4 softmax", "<test>")
    assert run.compile_plan(graph).passed
    worst = {t.tensor: t.worst for layer in check_gradients(graph, every_entry=True) for t in layer.tensors}
    assert len(worst) == 5 and all(e < 1e-6 for e in worst.values()), worst


def test_every_slot_still_holds_its_own_output_where_it_is_read():
    net = network(LENET_RELU)
    relu, conv = names_of_kind(net, "relu")[0], names_of_kind(net, "conv")[0]
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    seen = dict((node.name, out) for node, out in run.activations(net, x))
    np.testing.assert_array_equal(seen[relu], np.maximum(seen[conv], 0))
    upto, _ = run.forward(net, x, upto=relu)
    np.testing.assert_array_equal(upto, seen[relu])


@pytest.mark.parametrize("spec, first, second", [(LENET_RELU, "relu", "maxpool"), (EFFICIENTNET_STEM, "bn", "silu")])
def test_freezing_at_either_layer_of_a_pair_trains_as_unfused(spec, first, second):
    net = network(spec)
    x_shape = net.graph.input.out_shape
    rng = np.random.default_rng(2)
    x, y = rng.random((4, *x_shape), dtype=np.float32), rng.integers(0, 5, 4)
    for frozen in (names_of_kind(net, first)[0], names_of_kind(net, second)[0]):
        grads = assert_trains_as_unfused(net, x, y, frozen)
        assert grads.keys() == set(net.params) - run.frozen_params(net.graph, frozen)


@pytest.mark.parametrize("spec", [
    "input 1@4x4 -> relu as r -> maxpool 2 -> add( identity | identity ) -> flatten",
    "input 1@4x4 -> relu as r -> concat( maxpool 2 | avgpool 2 ) -> flatten",
])
def test_a_relu_read_by_more_than_the_pool_does_not_fuse(spec):
    net = network(spec)
    plan = run.compile_plan(net.graph)
    relu = names_of_kind(net, "relu")[0]
    assert (plan.index[relu] in plan.passed) == spec.startswith("input 1@4x4 -> relu as r -> maxpool")


def test_bn_then_silu_fuses_and_trains_and_infers_to_the_same_bits():
    net = network(EFFICIENTNET_STEM)
    bns = names_of_kind(net, "bn")
    # the last bn is read by gap, not silu
    assert run.compile_plan(net.graph).passed == slots(net, *bns[:2])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 12, 12)).astype(np.float32)
    assert_trains_as_unfused(net, x, rng.integers(0, 5, 6))
    inferred, _ = run.forward(net, x)
    seen = dict((node.name, out) for node, out in run.activations(net, x))
    np.testing.assert_array_equal(inferred, seen[net.graph.nodes[-1].name])
    # silu of bn's own output, computed here by the textbook formula
    z = seen[bns[0]].astype(np.float64)
    np.testing.assert_allclose(seen[names_of_kind(net, "silu")[0]], z / (1 + np.exp(-z)), rtol=1e-6, atol=1e-7)


def test_fused_bn_silu_passes_central_differences():
    graph = compile_spec("input 2@5x5 -> conv 3@3x3 pad=1 bn silu -> fc 4 softmax", "<test>")
    assert run.compile_plan(graph).passed
    worst = {t.tensor: t.worst for layer in check_gradients(graph, every_entry=True) for t in layer.tensors}
    # the input, conv's W and b, bn's gamma and beta, fc's W and b
    assert len(worst) == 7 and all(e < 1e-6 for e in worst.values()), worst
