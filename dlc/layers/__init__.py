"""The registry of layer kinds: each kind's syntax, option defaults, shape rule, parameters and costs.

A kind is defined once, here, in plain Python integers. The NumPy engine (dlc.engine) maps the kind's
name to its forward/backward kernel and the ONNX exporter (dlc.onnx) to its lowering; neither repeats
the shape or parameter arithmetic, nor keeps its own list of which kinds have weights: each kind's
`tensors` say what every tensor it may have is (weight, bias, table, scale, shift, statistic), how it
starts and whether regularisation acts on it. Every rule reads the node's resolved attributes
(`resolve` fills in the derived ones such as explicit pads) and the input shapes (batch left out).

Adding a kind touches more than these two backends: the PyTorch mapping (dlc.torch.modules), the ONNX
importer's patterns, the ONNX analysis's operator costs (dlc/onnx/count.py, which must agree with the
kind's `macs` and `flops`), the language guide and the tests that keep each table complete.
docs/extending.md lists them in order, each with the test that asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Callable, Mapping, Protocol

Shape = tuple[int, ...]


class Signal(tuple):
    """A 1-D signal C@L as (C, L): channels first like an image, where a sequence's (T, D) of the same
    length keeps its features last. The type is what tells the two apart; the spatial kinds make it."""

    __slots__ = ()


class Grid(tuple):
    """A sequence (T, D) whose T steps are an HxW grid of tokens, row by row: what `tokens` makes of an
    image, and what windowed attention and patchmerge read (Swin). Every sequence kind takes it as a
    sequence; the kinds that keep the steps (fc, the norms, activations, add) keep the grid."""

    def __new__(cls, hw: tuple[int, int], features: int) -> "Grid":
        grid = super().__new__(cls, (hw[0] * hw[1], features))
        grid.hw = (int(hw[0]), int(hw[1]))
        return grid

    def __reduce__(self):  # copy and pickle rebuild it from its grid, not from the tuple
        return Grid, (self.hw, self[1])


def with_features(shape: "Shape", features: int) -> "Shape":
    """A sequence's steps with another number of features: a grid stays one."""
    return Grid(shape.hw, features) if isinstance(shape, Grid) else (shape[0], features)


# Option values that are not plain numbers or on/off switches.
PAD = "pad"  # an int, a pair (height, width), `same` or `valid`
LABEL = "label"  # the label of an earlier step (`tied=tok`); the compiler hands the rule a Ref to it
# the label of an earlier step whose output the node reads besides the current tensor (`from=enc`,
# `mask=m`): the compiler adds it to the node's inputs, after the current tensor, in the order of the
# kind's options, and keeps the labelled node's name as the attribute
READ = "read"
COUNT = "count"  # a whole number >= 1, or absent (None) unless written (`kv=8`, `window=4096`)
SIZES = "sizes"  # a whole number >= 1 or one per axis (`7x7`, a tuple), or absent (None) unless written
AXIS = "axis"  # an axis of the input's shape (batch left out, negative from the end), or absent (None) unless written


@dataclass(frozen=True)
class Window:
    """How a kind moves over the spatial axes, for the receptive field (docs/conventions.md)."""

    kernel: tuple[int, ...]  # one value per spatial axis, as the input has them
    stride: tuple[int, ...]
    dilation: tuple[int, ...] | None = None  # None: 1 on every axis
    transposed: bool = False  # upconv/upsample: the jump shrinks by the stride

    def __post_init__(self) -> None:
        if self.dilation is None:
            object.__setattr__(self, "dilation", (1,) * len(self.kernel))


GLOBAL = "global"  # the kind sees its whole input (fc, gap, recurrent layers)


# The contracts of a kind's rules. Arguments are positional-only: rules name them as they like (`a`).
class ShapeRule(Protocol):
    def __call__(self, attrs: dict, ins: list[Shape], /) -> tuple[Shape, dict]:
        """(attrs as written, input shapes) -> (output shape, attrs with derived values).

        Raises ShapeError when the input does not fit."""


