"""Window arithmetic shared by every convolution and pooling kind (docs/conventions.md, "Shapes")."""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import Shape

Pair = tuple[int, int]  # a (height, width) kernel, stride, dilation or output size
Pads = tuple[int, int, int, int]  # (top, left, bottom, right)


def pair(v: int | Pair | list[int]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_pads(size: int, k: int, stride: int, dil: int) -> tuple[int, int]:
    """`pad=same`: out = ceil(in/stride); the odd pixel of padding goes at the end (TF/ONNX SAME_UPPER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dil * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_pads(pad: int | Pair | str, hw: Pair, kernel: Pair, stride: Pair, dil: Pair) -> Pads:
    """Explicit (top, left, bottom, right) pads from an option value: int, (height, width), "same" or "valid"."""
    if pad == "valid":
        return (0, 0, 0, 0)
    if pad == "same":
        t, b = same_pads(hw[0], kernel[0], stride[0], dil[0])
        l, r = same_pads(hw[1], kernel[1], stride[1], dil[1])
        return (t, l, b, r)
    if isinstance(pad, int):
        if pad < 0:
            raise ShapeError(f"pad must be >= 0 (received pad={pad})", "pad")
        return (pad, pad, pad, pad)
    if isinstance(pad, tuple):
        if min(pad) < 0:
            raise ShapeError(f"pad must be >= 0 (received pad={pad[0]}x{pad[1]})", "pad")
        return (pad[0], pad[1], pad[0], pad[1])
    raise ShapeError(f"pad must be an integer, HxW, `same` or `valid` (received pad={pad})")


def window_out(size: int, k: int, stride: int, dil: int, before: int, after: int, ceil: bool = False,
               axis: str = "height") -> int:
    """Output length of a sliding window; a window larger than the padded input is an error."""
    span = dil * (k - 1) + 1
    padded = size + before + after
    if span > padded:
        raise ShapeError(f"the {k}-wide window{' (dilated to ' + str(span) + ')' if dil > 1 else ''} "
                         f"is larger than the padded input {axis} {padded}")
    if stride < 1:
        raise ShapeError(f"stride must be >= 1 (received {stride})")
    if not ceil:
        return (padded - span) // stride + 1
    out = -(-(padded - span) // stride) + 1
    # Caffe/PyTorch rule: the last window must start inside the input or the left padding.
    if (out - 1) * stride >= size + before:
        out -= 1
    return out


def image(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(f"{what} expects an image C@HxW, got {show(shape)}")
    return shape[0], shape[1], shape[2]


def show(shape: Shape) -> str:
    """A shape as the spec language writes it: 3@224x224, 784, 200x128."""
    if len(shape) == 3:
        return f"{shape[0]}@{shape[1]}x{shape[2]}"
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """The inverse of show, plus the input step's sequence forms: `3@224x224`, `784`, `200x128`,
    `seq 200` (token ids), `seq 50 of 64` (50 steps of 64 features). Raises ValueError."""
    words = text.strip().split()
    if words[:1] == ["seq"] and len(words) in (2, 4) and (len(words) == 2 or words[2] == "of"):
        dims = [words[1]] + words[3:]
    elif len(words) == 1:
        channels, _, rest = words[0].rpartition("@")
        dims = ([channels] if channels else []) + rest.split("x")
    else:
        dims = []
    if not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
        raise ValueError(f"`{text}` is not a shape: write it as the input step does, e.g. 3@224x224, 784, "
                         f"200x128, seq 200 or seq 50 of 64")
    return tuple(int(d) for d in dims)
