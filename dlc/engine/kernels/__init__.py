"""The NumPy kernel of each layer kind, keyed by the kind's name in dlc.layers.

A kernel is `forward(attrs, params, state, xs, ctx) -> (y, backward)`:
- attrs: the node's resolved attributes (see the docstrings of dlc/layers/*.py);
- params: the node's trainable arrays by parameter name ("W", "b", "gamma", ...);
- state: its non-trainable arrays ("mean", "var"), updated in place when ctx.training;
- xs: input arrays, batch first (NCHW images, (N, F) vectors, (N, T, D) sequences, (N, T) token ids);
- backward(dy) -> (dxs, dparams): one gradient per input (None for token ids), and a gradient per
  trainable parameter by name. When ctx.need_dx is False nobody reads the input gradients (the
  network's input in a training step): a kernel may return None for them and skip their work, or
  ignore the flag and compute them anyway.
Forward and backward sit side by side so each can be checked against the other. Kernels compute in
the dtype of their input (float32 in training, float64 for gradient checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]  # a node's tensors by name within the node ("W", "mean")


@dataclass
class Ctx:
    training: bool = False
    rng: np.random.Generator | None = None
    need_dx: bool = True  # False: the input gradients will be dropped (see the contract above)
    # in training, where kernels put the auxiliary losses they add to the training loss (a mixture's
    # load balancing); None where nobody takes the loss
    aux: list[float] | None = None
    # in a training step split into two parts of the batch (dlc/engine/halves.py), the other part: a kernel
    # whose samples meet (bn's statistics) adds its sums to this part's; None for a whole batch
    across: Across | None = None


class Across(Protocol):
    """The other part of a batch that trains as two parts, each computing the whole batch's statistics."""

    first: bool  # this part holds the batch's first samples (it alone moves running statistics)
    weight: float  # this part's share of the batch's samples: its loss is the mean over its own samples

    def total(self, local: np.ndarray, /) -> np.ndarray:
        """The first part's vector plus the second's (this one is `local`, of the same length) in float64:
        the same bits in both parts."""


class Backward(Protocol):
    def __call__(self, dy: np.ndarray, /) -> tuple[Sequence[np.ndarray | None], Arrays]:
        """dy -> (one gradient per input, None for token ids and may be None when ctx.need_dx was
        False; a gradient per trainable parameter)."""


Forward = tuple[np.ndarray, Backward]


class Kernel(Protocol):
    def __call__(self, attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx,
                 /) -> Forward:
        """The contract above: the output and the closure that back-propagates through it."""


KERNELS: dict[str, Kernel] = {}


def kernel(*kinds: str) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of each named kind."""
    def register(fn: Kernel) -> Kernel:
        for k in kinds:
            KERNELS[k] = fn
        return fn
    return register


from dlc.engine.kernels import conv, pool, dense, elementwise, norm, recurrent, merge, attention, sequence, mixture, resample  # noqa: E402,F401
