"""Adjacent layers the NumPy engine runs as one step: the same numbers with fewer passes over memory.

A pair fuses when the second layer is the only reader of the first's output, reads nothing else, and the
first's output is none of the graph's outputs. The first layer's step then hands its input on unchanged
(`pass_on`), so its slot holds the layer's input, not its output, and the second's step runs both layers
on it. dlc/engine/run.py keeps the unfused steps beside the fused ones for whatever reads such a slot:
`activations`, and a forward pass that stops or freezes there.

relu then maxpool runs as maxpool then relu. relu is monotone, so the max of a rectified window is the
rectified max, and relu then passes over a quarter of the values (2/2 pooling), forward and backward:
LeNet-5's and AlexNet's relu before each pool. The gradient is the same bits: a window whose max is
positive routes it to the same first maximum either way, and one whose max is not passes none either
way (relu's slope is 0 there, at 0 included).

bn then silu (EfficientNet's, after nearly every conv) makes silu's halved input in bn's affine map: see
`bn_silu` in dlc/engine/kernels/norm.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlc.engine.kernels import KERNELS, Arrays, Ctx, Forward, Kernel
from dlc.engine.kernels.norm import bn_silu


@dataclass(frozen=True)
class Fusion:
    owner: int  # whose attributes, parameters and state the fused step takes: 0 the first layer's, 1 the second's
    make: Callable[[dict, dict], Kernel]  # (the first's attributes, the second's) -> the kernel of both


def pass_on(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    """The first layer's step of a fused pair: its input goes on to the step that runs both."""
    return xs[0], lambda dy: ([dy], {})


def pool_then_relu(relu_attrs: dict, pool_attrs: dict) -> Kernel:
    relu, pool = KERNELS["relu"], KERNELS["maxpool"]

    def run(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
        pooled, pool_backward = pool(attrs, params, state, xs, ctx)
        y, relu_backward = relu(relu_attrs, {}, {}, [pooled], ctx)

        def backward(dy):
            (d,), _ = relu_backward(dy)
            return pool_backward(d)
        return y, backward
    return run


# (first kind, second kind) -> how the engine runs the two as one step
FUSIONS: dict[tuple[str, str], Fusion] = {
    ("relu", "maxpool"): Fusion(1, pool_then_relu),
    ("bn", "silu"): Fusion(0, lambda bn_attrs, silu_attrs: bn_silu),
}
