"""Whole-network gradient check: backprop's gradients against central differences, in float64.

Every evaluation runs in training mode (bn on batch statistics) with a freshly seeded generator, so
dropout masks and noise are the same in the analytic pass and in every perturbed one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from dlc.errors import DlcError
from dlc.graph import Graph
from dlc.choices import default_loss
from dlc.layers import feature_axis
from dlc.layers.dense import token_vocab
from dlc.engine.params import init_params, tensors
from dlc.engine.run import backward, loss_forward

STEP = 1e-5  # central differences: truncation error ~STEP^2, rounding error ~1e-16 * |loss| / STEP
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


def sample_batch(graph: Graph, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A random batch of the graph's input: token ids inside every reading embedding's vocabulary."""
    shape = (batch, *graph.input.out_shape)
    if not graph.input.dtype.startswith("int"):
        return rng.standard_normal(shape)
    vocab = token_vocab(graph)
    if vocab is None:
        raise DlcError("token ids feed no embedding layer: nothing to check")
    return rng.integers(0, vocab, size=shape)


def sample_targets(graph: Graph, loss: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Random targets: class indices for xent (one per step of a sequence, per pixel of an image),
    standard normal values for mse."""
    shape = graph.output.out_shape
    if loss != "xent":
        return rng.standard_normal((batch, *shape))
    axis = feature_axis(shape)  # the one softmax normalises
    return rng.integers(0, shape[axis], size=(batch, *shape[:axis], *shape[axis + 1:]))


def check_gradients(graph: Graph, *, loss: str | None = None, batch: int = 2, seed: int = 0,
                    samples: int = 20, every_entry: bool = False) -> list[LayerCheck]:
    """Compare each parameter's gradient (and the input's, unless token ids) with central differences.

    Tensors with at most `samples` entries are checked whole; larger ones at `samples` random entries,
    or whole with every_entry. Results come per layer in graph order, the input first.
    """
    loss = loss or default_loss(graph)
    rng = np.random.default_rng(seed)
    params, state = init_params(graph, init="he", seed=seed, dtype=np.float64)
    constant = {t.full_name for t in tensors(graph) if t.trainable and t.role.constant is not None}
    for name, p in params.items():
        if name in constant:
            # Biases, scales, shifts and class tokens start away from their constant: at it, terms vanish
            # that a wrong backward could hide behind, and a zero class token is a step as small as the
            # position table's (std 0.02), where layernorm's curvature swamps central differences.
            p += 0.5 * rng.standard_normal(p.shape)
    x = sample_batch(graph, batch, rng)
    y = sample_targets(graph, loss, batch, rng)

    def evaluate(keep: bool):
        # a fresh copy of the running statistics: bn's training-mode update must not accumulate
        return loss_forward(graph, params, copy.deepcopy(state), x, y, loss,
                            rng=np.random.default_rng(seed + 1), keep=keep)

    value, _, dout, tape = evaluate(keep=True)
    floor = FLOOR * max(1.0, abs(value))
    grads, dx = backward(tape, dout)
    analytic = dict(grads)
    targets = dict(params)
    if dx is not None:
        analytic["input"], targets["input"] = dx, x

    results: dict[str, LayerCheck] = {}
    for name, tensor in targets.items():
        layer = graph.input.name if name == "input" else name.rsplit(".", 1)[0]
        flat = tensor.reshape(-1)  # a view: perturbing it perturbs the tensor evaluate() reads
        if every_entry or flat.size <= samples:
            picks = np.arange(flat.size)
        else:
            picks = np.sort(rng.choice(flat.size, size=samples, replace=False))
        g = analytic[name].reshape(-1)
        worst = (-1.0, 0, 0.0, 0.0)
        for i in picks:
            original = flat[i]
            flat[i] = original + STEP
            plus = evaluate(keep=False)[0]
            flat[i] = original - STEP
            minus = evaluate(keep=False)[0]
            flat[i] = original
            numeric = (plus - minus) / (2 * STEP)
            err = relative_error(float(g[i]), float(numeric), floor)
            if err > worst[0]:
                worst = (err, int(i), float(g[i]), float(numeric))
        node = graph.node(layer)
        check = TensorCheck(layer, node.kind, name, flat.size, len(picks), worst[0],
                            tuple(int(j) for j in np.unravel_index(worst[1], tensor.shape)), worst[2], worst[3])
        results.setdefault(layer, LayerCheck(layer, node.kind, [])).tensors.append(check)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(results.values(), key=lambda r: order[r.layer])
