"""Parameters and running statistics of a graph: their shapes, initial values and checkpoints.

Every tensor is named "<node>.<param>" ("conv1.W", "bn1.mean"), shaped by the layer registry
(`KINDS[kind].params` / `.state`) and started as its role there says (`KINDS[kind].tensors`); nothing
here repeats the shape arithmetic or knows which kinds have weights.
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
from dlc.graph import Graph, Network, Node
from dlc.layers import KINDS, Role, Shape, role
from dlc.npz import check_arrays_file
from dlc.normalize import stats_error

CHECKPOINT_SCHEMA = "dlc.checkpoint/1"
META_KEY = "__dlc_meta__"  # the npz entry holding the JSON metadata; no parameter name has dunders

INITS = ("he", "xavier", "gaussian")


@dataclass(frozen=True)
class ParamTensor:
    """A parameter or a running statistic of a node (`trainable` says which), shaped by the registry."""

    node: Node
    name: str  # the parameter's name within its node: "W", "gamma", "mean"
    shape: Shape
    trainable: bool

    @property
    def full_name(self) -> str:
        return f"{self.node.name}.{self.name}"

    @property
    def role(self) -> Role:
        return role(self.node.kind, self.name)


def tensors(graph: Graph) -> list[ParamTensor]:
    """Every parameter and running statistic of the graph, in node order, shaped by the registry."""
    shapes = {n.name: n.out_shape for n in graph.nodes}
    out = []
    for node in graph.nodes:
        kind = KINDS[node.kind]
        ins = [shapes[i] for i in node.inputs]
        out += [ParamTensor(node, k, tuple(s), True) for k, s in kind.params(node.attrs, ins).items()]
        out += [ParamTensor(node, k, tuple(s), False) for k, s in kind.state(node.attrs, ins).items()]
    return out


def initial_value(t: ParamTensor, init: str, rng: np.random.Generator, std: float,
                  dtype: type[np.floating]) -> np.ndarray:
    """The tensor's start: its role's constant (or its node's option), else drawn by the init (`std` is
    gaussian's)."""
    r = t.role
    if r.start(t.node.attrs) is not None:
        return np.full(t.shape, r.start(t.node.attrs), dtype)
    # Drawn in float64 whatever the dtype, so a float32 network starts from its float64 twin's
    # values rounded (the gradient check and the trainer see the same network).
    if init == "gaussian":
        scale = std
    elif r.std is not None:
        scale = r.std
    elif init == "he" and not r.glorot:
        scale = np.sqrt(2.0 / r.fans(t.node.attrs, t.shape)[0])
    else:  # xavier, and he's glorot weights
        limit = np.sqrt(6.0 / sum(r.fans(t.node.attrs, t.shape)))
        return rng.uniform(-limit, limit, t.shape).astype(dtype, copy=False)
    w = rng.standard_normal(t.shape)
    w *= scale
    return w.astype(dtype, copy=False)


def init_params(graph: Graph, init: str = "he", seed: int = 0, std: float = 0.01,
                dtype: type[np.floating] = np.float32) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(params, state) by full name: he, xavier or gaussian(std) weights, zero biases, bn at identity.

    Each tensor draws from its own stream seeded by (seed, its name), so adding a layer leaves the
    others' initial values as they were.
    """
    if init not in INITS:
        raise DlcError(f"unknown init `{init}` (expected {', '.join(INITS)})")
    params: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
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
        if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
            raise DlcError(f"{path} is not a regular file, so not a checkpoint")  # a FIFO would block
        check_arrays_file(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop(META_KEY)))
        if not isinstance(meta, dict) or meta.get("schema") != CHECKPOINT_SCHEMA:
            raise ValueError("unknown schema")
    except FileNotFoundError:
        raise DlcError(f"no such checkpoint: {path}")
    except IsADirectoryError:
        raise DlcError(f"{path} is a directory, not a checkpoint")
    except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile):
        raise DlcError(f"{path} is not a dlc checkpoint (unreadable or damaged)")
    _check_meta(meta, path)
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            raise DlcError(f"checkpoint {path}: tensor {name} holds {a.dtype} values, not floating-point numbers")
        bad = a.size - np.count_nonzero(np.isfinite(a))
        if bad:
            raise DlcError(f"checkpoint {path}: tensor {name} holds {bad:,} NaN or infinite value"
                           f"{'s' if bad > 1 else ''} (of {a.size:,}); a network with them computes nothing")
    state_names = set(meta.get("state_tensors", ()))
    state = {k: v for k, v in arrays.items() if k in state_names}
    params = {k: v for k, v in arrays.items() if k not in state_names}
    if graph is not None:
        check_against(Network(graph, params, state, weights=path, checkpoint=path))
    return params, state, meta


def _check_meta(meta: dict, path: str) -> None:
    """The metadata fields every reader uses, with the types it expects (a hand-edited file may differ)."""
    def wrong(field: str, expected: str) -> DlcError:
        return DlcError(f"checkpoint {path}: its metadata's `{field}` is not {expected}")

    for field in ("spec", "file", "vocab"):  # null: a run without one (vocab: not trained on text)
        if meta.get(field) is not None and not isinstance(meta[field], str):
            raise wrong(field, "text")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise wrong("class_names", "a list of class names")
    names = meta.get("state_tensors", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise wrong("state_tensors", "a list of tensor names")
    problem = stats_error(meta["normalize"], "normalize") if meta.get("normalize") is not None else None
    if problem:
        raise DlcError(f"checkpoint {path}: its metadata's {problem}")


@dataclass
class PartialStart:
    """--weights-partial: the starting (params, state), and what came from where."""

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    loaded: list[str]  # tensors taken from the checkpoint
    fresh: list[str]  # tensors started fresh, each with why: "fc3.W (10, 64) (the checkpoint's is (3, 64))"
    unused: list[str]  # checkpoint tensors no layer of the spec takes


def partial_start(graph: Graph, stored: tuple[dict, dict], fresh: tuple[dict, dict], path: str) -> PartialStart:
    """Fine-tuning with a new head: each tensor of the graph from the checkpoint's `stored` (params,
    state) where it holds one of that name and shape, else from `fresh`. A checkpoint nothing of which
    fits is refused: it belongs to another network (its layer names differ), not to another head."""
    expected = tensors(graph)
    start: tuple[dict, dict] = ({}, {})
    loaded, started = [], []
    for t in expected:
        i = 0 if t.trainable else 1
        have = stored[i].get(t.full_name)
        if have is not None and tuple(have.shape) == t.shape:
            start[i][t.full_name] = have
            loaded.append(t.full_name)
        else:
            start[i][t.full_name] = fresh[i][t.full_name]
            why = "none in the checkpoint" if have is None else f"the checkpoint's is {tuple(have.shape)}"
            started.append(f"{t.full_name} {t.shape} ({why})")
    names = sorted(set(stored[0]) | set(stored[1]))
    if not loaded:
        raise DlcError(f"--weights-partial: no tensor of {path} fits {graph.file} by name and shape (the "
                       f"checkpoint holds {', '.join(names[:4]) or 'none'}{', ...' if len(names) > 4 else ''})")
    known = {t.full_name for t in expected}
    return PartialStart(*start, loaded, started, [n for n in names if n not in known])


def check_against(net: Network) -> None:
    """Raise a DlcError at the first layer whose tensors the network's checkpoint lacks or shapes differently."""
    graph, params, state, path = net.graph, net.params, net.state, net.checkpoint

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
