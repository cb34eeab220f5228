"""The order in which an epoch visits the training samples."""

from __future__ import annotations

import numpy as np

from dlc.train.streams import STREAM_ORDER


def epoch_order(n: int, seed: int, epoch: int, labels: np.ndarray | None = None,
                balanced: bool = False) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) alone so a resumed run repeats it.

    Balanced: slot i of every run of K slots holds each class once (in shuffled order), and each
    class's samples are taken in a shuffled cycle, so small classes repeat and large ones are sampled.
    """
    rng = np.random.default_rng([seed, STREAM_ORDER, epoch])
    if not balanced:
        return rng.permutation(n)
    classes = np.unique(labels)
    k = len(classes)
    slots = np.concatenate([rng.permutation(k) for _ in range(-(-n // k))])[:n]
    order = np.empty(n, np.int64)
    for c, cls in enumerate(classes):
        where = np.flatnonzero(slots == c)
        members = rng.permutation(np.flatnonzero(labels == cls))
        order[where] = members[np.arange(len(where)) % len(members)]
    return order
