"""Built-in sequence tasks, shaped to the spec (`--data reverse|sort|copy`): T from `input seq T`, the
tokens 0..V-1 from the vocabulary of the `embed` that reads them, and a target token at every step.

- reverse: the target is the input read backwards (x[T-1], ..., x[0]).
- sort:    the target is the input's tokens in increasing order.
- copy:    the target is the input itself.
Each step's target depends on the whole input for reverse and sort, so a per-step model must carry
information across steps (attention, or a recurrent layer): the classic toy tasks of sequence models.
Every set is uniform random tokens, a function of its seed and sizes alone.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show

SEQUENCE_SIZES = (8000, 1000, 1000)  # (train, val, test)

TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "reverse": lambda x: x[:, ::-1],
    "sort": lambda x: np.sort(x, axis=1),
    "copy": lambda x: x,
}


def sequence_task(name: str, input_shape: tuple[int, ...], classes: int, vocab: int | None, n: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n samples of one of TARGETS: int64 token ids (n, T) and their targets (n, T)."""
    if len(input_shape) != 1 or vocab is None:
        raise DlcError(f"the built-in task `{name}` reads token ids: the spec needs `input seq T` and "
                       f"`embed D vocab=V` (its input is {show(input_shape)})")
    if classes < vocab:
        raise DlcError(f"the built-in task `{name}` predicts one of the {vocab} tokens of the embed at every "
                       f"step, but the spec's output has {classes} classes per step")
    steps = input_shape[0]
    rng = np.random.default_rng([seed, 14])
    x = rng.integers(0, vocab, (n, steps), dtype=np.int64)
    return x, np.ascontiguousarray(TARGETS[name](x))
