"""Window arithmetic shared by every convolution and pooling kind (docs/conventions.md, "Shapes")."""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import Shape, Signal

Pair = tuple[int, int]  # a (height, width) kernel, stride, dilation or output size
Dims = tuple[int, ...]  # one value per spatial axis: (L,), (H, W) or (D, H, W)
# Every axis's padding before it, then every axis's after it: ONNX's order, (top, left, bottom, right) in 2-D.
Pads = tuple[int, ...]

AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def pair(v: int | Pair | list[int]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def is_spatial(shape: Shape) -> bool:
    """A signal C@L, an image C@HxW or a volume C@DxHxW: channels, then 1 to 3 spatial axes."""
    return isinstance(shape, Signal) or len(shape) in (3, 4)


def spatial(shape: Shape, what: str) -> tuple[int, Dims]:
    """(channels, spatial sizes) of the input of a kind that slides or pools over 1, 2 or 3 axes."""
    if not is_spatial(shape):
        raise ShapeError(f"{what} expects a signal C@L, an image C@HxW or a volume C@DxHxW, got {show(shape)}")
    return shape[0], tuple(shape[1:])


def spatial_shape(channels: int, dims: Dims) -> Shape:
    return Signal((channels, *dims)) if len(dims) == 1 else (channels, *dims)


def per_axis(v: int | tuple[int, ...], shape: Shape, what: str, attr: str) -> Dims:
    """A kernel, stride or dilation for every spatial axis of `shape`: one number applies to each axis,
    several must be one per axis (a 3x3 kernel on a volume is a mistake, not a guess)."""
    rank = len(shape) - 1
    if isinstance(v, int):
        return (v,) * rank
    if len(v) != rank:
        raise ShapeError(f"the {what} {'x'.join(map(str, v))} has {len(v)} axes but the input {show(shape)} has "
                         f"{rank}: write one number for every axis, or {rank} like "
                         f"{'x'.join([str(v[-1])] * rank)}", attr)
    return tuple(int(x) for x in v)


def same_pads(size: int, k: int, stride: int, dil: int) -> tuple[int, int]:
    """`pad=same`: out = ceil(in/stride); the odd pixel of padding goes at the end (TF/ONNX SAME_UPPER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dil * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_pads(pad: int | tuple[int, ...] | str, sizes: Dims, kernel: Dims, stride: Dims, dil: Dims) -> Pads:
    """Explicit pads (every axis's before, then every axis's after) from an option value: an int for
    every axis, one int per axis (before and after alike), "same" or "valid"."""
    if pad == "valid":
        return (0,) * (2 * len(sizes))
    if pad == "same":
        befores, afters = zip(*(same_pads(*axis) for axis in zip(sizes, kernel, stride, dil)))
        return (*befores, *afters)
    if isinstance(pad, int):
        pad = (pad,) * len(sizes)
    if isinstance(pad, tuple):
        shown = "x".join(map(str, pad))
        if len(pad) != len(sizes):
            raise ShapeError(f"pad={shown} has {len(pad)} axes but the input {'x'.join(map(str, sizes))} has "
                             f"{len(sizes)}: write one number for every axis, or one per axis", "pad")
        if min(pad) < 0:
            raise ShapeError(f"pad must be >= 0 (received pad={shown})", "pad")
        return (*pad, *pad)
    raise ShapeError(f"pad must be an integer, `same` or `valid` (received pad={pad})")


def windows_out(sizes: Dims, kernel: Dims, stride: Dims, dil: Dims, pads: Pads, ceil: bool = False) -> Dims:
    """Output sizes of a sliding window over every spatial axis."""
    n = len(sizes)
    return tuple(window_out(sizes[i], kernel[i], stride[i], dil[i], pads[i], pads[n + i], ceil, AXES[n][i])
                 for i in range(n))


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
    """A shape as the spec language writes it: 3@224x224, 1@8000, 3@16x112x112, 784, 200x128."""
    if is_spatial(shape):
        return f"{shape[0]}@{'x'.join(str(d) for d in shape[1:])}"
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """The inverse of show, plus the input step's sequence forms: `3@224x224`, `1@8000`, `3@16x112x112`,
    `784`, `200x128`,
    `seq 200` (token ids), `seq 50 of 64` (50 steps of 64 features). Raises ValueError."""
    words = text.strip().split()
    if words[:1] == ["seq"] and len(words) in (2, 4) and (len(words) == 2 or words[2] == "of"):
        dims = [words[1]] + words[3:]
    elif len(words) == 1:
        channels, _, rest = words[0].rpartition("@")
        dims = ([channels] if channels else []) + rest.split("x")
    else:
        dims = []
    if not dims or not all(d.isdigit() and int(d) > 0 for d in dims) or ("@" in text and len(dims) > 4):
        raise ValueError(f"`{text}` is not a shape: write it as the input step does, e.g. 3@224x224, 1@8000, "
                         f"784, 200x128, seq 200 or seq 50 of 64")
    shape = tuple(int(d) for d in dims)
    return Signal(shape) if "@" in text and len(shape) == 2 else shape
