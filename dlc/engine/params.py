"""Parameters and running statistics of a graph: their shapes, initial values and checkpoints.

Every tensor is named "<node>.<param>" ("conv1.W", "bn1.mean") and shaped by the layer registry
(`KINDS[kind].params` / `.state`); nothing here repeats the shape arithmetic.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from dlc import __version__
from dlc.atomic import atomic_write
from dlc.errors import DlcError
from dlc.graph import Graph, Node
from dlc.layers import KINDS

CHECKPOINT_SCHEMA = "dlc.checkpoint/1"
META_KEY = "__dlc_meta__"  # the npz entry holding the JSON metadata; no parameter name has dunders

INITS = ("he", "xavier", "gaussian")

# Tensors that start at a constant rather than at random: biases (attention's four among them), bn's
# and layernorm's scale and shift, bn's statistics, and the class token (zeros, as torchvision's ViT).
CONSTANT_INIT = {"b": 0.0, "B": 0.0, "beta": 0.0, "gamma": 1.0, "mean": 0.0, "var": 1.0,
                 "bq": 0.0, "bk": 0.0, "bv": 0.0, "bo": 0.0, "cls": 0.0}
# Learned position tables start as GPT-2's and ViT's do: N(0, 0.02²), small beside the token embeddings.
POSEMBED_STD = 0.02


@dataclass(frozen=True)
class Tensor:
    node: Node
    name: str  # the parameter's name within its node: "W", "gamma", "mean"
    shape: tuple[int, ...]
    trainable: bool

    @property
    def full_name(self) -> str:
        return f"{self.node.name}.{self.name}"


def tensors(graph: Graph) -> list[Tensor]:
    """Every parameter and running statistic of the graph, in node order, shaped by the registry."""
    shapes = {n.name: n.out_shape for n in graph.nodes}
    out = []
    for node in graph.nodes:
        kind = KINDS[node.kind]
        ins = [shapes[i] for i in node.inputs]
        out += [Tensor(node, k, tuple(s), True) for k, s in kind.params(node.attrs, ins).items()]
        out += [Tensor(node, k, tuple(s), False) for k, s in kind.state(node.attrs, ins).items()]
    return out


def fans(t: Tensor) -> tuple[float, float]:
    """(fan_in, fan_out) of a weight tensor: how many values one output sums, how many outputs one input feeds."""
    a, kind = t.node.attrs, t.node.kind
    if kind in ("conv", "dwconv"):
        c_out, c_in_per_group, kh, kw = t.shape
        return c_in_per_group * kh * kw, c_out // a["groups"] * kh * kw
    if kind == "upconv":
        # W is (C_in, C_out/groups, kh, kw). An output pixel of a stride-s transposed convolution
        # gathers about kh*kw/(sh*sw) taps of each of its group's C_in/groups input channels; PyTorch
        # and Keras take the adjoint convolution's fan-in (C_out/groups*kh*kw) instead, which
        # misjudges the forward variance whenever C_in != C_out or the stride is not 1.
        c_in, c_out_per_group, kh, kw = t.shape
        sh, sw = a["stride"]
        taps = max(kh * kw / (sh * sw), 1.0)
        return c_in // a["groups"] * taps, c_out_per_group * taps
    if kind == "fc":
        units, in_features = t.shape
        return in_features, units
    if kind == "attention":
        # each of the four projections is a D x D fc
        return t.shape[1], t.shape[0]
    if kind in ("rnn", "lstm", "gru"):
        # W (dirs, gates*H, D) and R (dirs, gates*H, H) stack one H x D (or H x H) matrix per gate
        # and direction; each gate is its own layer as far as the variance goes.
        return t.shape[2], a["hidden"]
    raise DlcError(f"no initialisation rule for {t.full_name} of a `{kind}` layer")


def initial_value(t: Tensor, init: str, rng: np.random.Generator, std: float, dtype) -> np.ndarray:
    if t.name in CONSTANT_INIT:
        return np.full(t.shape, CONSTANT_INIT[t.name], dtype)
    # Drawn in float64 whatever the dtype, so a float32 network starts from its float64 twin's
    # values rounded (the gradient check and the trainer see the same network).
    if t.node.kind == "embed":
        # A lookup is a product with a one-hot vector (fan-in 1): unit-variance rows, as PyTorch's
        # nn.Embedding, give the next layer inputs of the scale he/xavier assume.
        scale = std if init == "gaussian" else 1.0
    elif t.node.kind == "posembed":
        scale = std if init == "gaussian" else POSEMBED_STD
    elif init == "gaussian":
        scale = std
    elif init == "he":
        scale = np.sqrt(2.0 / fans(t)[0])
    else:  # xavier
        limit = np.sqrt(6.0 / sum(fans(t)))
        return rng.uniform(-limit, limit, t.shape).astype(dtype, copy=False)
    w = rng.standard_normal(t.shape)
    w *= scale
    return w.astype(dtype, copy=False)


def init_params(graph: Graph, init: str = "he", seed: int = 0, std: float = 0.01,
                dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(params, state) by full name: he, xavier or gaussian(std) weights, zero biases, bn at identity.

    Each tensor draws from its own stream seeded by (seed, its name), so adding a layer leaves the
    others' initial values as they were.
    """
    if init not in INITS:
        raise DlcError(f"unknown init `{init}` (expected {', '.join(INITS)})")
    params, state = {}, {}
    for t in tensors(graph):
        rng = np.random.default_rng([seed, zlib.crc32(t.full_name.encode())])
        (params if t.trainable else state)[t.full_name] = initial_value(t, init, rng, std, dtype)
    return params, state


