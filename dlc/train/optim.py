"""Optimisers: the published update rules, in place, in the parameters' own dtype (float32).

With learning rate η, gradient g and weights w (CS231n's notes, "Parameter updates"):
- sgd:       w -= η g
- momentum:  v = μ v - η g;  w += v                                    (μ = `momentum`, default 0.9)
- nesterov:  v' = v;  v = μ v - η g;  w += -μ v' + (1 + μ) v         (Sutskever et al. 2013, as
             rewritten by Bengio et al. 2012 so the gradient is taken at the current weights)
- adagrad:   c += g²;  w -= η g / (√c + ε)                              (Duchi et al. 2011)
- rmsprop:   c = ρ c + (1 - ρ) g²;  w -= η g / (√c + ε)                 (Hinton, lecture 6e; ρ is the
             `beta2` key, default 0.9 for rmsprop)
- adam:      t += 1;  m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²;
             w -= η (m / (1 - β1ᵗ)) / (√(v / (1 - β2ᵗ)) + ε)          (Kingma & Ba 2015, Algorithm 1)
- adamw:     w -= η λ w, then adam's step with the same gradient     (Loshchilov & Hutter 2019,
             "decoupled weight decay", as PyTorch's AdamW: λ = `weight_decay` scaled by the rate η; the
             decay is not part of the loss, so adam's division by √v never weakens it)
ε defaults to 1e-8. The state is a dict of named arrays ("v:conv1.W", "m:fc1.b"), plus adam's step
count t, so a checkpoint holds it and a resumed run continues bit for bit.

Regularisation acts on the tensors whose role in the layer registry says so (weights and embedding
tables): not on biases nor bn's scale and shift; adamw's decay too.

Gradient clipping (`clip`) scales the loss gradient, all tensors together, by clip / (‖g‖ + 1e-6) when
its global norm ‖g‖ exceeds clip (Pascanu et al. 2013; PyTorch's clip_grad_norm_, whose 1e-6 it keeps).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterable

import numpy as np

from dlc.choices import OPTIMIZER_SLOTS
from dlc.errors import DlcError
from dlc.graph import Graph
from dlc.layers import Role, role

DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
RMSPROP_DECAY = 0.9


@dataclass
class Moments:
    """adam's m and v for every trained tensor end to end in one buffer each, beside the gradients
    gathered the same way and a scratch buffer: the rule runs as a dozen operations over all the
    weights instead of a dozen per tensor (the transformer's 38 tensors: 0.5 -> 0.2 ms a step). The
    optimizer's slots ("m:fc1.W") are views into m and v, so checkpoints see the same named arrays."""
    names: tuple[str, ...]
    bounds: tuple[int, ...]  # tensor i is [bounds[i], bounds[i + 1]) of each buffer
    g: np.ndarray
    m: np.ndarray
    v: np.ndarray
    scratch: np.ndarray


@dataclass
class Optimizer:
    kind: str
    momentum: float
    beta1: float
    beta2: float
    eps: float
    slots: dict[str, np.ndarray] = field(default_factory=dict)
    t: int = 0  # updates applied so far (adam's bias correction reads it)
    weight_decay: float = 0.0  # adamw's decoupled decay λ; the others take weight decay as a penalty
    moments: Moments | None = field(default=None, repr=False, compare=False)  # adam's, built on its first step


def make_optimizer(kind: str, momentum: float | None = None, beta1: float | None = None,
                   beta2: float | None = None, eps: float | None = None, weight_decay: float = 0.0) -> Optimizer:
    """An optimizer with its hyperparameters; None means the default for that optimizer.

    weight_decay is kept by adamw only, which applies it itself (the trainer adds the others' as a penalty).
    """
    if kind not in OPTIMIZER_SLOTS:
        raise DlcError(f"unknown optimizer `{kind}` (expected {', '.join(OPTIMIZER_SLOTS)})")
    if beta2 is None and kind == "rmsprop":
        beta2 = RMSPROP_DECAY
    hyper = {k: DEFAULTS[k] if v is None else float(v)
             for k, v in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2), ("eps", eps))}
    for k in ("momentum", "beta1", "beta2"):
        if not 0 <= hyper[k] < 1:
            raise DlcError(f"{k} must satisfy 0 <= {k} < 1 (received {hyper[k]})")
    if hyper["eps"] <= 0:
        raise DlcError(f"eps must be > 0 (received {hyper['eps']})")
    if weight_decay < 0:
        raise DlcError(f"weight_decay must be >= 0 (received {weight_decay})")
    return Optimizer(kind, **hyper, weight_decay=float(weight_decay) if kind == "adamw" else 0.0)


