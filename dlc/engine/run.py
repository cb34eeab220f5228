"""Running a whole graph: forward in node order, backward through the recorded closures, the loss step.

A graph is compiled once into a plan (a list of steps: kernel, attributes, parameter names, input
slots) that is kept in this module's PLANS, not on the Graph, so a training step does no name lookups
beyond fetching each node's parameters. Values live in a list indexed by node position; slot 0 is the input.
A network with several inputs takes a dict of arrays by input name; each later input's slot is filled
before the first step, and its own step (_read_input) passes it on. Pairs of adjacent layers may run as
one step (dlc/engine/fusion.py); the plan keeps its unfused steps for whatever reads every slot.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from dlc.errors import DlcError
from dlc.graph import Graph, Network, Node
from dlc.layers import KINDS
from dlc.layers.spatial import show
from dlc.engine.fusion import FUSIONS, pass_on
from dlc.engine.kernels import KERNELS, Across, Ctx
from dlc.engine.losses import LOSSES
from dlc.engine.params import tensors

# Kinds that draw random numbers in training mode, by the attribute that makes them draw: at 0 (a
# transformer's attention without dropout) their kernels draw nothing. A fresh unseeded Generator costs
# ~13 us (OS entropy), a tenth of a whole MLP step at batch 10, so one is made only for graphs that need
# it; the kernels of a graph that draws nothing get no generator at all (PLAIN_CTX), and its batches may
# train as two halves (dlc/engine/halves.py).
RANDOM_KINDS = {"dropout": "p", "noise": "sigma", "attention": "dropout", "droppath": "p"}

# Kinds with running statistics whose kernels take the other part's sums (Ctx.across) when a batch trains
# as two parts (dlc/engine/halves.py); a network with any other kind that keeps state trains whole.
ACROSS_KINDS = frozenset({"bn"})

# A loss on the output of a final activation, and the fused, numerically stable loss on its input.
FUSED_LOSSES = {("xent", "softmax"): "xent", ("bce", "sigmoid"): "bce_logits"}


@dataclass(frozen=True)
class Step:
    node: Node
    attrs: dict  # the node's, read once per step
    kernel: Callable
    out: int  # the slot it writes: its node's position
    inputs: tuple[int, ...]  # the slots it reads
    params: tuple[tuple[str, str], ...]  # (name within the node, full name), shared ones included
    state: tuple[tuple[str, str], ...]
    free: tuple[int, ...]  # slots no later step reads: dropped as soon as this step has run
    carries: bool  # some input depends on a parameter, so its gradient is wanted even when the
    # network input's is not (False for a first conv: skipping its input gradient saved 0.6 ms of a
    # 4.5 ms LeNet-5 step)


@dataclass(frozen=True)
class Plan:
    nodes: list[Node]  # the graph's list, to notice a graph whose nodes were replaced
    steps: list[Step]  # steps[i] computes nodes[i + 1], fused pairs run as one (dlc/engine/fusion.py)
    exact: list[Step]  # the same without fusion: every slot holds its own node's output
    passed: frozenset[int]  # the slots of fused pairs' first layers, which hold their input in `steps`
    index: dict[str, int]  # node name -> slot
    param_names: tuple[str, ...]
    tokens: bool  # the input is token ids, which have no gradient
    random: bool  # some node draws random numbers in training mode
    balanced: bool  # some mixture adds a load-balancing loss in training
    inputs: tuple[int, ...]  # the slots of the graph's inputs, in the spec's order
    outputs: dict[str, int]  # the slots of the graph's outputs by name, in the spec's order


@dataclass
class Tape:
    """What backward needs: the plan and the steps forward ran, each step's backward closure, and the
    parameters (for shapes)."""

    plan: Plan
    steps: list[Step]
    backs: list[Callable] | None  # None once backward has consumed them
    stop: int  # the slot forward stopped at (its output)
    params: dict
    input_grad: bool  # whether backward returns the gradient of the network's input
    frozen: int = 0  # slots 1..frozen ran fixed: backward stops before them


# Plans by id() of their graph: a Graph is a plain (unhashable) dataclass, so it cannot key a
# WeakKeyDictionary; a finalizer removes the entry when the graph goes, before its id can be reused.
PLANS: dict[int, Plan] = {}


def draws(node: Node) -> bool:
    """Whether the node draws random numbers in training."""
    return node.kind in RANDOM_KINDS and float(node.attrs[RANDOM_KINDS[node.kind]]) > 0


def compile_plan(graph: Graph) -> Plan:
    """The graph's plan, built on first use and kept in PLANS while the graph lives."""
    plan = PLANS.get(id(graph))
    if plan is not None and plan.nodes is graph.nodes:
        return plan
    if plan is None:
        weakref.finalize(graph, PLANS.pop, id(graph), None)
    plan = PLANS[id(graph)] = _build_plan(graph)
    return plan


