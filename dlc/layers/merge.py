"""input, add, mul, concat.

input: shape (batch left out); its node's dtype is int64 for `input seq T` (token ids).
add, mul: the elementwise sum or product of equal shapes, or of one rank with size-1 axes (broadcast_shape()).
mul: a branch may instead be a vector of the other's features
(C against C@HxW or TxC), repeated over its positions. broadcast: for each input, whether it is such
a vector.
maximum, minimum, pow, sub, div: elementwise, broadcasting as add; pow, sub and div take two inputs, the
current tensor first (its power, or what is taken from or divided).
concat: axis, the index in the shape (batch left out) it joins along: channels of an image (0),
features of a vector (0) or of a sequence (1).
matmul: the current tensor (..., K) times a `shared` input K x M (no batch axis): (..., M).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import Grid, LayerKind, Shape, Signal, elements, feature_axis, register, with_features
from dlc.layers.spatial import show

register(LayerKind("input", lambda attrs, ins: (Signal(attrs["shape"]) if isinstance(attrs["shape"], Signal)
                                                else tuple(attrs["shape"]), dict(attrs))))


def broadcast_shape(ins: list[Shape]) -> Shape | None:
    """NumPy's and ONNX's broadcasting on shapes of one rank: each axis equal, or 1 where another
    input's is larger (that input is repeated along it); None where they do not broadcast. The ranks
    must match because the batch axis, left out here, leads every shape."""
    if len({len(s) for s in ins}) != 1:
        return None
    out = tuple(max(axis) for axis in zip(*ins))
    if any(d not in (1, o) for s in ins for d, o in zip(s, out)):
        return None
    grid = next((s for s in ins if isinstance(s, Grid) and s == out), None)
    return grid or (type(ins[0])(out) if isinstance(ins[0], Signal) else out)  # a grid or a signal stays one


def resolve_add(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    out = broadcast_shape(ins)
    if out is None:
        raise ShapeError(f"add needs equal shapes, got {' and '.join(show(s) for s in ins)}")
    return out, dict(attrs)


register(LayerKind(
    "add", resolve_add, merge=True,
    # one add per element for each input beyond the first
    flops=lambda a, ins, out: (len(ins) - 1) * elements(out),
))


def resolve_mul(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    out = broadcast_shape(ins)
    if out is not None:
        return out, dict(attrs, broadcast=(False,) * len(ins))  # size-1 axes repeat as NumPy's do
    out = max(ins, key=len)  # an image or a sequence beside a vector of its features
    features = (out[feature_axis(out)],)
    for s in ins:
        if s != out and s != features:
            vector = f", or a vector of the {features[0]} features of {show(out)}" if len(out) > 1 else ""
            raise ShapeError(f"mul needs equal shapes{vector}, got {' and '.join(show(s) for s in ins)}")
    broadcast = tuple(s != out for s in ins)
    if any(broadcast) and (isinstance(out, Signal) or len(out) == 4):
        # the backends repeat a vector over an image's pixels or a sequence's steps only
        raise ShapeError(f"mul repeats a vector over an image or a sequence, not over {show(out)}: "
                         f"got {' and '.join(show(s) for s in ins)}")
    return out, dict(attrs, broadcast=broadcast)


register(LayerKind(
    "mul", resolve_mul, merge=True,
    # add's rule: one multiply per output element for each input beyond the first
    flops=lambda a, ins, out: (len(ins) - 1) * elements(out),
))

def resolve_concat(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    rank = len(ins[0])
    axis = feature_axis(ins[0])
    for s in ins[1:]:
        if len(s) != rank or any(x != y for i, (x, y) in enumerate(zip(s, ins[0])) if i != axis):
            what = "spatial sizes" if rank == 3 else "shapes apart from the features"
            raise ShapeError(f"concat needs equal {what}, got {' and '.join(show(s) for s in ins)}")
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    if isinstance(ins[0], Grid):  # the features of every grid token joined
        return with_features(ins[0], out[axis]), dict(attrs, axis=axis)
    return type(ins[0])(out), dict(attrs, axis=axis)  # a signal stays one


register(LayerKind("concat", resolve_concat, merge=True))


# --- the elementwise merges of several inputs (issue 22): ONNX's Max, Min, Pow, Sub, Div ---------------

def elementwise_merge(name: str, pair: bool) -> LayerKind:
    """A merge that broadcasts as add does; `pair`: it takes exactly two inputs, in order."""
    def resolve(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
        if pair and len(ins) != 2:
            raise ShapeError(f"{name} takes two inputs, the current tensor and one more; got {len(ins)}")
        out = broadcast_shape(ins)
        if out is None:
            raise ShapeError(f"{name} needs equal shapes, or 1 on an axis where they differ, got "
                             f"{' and '.join(show(s) for s in ins)}")
        return out, dict(attrs)
    # add's rule: one operation per output element for each input beyond the first
    return LayerKind(name, resolve, merge=True, flops=lambda a, ins, out: (len(ins) - 1) * elements(out))


for _name, _pair in (("maximum", False), ("minimum", False), ("pow", True), ("sub", True), ("div", True)):
    register(elementwise_merge(_name, _pair))


# --- matmul: the current tensor times a matrix shared by every sample (ONNX MatMul, PyTorch's mm) -----

def resolve_matmul(attrs: dict, ins: list[Shape]) -> tuple[Shape, dict]:
    x, w = ins
    if len(w) != 2 or not x or x[-1] != w[0]:
        raise ShapeError(f"matmul multiplies the features (last axis) of its input by a K x M matrix of the same "
                         f"K, got {show(x) or 'a scalar'} and {'x'.join(map(str, w))}")
    return (*x[:-1], w[1]), dict(attrs)


register(LayerKind(
    "matmul", resolve_matmul, merge=True,
    # K multiply-accumulates per output element, as fc's; the matrix is an input, not a parameter
    macs=lambda a, ins, out: elements(out) * ins[0][-1],
    flops=lambda a, ins, out: 2 * elements(out) * ins[0][-1],
))
