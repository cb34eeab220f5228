"""Generating a sequence one step at a time, as `dlc sample` does: each new step costs one step's work.

A causal network's output at step t reads steps 0..t only, so a generator that has already run steps
0..t-1 need not run them again. The decoder runs every layer on the new steps alone: position-wise
kinds (fc, layernorm, activations, add...) through their ordinary kernels on a (1, n, D) slice;
posembed adds its rows for those positions; causal attention projects the new steps and reads the keys
and values of the earlier ones from a cache (KVCache); a one-way rnn/lstm/gru carries its state. A
network with any other layer that mixes steps (attention without `causal`, a bidirectional or
last-step-only recurrent layer, seqpool, clstoken...) cannot be decoded so: `why_not_stepwise` says why
and the caller re-runs the whole window for each token.

The window is the spec's `input seq T`. Past T steps the window slides, as the full-window generator
reads the last T tokens: every step's position changes (posembed) and, deeper than one attention
layer, every cached key depends on the steps that fell out of the window, so no cache can be rolled
exactly. The decoder is then rebuilt from the last T tokens in one batched pass: a token past T costs
a full window again, the same as without the cache.

Training never comes here: the kernels and the executor of dlc.engine.run are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dlc.engine.kernels import Arrays
from dlc.engine.kernels.attention import causal_mask, rotary_tables, rotate
from dlc.engine.kernels.dense import row_max, row_sums
from dlc.engine.kernels.recurrent import CELLS
from dlc.engine.kernels.sequence import position_rows
from dlc.engine.run import PLAIN_CTX, Plan, Step, compile_plan
from dlc.graph import Graph, Network, Node

# Kinds whose output at a step reads only that step of their inputs at inference (dropout and noise
# are identities then): the decoder runs their ordinary kernels on the new steps alone. A new kind
# goes here, in STEP_KERNELS below, or nowhere (the full window); tests/engine/test_decode.py names
# every kind that is in none of them, so that a new one is classified on purpose.
POSITIONWISE = frozenset({
    "embed", "fc", "layernorm", "rmsnorm", "identity", "dropout", "noise", "add", "mul", "experts",
    "relu", "relu6", "leaky", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "softmax",
    # the math kinds of issue 28 (those with an axis only along the features: ALONG_AXIS)
    "logsoftmax", "softplus", "softsign", "exp", "sqrt", "abs", "neg", "clip", "prelu", "shift", "glu", "reduce",
    # the elementwise merges of several inputs (issue 22)
    "maximum", "minimum", "pow", "sub", "div",
    # each step times a matrix shared by every sample
    "matmul",
    # the kinds of today's vision networks (issue 21); droppath is the identity at inference
    "hardsigmoid", "hardswish", "scale", "droppath",
})
ALONG_AXIS = ("softmax", "logsoftmax", "glu", "reduce")  # positionwise when their axis is a step's features


@dataclass
class KVCache:
    """One causal attention layer's keys and values of the steps seen so far, per key/value head.

    Keys are stored as the scores read them: turned by their positions (rope) before `append`, N heads of
    them with grouped heads (kv=N); a sliding window masks what a step reads of them. Preallocated for
    the whole window: 2 x T x (N x D/H) numbers a layer (2 x D x T without grouped heads).
    """

    keys: np.ndarray  # (heads, T, head_dim)
    values: np.ndarray
    length: int = 0  # steps held

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Keys and values (heads, n, head_dim) of the next n steps."""
        n = k.shape[1]
        self.keys[:, self.length:self.length + n] = k
        self.values[:, self.length:self.length + n] = v
        self.length += n

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[:, :self.length], self.values[:, :self.length]