def _slot(opt: Optimizer, slot: str, name: str, w: np.ndarray) -> np.ndarray:
    key = f"{slot}:{name}"
    s = opt.slots.get(key)
    if s is None:
        s = opt.slots[key] = np.zeros_like(w)
    return s


# The rules themselves, written once for any array module `xp` whose arrays update in place and which
# has sqrt (numpy here, torch in dlc.torch.rules): both trainers run these lines, so they cannot drift.
# `slot(key)` hands over the tensor's state array of that key ("v", "c"), made zero on first use.
Array = Any  # a numpy.ndarray or a torch.Tensor: the rules use only what the two have in common
Slot = Callable[[str], Array]

def sgd(opt: Optimizer, slot: Slot, w: Array, g: Array, lr: float, xp: ModuleType) -> None:
    w -= lr * g


def momentum(opt: Optimizer, slot: Slot, w: Array, g: Array, lr: float, xp: ModuleType) -> None:
    v = slot("v")
    v *= opt.momentum
    v -= lr * g
    w += v


def nesterov(opt: Optimizer, slot: Slot, w: Array, g: Array, lr: float, xp: ModuleType) -> None:
    v, mu = slot("v"), opt.momentum
    w -= mu * v
    v *= mu
    v -= lr * g
    w += (1 + mu) * v


def adagrad(opt: Optimizer, slot: Slot, w: Array, g: Array, lr: float, xp: ModuleType) -> None:
    c = slot("c")
    c += g * g
    w -= lr * g / (xp.sqrt(c) + opt.eps)


def rmsprop(opt: Optimizer, slot: Slot, w: Array, g: Array, lr: float, xp: ModuleType) -> None:
    c, rho = slot("c"), opt.beta2
    c *= rho
    c += (1 - rho) * (g * g)
    w -= lr * g / (xp.sqrt(c) + opt.eps)


def adam_step(opt: Optimizer, g: Array, m: Array, v: Array, scratch: Array, lr: float, xp: ModuleType) -> Array:
    """Advance m and v by the gradient g and return the step to subtract from the weights, written over g.
    Every operation writes into m, v, g or scratch (the NumPy trainer runs it once over all the weights:
    Moments); numpy and torch both spell these multiply/divide/sqrt with out=."""
    b1, b2 = opt.beta1, opt.beta2
    m *= b1
    m += xp.multiply(g, 1 - b1, out=scratch)
    v *= b2
    xp.multiply(g, g, out=scratch)
    scratch *= 1 - b2
    v += scratch
    mhat = xp.divide(m, 1 - b1 ** opt.t, out=g)
    vhat = xp.divide(v, 1 - b2 ** opt.t, out=scratch)
    # lr * mhat / (sqrt(vhat) + eps)
    xp.sqrt(vhat, out=vhat)
    vhat += opt.eps
    mhat *= lr
    mhat /= vhat
    return mhat


