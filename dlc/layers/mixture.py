"""experts: the node that joins a mixture of experts (`experts E top=K { … }`, docs/language.md).

The compiler writes a mixture as E+2 parts: a router `fc E bias=off` (its node `<name>.router`), E copies
of the block, each with its own weights (`<name>.expert1.…` to `<name>.expertE.…`), and this node, which
reads [router logits, expert 1's output, …, expert E's output]. On each step (or vector) it keeps the K
largest logits (ties: the lower expert index first), takes their softmax (Mixtral: top-K, then softmax
over those K) and sums the K experts' outputs weighted so.

experts: E; top: K; balance: alpha of the auxiliary load-balancing loss added in training (0: none).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import LayerKind, Shape, elements, register
from dlc.layers.spatial import show


def check_mixture(attrs: dict) -> None:
    """Refuse a bad E, K or alpha before the compiler expands E copies of the block; `attr` puts the
    caret under the value."""
    e, k, alpha = attrs["experts"], attrs["top"], attrs["balance"]
    if e < 1:
        raise ShapeError(f"a mixture needs at least 1 expert (received experts {e})", "experts")
    if k < 1:
        raise ShapeError(f"top=K routes each step to K experts, at least 1 (received top={k})", "top")
    if k > e:
        raise ShapeError(f"top=K routes each step to K of the {e} experts, so K is at most {e} "
                         f"(received top={k})", "top")
    if alpha < 0:
        raise ShapeError(f"balance=ALPHA weighs the load-balancing loss, a number >= 0 (received "
                         f"balance={alpha:g})", "balance")


def resolve_experts(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    check_mixture(attrs)
    router, outs = ins[0], ins[1:]
    if len(outs) != attrs["experts"] or router[-1] != attrs["experts"]:
        raise ShapeError(f"a mixture of {attrs['experts']} experts reads {attrs['experts']} router logits and "
                         f"{attrs['experts']} expert outputs")
    for s in outs[1:]:
        if s != outs[0]:
            raise ShapeError(f"the experts disagree: {show(outs[0])} and {show(s)}")
    return outs[0], dict(attrs)


def experts_flops(a: dict, ins: list[Shape], out: Shape) -> int:
    # per step: softmax over the K kept logits (3 each, as softmax), K multiplies and a sum of K per
    # feature for the weighted sum (a sum over K counts K, as dlc counts ONNX's ReduceSum); picking the
    # top K is a selection, not counted (as the causal mask)
    steps = elements(out) // out[-1]
    k = a["top"]
    return steps * 3 * k + 2 * k * elements(out)


register(LayerKind(
    "experts", resolve_experts, size="int", size_required=True, size_attr="experts",
    options={"top": 2, "balance": 0.0}, flops=experts_flops, merge=True, body=True,
))