def _read_input(attrs: dict, params: dict, state: dict, xs: list, ctx: Ctx):
    """The step of an input after the first: it reads its own slot, filled before the first step, and
    hands its gradient back to that slot, where backward finds it."""
    return xs[0], lambda dy: ([dy], {})


def _build_plan(graph: Graph) -> Plan:
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    last_read = {}
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            last_read[index[name]] = i
    every = tensors(graph)
    by_node: dict[str, list] = {}
    for t in every:
        by_node.setdefault(t.node.name, []).append(t)
    steps = []
    # whether a slot's value depends on some parameter, so its gradient reaches one
    depends = [False] * len(graph.nodes)
    for i, n in enumerate(graph.nodes[1:], start=1):
        kernel = _read_input if n.kind == "input" else KERNELS.get(n.kind)
        if kernel is None:
            raise DlcError(f"the NumPy engine has no kernel for `{n.kind}` (layer {n.name})", n.pos,
                           graph.file, graph.source)
        mine = by_node.get(n.name, [])
        inputs = (i,) if n.kind == "input" else tuple(index[name] for name in n.inputs)
        own = tuple((t.name, t.full_name) for t in mine if t.trainable)
        params = own + tuple(KINDS[n.kind].shared(n.attrs).items())
        carries = any(depends[s] for s in inputs)
        depends[i] = carries or bool(params)
        steps.append(Step(
            node=n, attrs=n.attrs, kernel=kernel, out=i, inputs=inputs, params=params,
            state=tuple((t.name, t.full_name) for t in mine if not t.trainable),
            free=tuple(sorted({s for s, last in last_read.items() if last == i})), carries=carries,
        ))
    outputs = {name: index[n.name] for name, n in zip(graph.output_names, graph.outputs)}
    fused, passed = _fuse(steps, set(outputs.values()))
    return Plan(graph.nodes, fused, steps, passed, index, tuple(t.full_name for t in every if t.trainable),
                graph.input.dtype.startswith("int"), any(draws(n) for n in graph.nodes),
                any(n.kind == "experts" and n.attrs["balance"] > 0 for n in graph.nodes),
                tuple(i for i, n in enumerate(graph.nodes) if n.kind == "input"), outputs)


def _fuse(steps: list[Step], outputs: set[int]) -> tuple[list[Step], frozenset[int]]:
    """The steps with every pair of FUSIONS run as one, and the slots of the pairs' first layers."""
    readers: dict[int, list[int]] = {}
    for k, s in enumerate(steps):
        for i in s.inputs:
            readers.setdefault(i, []).append(k)
    fused, passed = list(steps), set()
    for k, first in enumerate(steps):
        after = readers.get(first.out, [])
        if len(after) != 1 or first.out in outputs:
            continue
        second = steps[after[0]]
        how = FUSIONS.get((first.node.kind, second.node.kind))
        # a layer already in a pair stays in that one
        if how is None or second.inputs != (first.out,) or fused[k] is not first or fused[after[0]] is not second:
            continue
        owner = (first, second)[how.owner]
        fused[k] = replace(first, kernel=pass_on, params=(), state=())
        fused[after[0]] = replace(second, kernel=how.make(first.attrs, second.attrs), attrs=owner.attrs,
                                  params=owner.params, state=owner.state, carries=first.carries)
        passed.add(first.out)
    return fused, frozenset(passed)