def _moments(opt: Optimizer, params: dict[str, np.ndarray]) -> Moments:
    """The optimizer's Moments for these tensors: built once, the slots it already has copied in (a
    resumed run's), and rebuilt only if the tensors trained change."""
    names = tuple(params)
    if opt.moments is not None and opt.moments.names == names:
        return opt.moments
    bounds = tuple(int(b) for b in np.cumsum([0, *(w.size for w in params.values())]))
    dtype = np.result_type(*params.values())
    g, m, v, scratch = (np.zeros(bounds[-1], dtype) for _ in range(4))
    for slot, buf in (("m", m), ("v", v)):
        for (name, w), start, end in zip(params.items(), bounds, bounds[1:]):
            view = buf[start:end].reshape(w.shape)
            if f"{slot}:{name}" in opt.slots:
                view[...] = opt.slots[f"{slot}:{name}"]
            opt.slots[f"{slot}:{name}"] = view
    opt.moments = Moments(names, bounds, g, m, v, scratch)
    return opt.moments


def _adam(opt: Optimizer, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
    mo = _moments(opt, params)
    np.concatenate([grads[name].reshape(-1) for name in mo.names], out=mo.g)
    step = adam_step(opt, mo.g, mo.m, mo.v, mo.scratch, lr, np)
    # each tensor reads its stretch of the whole step
    for (name, w), start, end in zip(params.items(), mo.bounds, mo.bounds[1:]):
        w -= step[start:end].reshape(w.shape)


def _each(rule):
    """A rule written for one tensor, applied to every tensor in turn."""
    def update(opt: Optimizer, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        for name, w in params.items():
            rule(opt, lambda key, name=name, w=w: _slot(opt, key, name, w), w, grads[name], lr, np)
    return update


UPDATES = {"sgd": _each(sgd), "momentum": _each(momentum), "nesterov": _each(nesterov),
           "adagrad": _each(adagrad), "rmsprop": _each(rmsprop), "adam": _adam, "adamw": _adam}


def step(opt: Optimizer, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float,
         decayed: Iterable[str] = ()) -> None:
    """Apply one update to every parameter in place; adamw first decays the `decayed` ones."""
    opt.t += 1
    if opt.weight_decay:
        shrink = np.float32(1 - lr * opt.weight_decay)
        for name in decayed:
            params[name] *= shrink
    if params:
        UPDATES[opt.kind](opt, params, grads, lr)


def clip_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale the gradients so that their global norm is at most max_norm; return the norm before.

    Out of place: a kernel may hand back a buffer it still shares as a parameter's gradient.
    """
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if norm > max_norm:
        scale = np.float32(max_norm / (norm + 1e-6))
        for k, g in grads.items():
            grads[k] = g * scale
    return norm


def _role(graph: Graph, full_name: str) -> Role:
    layer, tensor = full_name.rsplit(".", 1)
    return role(graph.node(layer).kind, tensor)


def decayed(graph: Graph, names: Iterable[str]) -> list[str]:
    """The weights among the graph's parameter names: what weight decay, L1 and max-norm act on."""
    return [n for n in names if _role(graph, n).decayed]


# ------------------------------------------------------------------------ checkpointing the state

def state_to_json(opt: Optimizer) -> dict:
    """The optimizer, JSON-ready, its arrays as exact base64 bytes (checkpoint meta is JSON)."""
    return {"kind": opt.kind, "t": opt.t,
            "hyper": {k: getattr(opt, k) for k in (*DEFAULTS, "weight_decay")},
            "slots": {k: {"dtype": str(a.dtype), "shape": list(a.shape),
                          "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")}
                      for k, a in opt.slots.items()}}


def state_from_json(doc: dict) -> Optimizer:
    opt = Optimizer(doc["kind"], t=int(doc["t"]), **doc["hyper"])
    for k, a in doc["slots"].items():
        raw = base64.b64decode(a["data"])
        opt.slots[k] = np.frombuffer(raw, dtype=a["dtype"]).reshape(a["shape"]).copy()
    return opt


def maxnorm_axes(graph: Graph, names: Iterable[str]) -> dict[str, tuple[int, ...] | None]:
    """For each weight, the axes its per-unit norm runs over (None: all but the first)."""
    return {n: _role(graph, n).maxnorm for n in decayed(graph, names)}