def save_checkpoint(path, params: dict, state: dict, meta: dict | None = None) -> None:
    """Write params, state and JSON metadata to one .npz, atomically (a reader never sees half a file)."""
    clash = set(params) & set(state)
    if clash:
        raise DlcError(f"{sorted(clash)[0]} is both a parameter and a running statistic")
    document = dict(meta or {}, schema=CHECKPOINT_SCHEMA, dlc_version=__version__,
                    state_tensors=sorted(state))
    arrays = {**params, **state, META_KEY: np.array(json.dumps(document))}
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path, graph: Graph | None = None) -> tuple[dict, dict, dict]:
    """(params, state, meta) from a checkpoint; with a graph, every name and shape must match it."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop(META_KEY)))
        if not isinstance(meta, dict) or meta.get("schema") != CHECKPOINT_SCHEMA:
            raise ValueError("unknown schema")
    except FileNotFoundError:
        raise DlcError(f"no such checkpoint: {path}")
    except IsADirectoryError:
        raise DlcError(f"{path} is a directory, not a checkpoint")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise DlcError(f"{path} is not a dlc checkpoint (unreadable or damaged)")
    state_names = set(meta.get("state_tensors", ()))
    state = {k: v for k, v in arrays.items() if k in state_names}
    params = {k: v for k, v in arrays.items() if k not in state_names}
    if graph is not None:
        check_against(graph, params, state, path)
    return params, state, meta


def check_against(graph: Graph, params: dict, state: dict, path: str) -> None:
    """Raise a DlcError at the first layer whose tensors the checkpoint lacks or shapes differently."""
    def error(node: Node, message: str) -> DlcError:
        return DlcError(f"checkpoint {path} does not fit layer {node.name}: {message}", node.pos,
                        graph.file, graph.source)

    expected = tensors(graph)
    for t in expected:
        stored = (params if t.trainable else state).get(t.full_name)
        if stored is None:
            raise error(t.node, f"it has no {t.full_name} {t.shape}")
        if tuple(stored.shape) != t.shape:
            raise error(t.node, f"{t.full_name} is {tuple(stored.shape)} in the checkpoint, "
                                f"{t.shape} in the spec")
    known = {t.full_name for t in expected}
    extra = sorted((set(params) | set(state)) - known)
    if extra:
        raise DlcError(f"checkpoint {path} has {extra[0]}, which no layer of {graph.file} uses")