def _slot(graph: Graph, plan: Plan, name: str | None) -> int:
    if name is None:
        return len(plan.nodes) - 1
    if name not in plan.index:
        raise DlcError(f"no layer named `{name}` in {graph.file}")
    return plan.index[name]


Feed = np.ndarray | dict  # one input's batch, or a batch per input name for a network with several


def _feeds(graph: Graph, plan: Plan, x: Feed) -> list[tuple[int, np.ndarray]]:
    """(slot, batch) for every input of the graph, checked against its shape; a `shared` input is one
    tensor without a batch axis, which the merges reading it broadcast over the batch."""
    inputs = [plan.nodes[i] for i in plan.inputs]
    if not isinstance(x, dict):
        if len(inputs) > 1:
            raise DlcError(f"{graph.file} has {len(inputs)} inputs: give a batch for each of "
                           f"{', '.join(n.name for n in inputs)}")
        x = {inputs[0].name: x}
    elif set(x) != {n.name for n in inputs}:
        raise DlcError(f"{graph.file} takes the inputs {', '.join(n.name for n in inputs)}; received "
                       f"{', '.join(map(str, x)) or 'none'}")
    for n in inputs:
        v = x[n.name]
        if n.attrs.get("shared"):
            if v.shape != n.out_shape:
                raise DlcError(f"input `{n.name}` is shared by every sample, shaped {show(n.out_shape)} without "
                               f"a batch axis; received {v.shape}")
        elif v.shape[1:] != n.out_shape:
            what = "the input batch" if len(inputs) == 1 else f"the batch of input `{n.name}`"
            raise DlcError(f"{what} has shape {v.shape} (a batch of {show(v.shape[1:]) or 'scalars'}); "
                           f"{graph.file} takes {show(n.out_shape) or 'one number per sample'}")
    batched = [n for n in inputs if not n.attrs.get("shared")]
    if len({len(x[n.name]) for n in batched}) > 1:
        raise DlcError(f"the inputs' batches differ in size: "
                       f"{', '.join(f'{n.name} {len(x[n.name])}' for n in batched)}")
    return [(plan.index[n.name], x[n.name]) for n in inputs]


# The contexts of a graph that draws no random numbers, shared: kernels only read them, and a new
# one costs about 0.4 us, three times in a step that takes 70 us at batch 10.
PLAIN_CTX = {(training, need_dx): Ctx(training, None, need_dx) for training in (False, True)
             for need_dx in (False, True)}


def _ctx(plan: Plan, training: bool, rng: np.random.Generator | None, need_dx: bool = True,
         aux: list[float] | None = None, across: Across | None = None) -> Ctx:
    if not plan.balanced:
        aux = None  # nothing will add to it: keep the shared contexts
    if not plan.random and aux is None and across is None:
        return PLAIN_CTX[training, need_dx]
    if training and rng is None and plan.random:
        rng = np.random.default_rng()
    return Ctx(training, rng, need_dx, aux, across)


