"""PyTorch: a spec as a torch module (export), and the torch training engine (engine).

This package's __init__ imports nothing heavy: the analysis commands must start without torch.
"""

from __future__ import annotations

import os


def launched() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun set them; (0, 1) when run on its own."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