class TensorRule(Protocol):
    def __call__(self, attrs: dict, ins: list[Shape], /) -> Mapping[str, Shape]:
        """(resolved attrs, input shapes) -> tensor shapes by name ("W", "b", ...)."""


class CostRule(Protocol):
    def __call__(self, attrs: dict, ins: list[Shape], out: Shape, /) -> int:
        """(resolved attrs, input shapes, output shape) -> a count of MACs or FLOPs per sample."""


class WindowRule(Protocol):
    def __call__(self, attrs: dict, /) -> Window | str | None:
        """(resolved attrs) -> the Window for the receptive field, None (pointwise) or GLOBAL."""


class FansRule(Protocol):
    def __call__(self, attrs: dict, shape: Shape, /) -> tuple[float, float]:
        """(resolved attrs, the weight's shape) -> (fan_in, fan_out): how many values one output sums,
        how many outputs one input feeds (what he and xavier initialisation scale by)."""


ROLES = ("weight", "bias", "table", "scale", "shift", "statistic")


@dataclass(frozen=True)
class Role:
    """What one of a kind's tensors is, for the backends that create and train it.

    A tensor starts at `constant`, at the value of the node's option named `option` (layer scale's
    `init`), or is drawn at random: under he and xavier, at a fixed `std` (a table of embeddings) or
    scaled by its `fans`; gaussian draws every random tensor at the std it is given. A `glorot` weight
    is drawn as xavier under he too: He's factor 2 makes up for a rectifier after the weight, and an
    attention projection has none.
    Weight decay and L1 act on `decayed` tensors, and so does max-norm, over `maxnorm` axes (None:
    every axis but the first, the usual layout of one unit's incoming weights).
    """

    role: str  # one of ROLES
    fans: FansRule | None = None
    constant: float | None = None
    std: float | None = None
    decayed: bool = False
    maxnorm: tuple[int, ...] | None = None
    option: str | None = None
    glorot: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown tensor role {self.role!r} (expected {', '.join(ROLES)})")
        starts = [x for x in (self.fans, self.constant, self.std, self.option) if x is not None]
        if len(starts) != 1:
            raise ValueError(f"a {self.role} tensor needs exactly one of fans, constant, std or option")

    def start(self, attrs: dict) -> float | None:
        """The value every entry starts at (its constant, or its node's option), None if drawn at random."""
        return attrs[self.option] if self.option is not None else self.constant


def weight(fans: FansRule, maxnorm: tuple[int, ...] | None = None, glorot: bool = False) -> Role:
    return Role("weight", fans=fans, decayed=True, maxnorm=maxnorm, glorot=glorot)


BIAS = Role("bias", constant=0.0)
SCALE = Role("scale", constant=1.0)  # bn's gamma: the identity at the start
SHIFT = Role("shift", constant=0.0)  # bn's beta


def statistic(start: float) -> Role:
    return Role("statistic", constant=start)


@dataclass(frozen=True)
class Ref:
    """What a LABEL option resolves to: the labelled node, its kind and its parameter shapes."""

    node: str
    kind: str
    params: tuple[tuple[str, Shape], ...]

    def param(self, name: str) -> Shape | None:
        return dict(self.params).get(name)


def _none(attrs: dict, ins: list[Shape], /) -> dict[str, Shape]:
    return {}


def _zero(attrs: dict, ins: list[Shape], out: Shape, /) -> int:
    return 0


def _pointwise(attrs: dict, /) -> None:
    return None