def _execute(plan: Plan, steps: list[Step], params: dict, state: dict, feeds: list, ctx: Ctx, stop: int,
             backs: list | None, frozen: int = 0, input_grad: bool = True) -> Iterator[tuple[Node, np.ndarray]]:
    """Yield each node's output in order up to slot `stop` (its input at a fused pair's first layer, when
    `steps` are the plan's fused ones); record backward closures in `backs`.

    The first `frozen` steps run as at inference (bn on its running statistics, which stay as they
    are; no dropout) and keep nothing for backward: transfer learning's fixed layers. Without
    `input_grad`, steps whose inputs depend on no parameter are told (ctx.need_dx) that their input
    gradients will not be read.
    """
    values: list = [None] * len(plan.nodes)
    for slot, x in feeds:
        values[slot] = x
    yield plan.nodes[0], feeds[0][1]
    fixed = PLAIN_CTX[False, True]
    no_dx = ctx if input_grad else _ctx(plan, ctx.training, ctx.rng, need_dx=False, aux=ctx.aux, across=ctx.across)
    for step in steps[:stop]:
        y, back = step.kernel(step.attrs, {k: params[f] for k, f in step.params} if step.params else {},
                              {k: state[f] for k, f in step.state} if step.state else {},
                              [values[i] for i in step.inputs],
                              fixed if step.out <= frozen else ctx if step.carries else no_dx)
        values[step.out] = y
        if backs is not None:
            backs.append(None if step.out <= frozen else back)
        # backward reads only what the closures kept, so an output nobody reads again can go at once
        for i in step.free:
            values[i] = None
        yield step.node, y


def forward(net: Network, x: Feed, *, training: bool = False,
            rng: np.random.Generator | None = None, keep: bool = False, upto: str | None = None,
            frozen: str | None = None, input_grad: bool = True, aux: list[float] | None = None,
            across: Across | None = None) -> tuple[np.ndarray, Tape | None]:
    """Run the graph (up to and including node `upto`); with keep=True also return the tape for backward,
    whose backward gives the input's gradient only when `input_grad`. In training, the auxiliary losses
    of the kernels (a mixture's load balancing) are appended to `aux` when it is given.

    In training mode dropout and noise draw from `rng` and bn uses batch statistics and updates `state`;
    every node up to and including `frozen` runs as at inference and gets no gradients. `across` is the
    other part of a batch that trains as two (dlc/engine/halves.py).
    """
    plan = compile_plan(net.graph)
    stop = _slot(net.graph, plan, upto)
    fixed = plan.index[frozen] if frozen else 0
    feeds = _feeds(net.graph, plan, x)
    backs = [] if keep else None
    y = feeds[0][1]
    # stopping at a fused pair's first layer wants its output; freezing there splits the pair
    steps = plan.exact if {stop, fixed} & plan.passed else plan.steps
    run = _execute(plan, steps, net.params, net.state, feeds, _ctx(plan, training, rng, aux=aux, across=across),
                   stop, backs, fixed, input_grad)
    if upto is None and len(plan.outputs) > 1:  # by output name, as the inputs are given
        slots = {slot: name for name, slot in plan.outputs.items()}
        ys = {slots[node_slot]: y for node_slot, (_, y) in enumerate(run) if node_slot in slots}
        y = {name: ys[name] for name in plan.outputs}
    else:
        for _, y in run:
            pass
    return y, (Tape(plan, steps, backs, stop, net.params, input_grad, fixed) if keep else None)


def frozen_params(graph: Graph, frozen: str | None) -> set[str]:
    """The trainable tensors of every node up to and including `frozen`: transfer learning keeps them."""
    if not frozen:
        return set()
    plan = compile_plan(graph)
    return {full for step in plan.exact[:plan.index[frozen]] for _, full in step.params}


def freeze_point(graph: Graph, label: str) -> str:
    """The node `--freeze LABEL` names: a label set by `as LABEL`, or a layer's name from the tables."""
    for n in graph.nodes:
        if n.label == label:
            return n.name
    if label in {n.name for n in graph.nodes[1:]}:
        return label
    labels = [n.label for n in graph.nodes if n.label]
    raise DlcError(f"freeze={label}: no step of {graph.file} is labelled `{label}` and no layer is named so "
                   f"(labels: {', '.join(labels) or 'none; add `as LABEL` to a step'})")


