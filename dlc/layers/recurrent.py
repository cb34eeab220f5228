"""rnn, lstm, gru, laid out as the ONNX RNN/LSTM/GRU operators so the export and the count agree.

Resolved attributes: hidden (H), in_features (D), directions (1 or 2), gates (1, 4, 3), sequences,
bidirectional. W (dirs, gates*H, D), R (dirs, gates*H, H), B (dirs, 2*gates*H): ONNX gate order
(LSTM i, o, f, c; GRU z, r, h), input-side and hidden-side biases. rnn uses tanh; GRU applies the
reset gate after the hidden matrix product (ONNX linear_before_reset=1, as cuDNN and PyTorch do).
Input (T, D); output (dirs*H) for the last step or (T, dirs*H) with `sequences`.
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import BIAS, GLOBAL, CostRule, LayerKind, is_sequence, Shape, ShapeRule, register, weight
from dlc.layers.spatial import show

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Elementwise work per hidden unit per step, beyond the matrix products and the adds that join them:
# rnn tanh; lstm 3 sigmoids, 2 tanh, c = f*c + i*g (3), h = o*tanh(c) (1); gru 2 sigmoids, tanh,
# r*(Rh + b) (1), h = (1-z)*n + z*h (3).
GATE_OPS = {"rnn": 1, "lstm": 9, "gru": 7}


def resolve_recurrent(kind: str) -> ShapeRule:
    def resolve(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
        if not is_sequence(ins[0]):
            raise ShapeError(f"{kind} expects a sequence TxD, got {show(ins[0])}")
        if attrs["hidden"] < 1:
            raise ShapeError(f"{kind} needs at least one hidden unit (received {attrs['hidden']})", "hidden")
        t, d = ins[0]
        dirs = 2 if attrs["bidirectional"] else 1
        a = dict(attrs, in_features=d, directions=dirs, gates=GATES[kind])
        width = dirs * attrs["hidden"]
        return ((t, width) if attrs["sequences"] else (width,)), a
    return resolve


def recurrent_params(a: dict, ins: list[Shape]) -> dict[str, Shape]:
    g, h, d, dirs = a["gates"] * a["hidden"], a["hidden"], a["in_features"], a["directions"]
    return {"W": (dirs, g, d), "R": (dirs, g, h), "B": (dirs, 2 * g)}


def recurrent_fans(a: dict, shape: Shape) -> tuple[float, float]:
    # W (dirs, gates*H, D) and R (dirs, gates*H, H) stack one H x D (or H x H) matrix per gate
    # and direction; each gate is its own layer as far as the variance goes.
    return shape[2], a["hidden"]


# A unit's incoming weights are a row of W or R (the last axis), one per gate and direction.
RECURRENT_TENSORS = {"W": weight(recurrent_fans, maxnorm=(-1,)), "R": weight(recurrent_fans, maxnorm=(-1,)),
                     "B": BIAS}


def recurrent_macs(a: dict, ins: list[Shape], out: Shape) -> int:
    t = ins[0][0]
    return t * a["directions"] * a["gates"] * a["hidden"] * (a["in_features"] + a["hidden"])


def recurrent_flops(kind: str) -> CostRule:
    def flops(a: dict, ins: list[Shape], out: Shape) -> int:
        t, gh = ins[0][0], a["gates"] * a["hidden"]
        # per step: the products, Wx + Rh joined (1 per gate unit), two bias adds, the gate arithmetic
        per_step = 3 * gh + GATE_OPS[kind] * a["hidden"]
        return 2 * recurrent_macs(a, ins, out) + t * a["directions"] * per_step
    return flops


for _kind in GATES:
    register(LayerKind(
        _kind, resolve_recurrent(_kind), size="int", size_required=True, size_attr="hidden",
        flags=("sequences", "bidirectional"), params=recurrent_params, tensors=RECURRENT_TENSORS,
        macs=recurrent_macs,
        flops=recurrent_flops(_kind), window=lambda a: GLOBAL,
    ))