def attention_step(attrs: dict, params: Arrays, x: np.ndarray, cache: KVCache) -> np.ndarray:
    """Causal self-attention of n new steps x (1, n, D) over the cached steps and themselves: the
    attention kernel's arithmetic (dlc/engine/kernels/attention.py) at inference, for those rows only."""
    n, d = x.shape[1], x.shape[2]
    heads, dh = attrs["heads"], attrs["head_dim"]
    rows = x.reshape(n, d)
    q, k, v = (rows @ params[w].T for w in ("Wq", "Wk", "Wv"))
    if "bq" in params:
        q += params["bq"]
        v += params["bv"]
    if "bk" in params:  # keybias=off has none
        k += params["bk"]
    # (heads, n, head_dim); keys and values have as many heads as Wk has head_dim-row blocks
    q, k, v = (m.reshape(n, -1, dh).transpose(1, 0, 2) for m in (q, k, v))
    start = cache.length
    positions = np.arange(start, start + n)
    if attrs["rope"]:  # the new steps turned by their own positions; the cache holds keys already turned
        cos, sin = rotary_tables(positions, dh, attrs["rope"], q.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    cache.append(k, v)
    keys, values = cache.read()
    kv = keys.shape[0]
    # query head i reads key/value head i // (heads / kv): the query heads of a group share one
    q = q.reshape(kv, heads // kv * n, dh)
    a = (q @ keys.transpose(0, 2, 1)).reshape(heads, n, start + n)
    a *= 1 / math.sqrt(dh)
    if n > 1 or attrs["window"]:  # new step i (position start + i) sees steps up to its own, within a window
        a += causal_mask(positions, np.arange(start + n), a.dtype, attrs["window"])
    a -= row_max(a)
    np.exp(a, out=a)
    a /= row_sums(a)
    o = (a.reshape(kv, heads // kv * n, start + n) @ values).reshape(heads, n, dh)
    y = o.transpose(1, 0, 2).reshape(n, d) @ params["Wo"].T
    if "bo" in params:
        y += params["bo"]
    return y.reshape(1, n, d)


@dataclass
class RecurrentState:
    """A one-way rnn/lstm/gru's state after the steps seen so far (c is the LSTM's cell, else None)."""

    h: np.ndarray
    c: np.ndarray | None


def recurrent_step(kind: str, params: Arrays, x: np.ndarray, carry: RecurrentState) -> np.ndarray:
    """The new steps x (1, n, D) through the cell of dlc/engine/kernels/recurrent.py from the carried state."""
    step = CELLS[kind][0]
    W, R, B = params["W"][0], params["R"][0], params["B"][0]
    g = W.shape[0]
    zx = x[0] @ W.T + B[:g]
    hs = np.empty((x.shape[1], R.shape[1]), dtype=x.dtype)
    for t in range(x.shape[1]):
        # the rnn and gru cells ignore their c argument and return None for it
        carry.h, carry.c, _ = step(zx[t:t + 1], carry.h, carry.h if carry.c is None else carry.c, R, B[g:])
        hs[t] = carry.h[0]
    return hs[None]


# The attention attributes attention_step computes as the kernel does (grouped key/value heads are read
# off Wk's shape, rope turns the new steps before they are cached, a window masks what a step reads); an
# option beyond them that is set sends the network to the full window until attention_step follows it.
# source_steps and source_dim are steps and dim but with from=, which, as mask=, reads a second input
ATTENTION_FOLLOWED = frozenset({"heads", "steps", "dim", "head_dim", "causal", "bias", "keybias", "dropout", "kv",
                                "rope", "window", "source_steps", "source_dim"})

# Kinds that mix steps but can run on new steps given what they keep of earlier ones.
STEP_KERNELS = frozenset({"posembed", "attention", "rnn", "lstm", "gru"})


def why_not_stepwise(graph: Graph) -> str | None:
    """None when every layer of the graph can run on new steps alone; else why not, naming the layer."""
    steps = graph.input.out_shape
    if len(graph.inputs) > 1:
        return f"it has {len(graph.inputs)} inputs"
    if graph.input.dtype != "int64" or len(steps) != 1:
        return "its input is not a sequence of token ids"
    for n in graph.nodes[1:]:
        reason = _why_not(n, steps[0])
        if reason:
            return f"layer {n.name} ({n.kind}) {reason}"
    return None


def _why_not(n: Node, steps: int) -> str | None:
    if not n.out_shape or n.out_shape[0] != steps or len(n.out_shape) != 2:
        return "does not keep one output per step"
    if n.kind == "attention":
        if not n.attrs["causal"]:
            return "lets every step see later ones (no `causal`)"
        other = sorted(k for k, v in n.attrs.items() if k not in ATTENTION_FOLLOWED and v)
        return f"has {', '.join(other)}, which the step-by-step decoder does not follow yet" if other else None
    if n.kind in ("rnn", "lstm", "gru"):
        return "reads the sequence backwards too" if n.attrs["bidirectional"] else None
    if n.kind == "concat":
        return None if n.attrs["axis"] == 1 else "joins along the steps"
    if n.kind in ALONG_AXIS and n.attrs["axis"] != 1:
        return "works along the steps"
    if n.kind in POSITIONWISE or n.kind in STEP_KERNELS:
        return None
    return "mixes steps in a way the step-by-step decoder does not follow"


@dataclass
class Decoder:
    """A causal network run step by step on one sequence; `next_output(ids)` is the output at the last id."""

    net: Network = field(repr=False)
    plan: Plan = field(init=False, repr=False)
    window: int = field(init=False)  # T: the steps the network reads
    fed: list[int] = field(init=False, default_factory=list)  # the ids the caches hold, in order
    memory: dict = field(init=False, default_factory=dict, repr=False)  # slot -> KVCache or RecurrentState

    def __post_init__(self):
        self.plan = compile_plan(self.net.graph)
        self.window = self.net.graph.input.out_shape[0]
        self.reset()

    def reset(self) -> None:
        self.fed = []
        self.memory = {}
        dtype = self.net.params[next(iter(self.net.params))].dtype if self.net.params else np.float32
        for s in self.plan.steps:
            a = s.attrs
            if s.node.kind == "attention":
                # as many heads as Wk has head_dim-row blocks: fewer than the queries' when grouped
                kv_heads = self.net.params[dict(s.params)["Wk"]].shape[0] // a["head_dim"]
                shape = (kv_heads, self.window, a["head_dim"])
                self.memory[s.out] = KVCache(np.empty(shape, dtype), np.empty(shape, dtype))
            elif s.node.kind in ("rnn", "lstm", "gru"):
                h = np.zeros((1, a["hidden"]), dtype)
                self.memory[s.out] = RecurrentState(h, h if s.node.kind == "lstm" else None)

    def next_output(self, ids: list[int]) -> np.ndarray:
        """The output at the last of `ids` (the network's output for one step): the ids that extend what
        the caches hold run alone; a context past the window, which slides, rebuilds them."""
        context = list(ids[-self.window:])
        if context[:len(self.fed)] != self.fed or len(context) <= len(self.fed):
            self.reset()
        new = context[len(self.fed):]
        out = self._run(np.array([new], np.int64))
        self.fed = context
        return out[0, -1]

    def _run(self, ids: np.ndarray) -> np.ndarray:
        """The network's output (1, n, ...) for n new steps after the ones the caches hold."""
        start = len(self.fed)
        values: list = [None] * len(self.plan.nodes)
        values[0] = ids
        for s in self.plan.steps:
            params = {k: self.net.params[f] for k, f in s.params}
            xs = [values[i] for i in s.inputs]
            values[s.out] = self._layer(s, params, xs, start)
        return values[-1]

    def _layer(self, s: Step, params: Arrays, xs: list[np.ndarray], start: int) -> np.ndarray:
        kind = s.node.kind
        if kind == "attention":
            return attention_step(s.attrs, params, xs[0], self.memory[s.out])
        if kind == "posembed":
            return xs[0] + position_rows(s.attrs, params, start, xs[0].shape[1], xs[0].dtype)
        if kind in ("rnn", "lstm", "gru"):
            return recurrent_step(kind, params, xs[0], self.memory[s.out])
        state = {k: self.net.state[f] for k, f in s.state}
        return s.kernel(s.attrs, params, state, xs, PLAIN_CTX[False, True])[0]

    def cache_bytes(self) -> int:
        """What the caches hold at most: for each attention layer 2 (keys, values) x D x T numbers (with
        grouped heads, D is the key/value heads' width)."""
        return sum(m.keys.nbytes + m.values.nbytes for m in self.memory.values() if isinstance(m, KVCache))
