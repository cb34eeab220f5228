"""The independent random streams of a run, and their states as a checkpoint keeps them.

Each stream is seeded (seed, STREAM, ...) so that changing one use (say, the augmentation) leaves the
others' numbers as they were.
"""

from __future__ import annotations

import numpy as np

STREAM_ORDER, STREAM_VAL, STREAM_NOISE, STREAM_AUGMENT = 1, 2, 3, 4


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def rng_from(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