def _own(attrs: dict, /) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class LayerKind:
    name: str
    resolve: ShapeRule
    aliases: tuple[str, ...] = ()
    size: str | None = None
    """Form of the SIZE token: "conv" (C@KxK/S), "window" (KxK/S or K/S), "int", "number", "shape" (a whole
    number per axis, written as the input's shape is: C@HxW, TxD or N, into size_attr), or None."""
    size_required: bool = False
    size_attr: str = ""  # the attribute an "int"/"number" SIZE sets
    size_default: object = None
    options: dict = field(default_factory=dict)  # key=value options and their defaults
    flags: tuple[str, ...] = ()  # bare words that switch something on (`ceil`, `sequences`)
    params: TensorRule = _none
    """Trainable parameter shapes by name ("W", "b", ...), after resolve."""
    state: TensorRule = _none
    """Non-trainable tensors (bn running statistics)."""
    tensors: dict[str, Role] = field(default_factory=dict)
    """The role of every tensor that params or state may return, by name."""
    shared: Callable[[dict], dict[str, str]] = _own
    """Tensors the node reads from another node instead of owning them: its name for the tensor -> the
    owner's full tensor name (`fc tied=LABEL` reads an embed's "W"). They count once, with their owner."""
    macs: CostRule = _zero
    flops: CostRule = _zero
    window: WindowRule = _pointwise
    """Window for the receptive field; None for pointwise kinds, GLOBAL for kinds that see everything."""
    merge: bool = False  # takes two or more inputs (add, concat)
    body: bool = False  # written with a block in braces, `experts 8 top=2 { … }`, never as a plain step
    reads_tokens: bool = False  # reads token ids (`input seq T`); every other kind reads float features

    def default_attrs(self) -> dict:
        """Every option at its default and every flag off, as attribute values (pad 0, no label, count or axis).
        A flag may also be an option with a value (`rope` or `rope=500000`): off unless written."""
        attrs = {k: (0 if v is PAD else None if v in (LABEL, READ, COUNT, SIZES, AXIS) else v)
                 for k, v in self.options.items()}
        attrs.update({f: False for f in self.flags})
        return attrs

    @property
    def suffixable(self) -> bool:
        """A bare word naming this kind may follow a step's size as a suffix layer."""
        return not self.size_required and not self.merge and self.name != "input"


KINDS: dict[str, LayerKind] = {}
_ALIASES: dict[str, str] = {}


def register(kind: LayerKind) -> LayerKind:
    KINDS[kind.name] = kind
    for n in (kind.name, *kind.aliases):
        _ALIASES[n] = kind.name
    return kind


def lookup(word: str) -> LayerKind | None:
    """The kind a word names (aliases included), or None."""
    name = _ALIASES.get(word)
    return KINDS[name] if name else None


def all_words() -> list[str]:
    """Every kind name and alias, for "did you mean" suggestions."""
    return sorted(_ALIASES)


def param_count(kind: LayerKind, attrs: dict, ins: list[Shape]) -> tuple[int, int]:
    """(trainable, non-trainable) element counts."""
    return (sum(prod(s) for s in kind.params(attrs, ins).values()),
            sum(prod(s) for s in kind.state(attrs, ins).values()))


def is_sequence(shape: Shape) -> bool:
    """Steps of features (T, D); a signal (C, L) of the same length is not one."""
    return len(shape) == 2 and not isinstance(shape, Signal)


def feature_axis(shape: Shape) -> int:
    """The axis of a batch-less shape that holds the features: the channels of an image (C, H, W), a
    signal (C, L) or a volume (C, D, H, W), the vector itself (F,), the last axis of a sequence (T, D).
    Softmax, concat, per-feature normalisation and class targets all read it; add 1 for a batch-first
    array."""
    return 1 if is_sequence(shape) else 0


def role(kind: str, tensor: str) -> Role:
    """The role of a node's tensor ("W", "mean") given the node's kind."""
    return KINDS[kind].tensors[tensor]


def elements(shape: Shape) -> int:
    return prod(shape)


from dlc.layers import conv, pool, dense, elementwise, recurrent, merge, sequence, mixture, resample  # noqa: E402,F401  (registers the kinds)