def activations(net: Network, x: Feed, *, training: bool = False,
                rng: np.random.Generator | None = None) -> Iterator[tuple[Node, np.ndarray]]:
    """Every node with its output, the input first, keeping nothing for backward."""
    plan = compile_plan(net.graph)
    feeds = _feeds(net.graph, plan, x)
    yield from _execute(plan, plan.exact, net.params, net.state, feeds, _ctx(plan, training, rng), len(plan.nodes) - 1,
                        None)


def backward(tape: Tape, dy: np.ndarray | dict) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(gradient of every parameter by full name, gradient of the input or None: for token ids, or
    when the tape was recorded without input_grad; a dict by input name for several inputs).

    With several outputs, dy is a dict of their gradients by output name, as forward gave the outputs.
    A tensor read by several nodes receives the sum of their gradients. Parameters the output does not
    depend on (past `upto`) get zeros, so an optimizer can treat every parameter alike. The tape is
    consumed: each closure is released once used, so a layer's saved activations do not outlive it.
    """
    if tape.backs is None:
        raise ValueError("this tape was already consumed by backward; run forward with keep=True again")
    plan, steps, backs = tape.plan, tape.steps, tape.backs
    tape.backs = None
    pending: list = [None] * len(plan.nodes)
    if isinstance(dy, dict):
        for name, slot in plan.outputs.items():
            pending[slot] = dy[name]
    else:
        pending[tape.stop] = dy
    grads: dict[str, np.ndarray] = {}
    input_grad = tape.input_grad
    for k in range(tape.stop - 1, tape.frozen - 1, -1):  # frozen steps (slots 1..frozen) get no gradients
        step = steps[k]
        g = pending[step.out]
        passes = step.carries or input_grad  # whether its input gradients are read
        if g is None or not (passes or step.params):
            continue  # no gradient, or one that would only reach the unwanted input gradient
        pending[step.out] = None
        dxs, dparams = backs[k](g)
        backs[k] = None  # its saved activations (im2col columns, masks) are no longer needed
        for name, full in step.params:
            # a shared tensor (tied weights) receives the sum of its readers' gradients
            grads[full] = grads[full] + dparams[name] if full in grads else dparams[name]
        if passes:
            for i, dx in zip(step.inputs, dxs):
                if dx is not None:
                    # out of place: the first gradient may be a kernel's own buffer or the caller's dy
                    pending[i] = dx if pending[i] is None else pending[i] + dx
    if len(grads) < len(plan.param_names):
        fixed = {full for step in plan.exact[:tape.frozen] for _, full in step.params}
        for full in plan.param_names:
            if full not in grads and full not in fixed:
                grads[full] = np.zeros_like(tape.params[full])
    if not tape.input_grad:
        return grads, None
    if len(plan.inputs) > 1:  # by input name, as forward took them; token ids have none
        return grads, {plan.nodes[i].name: None if plan.nodes[i].dtype == "int64" else pending[i]
                       for i in plan.inputs}
    return grads, None if plan.tokens else pending[0]


def _fused(graph: Graph, loss: str) -> str | None:
    """The fused loss when `loss` follows the graph's final activation (xent after softmax, bce after sigmoid)."""
    return FUSED_LOSSES.get((loss, graph.output.kind))


