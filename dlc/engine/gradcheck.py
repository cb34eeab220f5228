"""Whole-network gradient check: backprop's gradients against central differences, in float64.

Every evaluation runs in training mode (bn on batch statistics) with a freshly seeded generator, so
dropout masks and noise are the same in the analytic pass and in every perturbed one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlc.errors import DlcError
from dlc.graph import Graph, Network, Node
from dlc.choices import default_loss
from dlc.layers import Signal, feature_axis
from dlc.layers.spatial import show
from dlc.layers.dense import token_vocab
from dlc.engine.params import init_params, tensors
from dlc.engine.run import backward, loss_forward

# Central differences at STEP and STEP/2, combined by Richardson extrapolation, (4 D(h/2) - D(h)) / 3:
# the h^2 terms of the two truncation errors cancel, leaving ~STEP^4. Plain central differences at
# 1e-5 err by ~3e-6 where bn normalises two samples (its curvature is large), and would fail correct
# gradients at the 1e-6 tolerance; rounding error stays ~1e-16 * |loss| / STEP.
STEP = 1e-4
# Gradients smaller than FLOOR * max(1, |loss|) count as zero: relative error is measured against
# that instead, because the difference quotient's rounding noise (about 1e-11 * |loss| at this
# STEP, measured) would otherwise fail an exactly-zero gradient such as a dead relu's.
FLOOR = 1e-4


@dataclass
class TensorCheck:
    layer: str  # the node's name, or the input's
    kind: str
    tensor: str  # full name ("conv1.W"), or "input"
    size: int
    checked: int  # entries compared
    worst: float  # the largest relative error among them
    at: tuple[int, ...]  # index of that entry
    analytic: float
    numeric: float


@dataclass
class LayerCheck:
    layer: str
    kind: str
    tensors: list[TensorCheck]

    @property
    def worst(self) -> TensorCheck:
        return max(self.tensors, key=lambda t: t.worst)


def relative_error(analytic: float, numeric: float, floor: float = FLOOR) -> float:
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor)


def sample_batch(graph: Graph, batch: int, rng: np.random.Generator) -> np.ndarray | dict:
    """A random batch of the graph's input: token ids inside every reading embedding's vocabulary; a
    dict of one by input name for a graph with several."""
    if len(graph.inputs) > 1:
        return {n.name: _sample_input(graph, n, batch, rng) for n in graph.inputs}
    return _sample_input(graph, graph.input, batch, rng)


def _sample_input(graph: Graph, node: Node, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = node.out_shape if node.attrs.get("shared") else (batch, *node.out_shape)
    if not node.dtype.startswith("int"):
        return rng.standard_normal(shape)
    vocab = token_vocab(graph, node.name)
    if vocab is None:
        raise DlcError("token ids feed no embedding layer: nothing to check")
    return rng.integers(0, vocab, size=shape)


def sample_targets(graph: Graph, loss: str, batch: int, rng: np.random.Generator) -> np.ndarray | dict:
    """Random targets: class indices for xent (one per step of a sequence, per pixel of an image),
    standard normal values for mse; a dict of them by output name for a graph with several outputs,
    whose losses the check sums."""
    if len(graph.outputs) > 1:
        return {name: _sample_target(n.out_shape, loss, batch, rng) for name, n in zip(graph.output_names,
                                                                                       graph.outputs)}
    return _sample_target(graph.output.out_shape, loss, batch, rng)


def _sample_target(shape: tuple, loss: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    if loss != "xent":
        return rng.standard_normal((batch, *shape))
    if isinstance(shape, Signal):  # the losses take a 3-D output's classes on its last axis, a sequence's
        raise DlcError(f"xent reads the classes of a vector, of each step of a sequence or each pixel of an "
                       f"image; the output {show(shape)} is a signal: check it with --loss mse")
    axis = feature_axis(shape)  # the one softmax normalises
    return rng.integers(0, shape[axis], size=(batch, *shape[:axis], *shape[axis + 1:]))


def check_gradients(graph: Graph, *, loss: str | None = None, batch: int = 2, seed: int = 0,
                    samples: int = 20, every_entry: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> list[LayerCheck]:
    """Compare each parameter's gradient (and the input's, unless token ids) with central differences.

    Tensors with at most `samples` entries are checked whole; larger ones at `samples` random entries,
    or whole with every_entry. Results come per layer in graph order, the input first. A NaN or
    infinite loss or gradient counts as an infinite error: it fails. `progress(done, total)` is told of
    each entry checked.
    """
    loss = loss or default_loss(graph)
    rng = np.random.default_rng(seed)
    params, state = init_params(graph, init="he", seed=seed, dtype=np.float64)
    constant = {t.full_name for t in tensors(graph) if t.trainable and t.role.start(t.node.attrs) is not None}
    for name, p in params.items():
        if name in constant:
            # Biases, scales, shifts and class tokens start away from their constant: at it, terms vanish
            # that a wrong backward could hide behind, and a zero class token is a step as small as the
            # position table's (std 0.02), where layernorm's curvature swamps central differences.
            p += 0.5 * rng.standard_normal(p.shape)
    x = sample_batch(graph, batch, rng)
    y = sample_targets(graph, loss, batch, rng)

    def evaluate(keep: bool):
        # a fresh copy of the running statistics: bn's training-mode update must not accumulate; numpy's
        # overflow warnings are silenced, since a non-finite loss or gradient is reported as a failure
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return loss_forward(Network(graph, params, copy.deepcopy(state)), x, y, loss,
                                rng=np.random.default_rng(seed + 1), keep=keep)

    value, _, dout, tape = evaluate(keep=True)
    floor = FLOOR * max(1.0, abs(value))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        grads, dx = backward(tape, dout)
    analytic = dict(grads)
    targets = dict(params)
    if isinstance(dx, dict):  # several inputs, named as their layers
        for name, g in dx.items():
            if g is not None:
                analytic[name], targets[name] = g, x[name]
    elif dx is not None:
        analytic["input"], targets["input"] = dx, x

    def difference(flat: np.ndarray, i: int, h: float) -> float:
        original = flat[i]
        flat[i] = original + h
        plus = evaluate(keep=False)[0]
        flat[i] = original - h
        minus = evaluate(keep=False)[0]
        flat[i] = original
        return (plus - minus) / (2 * h)

    picked = {}
    for name, tensor in targets.items():
        size = tensor.size
        picked[name] = np.arange(size) if every_entry or size <= samples else \
            np.sort(rng.choice(size, size=samples, replace=False))
    total, done = sum(len(p) for p in picked.values()), 0
    results: dict[str, LayerCheck] = {}
    for name, tensor in targets.items():
        layer = name.rsplit(".", 1)[0]  # a parameter's layer, or an input by its own name
        flat = tensor.reshape(-1)  # a view: perturbing it perturbs the tensor evaluate() reads
        picks = picked[name]
        g = analytic[name].reshape(-1)
        worst = (-1.0, 0, 0.0, 0.0)
        for i in picks:
            numeric = (4 * difference(flat, i, STEP / 2) - difference(flat, i, STEP)) / 3
            err = relative_error(float(g[i]), float(numeric), floor)
            if not math.isfinite(err):  # a NaN error would compare false with everything and pass
                err = math.inf
            if err > worst[0]:
                worst = (err, int(i), float(g[i]), float(numeric))
            done += 1
            if progress is not None:
                progress(done, total)
        node = graph.node(layer)
        check = TensorCheck(layer, node.kind, name, flat.size, len(picks), worst[0],
                            tuple(int(j) for j in np.unravel_index(worst[1], tensor.shape)), worst[2], worst[3])
        results.setdefault(layer, LayerCheck(layer, node.kind, [])).tensors.append(check)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(results.values(), key=lambda r: order[r.layer])