def loss_forward(net: Network, x: Feed, y: np.ndarray | dict, loss: str, *,
                 rng: np.random.Generator | None = None, keep: bool = False, frozen: str | None = None,
                 input_grad: bool = True, across: Across | None = None):
    """(value, network output, d value / d (output or logits), tape or None), in training mode.

    The tape ends where the loss was taken (the logits when fused), so `backward(tape, dout)` continues it.
    The value includes the kernels' auxiliary losses (a mixture's load balancing), whose gradients their
    backward adds.
    """
    if loss not in LOSSES:
        raise DlcError(f"unknown loss `{loss}` (expected one of {', '.join(sorted(LOSSES))})")
    fused = _fused(net.graph, loss)
    aux: list[float] = []
    if isinstance(y, dict):  # several outputs (gradcheck; dlc train refuses them): the sum of their losses
        outs, tape = forward(net, x, training=True, rng=rng, keep=keep, frozen=frozen, input_grad=input_grad,
                             aux=aux, across=across)
        parts = {name: LOSSES[loss](out, y[name]) for name, out in outs.items()}
        return sum(v for v, _ in parts.values()) + sum(aux), outs, {k: d for k, (_, d) in parts.items()}, tape
    if fused is None:
        out, tape = forward(net, x, training=True, rng=rng, keep=keep, frozen=frozen,
                            input_grad=input_grad, aux=aux, across=across)
        value, dout = LOSSES[loss](out, y)
        return value + sum(aux), out, dout, tape
    last = net.graph.output
    logits, tape = forward(net, x, training=True, rng=rng, keep=keep, upto=last.inputs[0],
                           frozen=frozen, input_grad=input_grad, aux=aux, across=across)
    value, dlogits = LOSSES[fused](logits, y)
    out, _ = KERNELS[last.kind](last.attrs, {}, {}, [logits], Ctx(True, rng))
    return value + sum(aux), out, dlogits, tape


def loss_and_grads(net: Network, x: np.ndarray, y: np.ndarray, loss: str, *,
                   rng: np.random.Generator | None = None, frozen: str | None = None,
                   across: Across | None = None) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    """One training step's core: (loss value, network output, parameter gradients).

    With `xent` after a final softmax (or `bce` after a final sigmoid) the network runs up to the logits
    and the fused loss takes them, which stays finite where the probabilities round to 0 or 1; `out`
    is still the network's output (the probabilities). `xent` without a final softmax reads the output
    as logits. With `frozen`, the parameters of the nodes up to it get no gradients (none in the dict).
    With `across`, x is one part of a batch that trains as two (dlc/engine/halves.py).
    """
    value, out, dout, tape = loss_forward(net, x, y, loss, rng=rng, keep=True, frozen=frozen,
                                          input_grad=False, across=across)
    grads, _ = backward(tape, dout)
    return value, out, grads


# Inference batch: the per-sample cost was lowest at 32-128 for every engine target measured (per image, batch
# 64 against 256: EfficientNet-style 559 against 766 us, transformer_reverse 50 against 60, llama_char 566
# against 671, LeNet-5 22 against 25): a batch's activations then stay in the caches between layers. Only
# the 784-30-10 MLP, at about a microsecond per image, was faster with larger batches.
PREDICT_BATCH = 64


def predict(net: Network, x: Feed, batch: int = PREDICT_BATCH) -> np.ndarray | dict:
    """The network's output for every sample of x, in inference mode, `batch` samples at a time; a dict
    by output name for a network with several."""
    if batch < 1:
        raise DlcError(f"batch must be >= 1 (received {batch})")
    plan = compile_plan(net.graph)
    shared = {n.name for n in net.graph.inputs if n.attrs.get("shared")}
    n = next(len(v) for (slot, v) in _feeds(net.graph, plan, x) if plan.nodes[slot].name not in shared)
    names = net.graph.output_names
    outs: dict = {}
    for start in range(0, n, batch):
        part = {k: v if k in shared else v[start:start + batch] for k, v in x.items()} if isinstance(x, dict) \
            else x[start:start + batch]
        ys, _ = forward(net, part)
        for name, y in (ys if isinstance(ys, dict) else {names[0]: ys}).items():
            if name not in outs:
                outs[name] = np.empty((n, *y.shape[1:]), dtype=y.dtype)
            outs[name][start:start + len(y)] = y
    if n == 0:
        outs = {name: np.zeros((0, *o.out_shape), dtype=np.float32) for name, o in zip(names, net.graph.outputs)}
    return outs if len(names) > 1 else outs[names[0]]
