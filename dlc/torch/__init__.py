"""PyTorch: a spec as a torch module (export), and the torch trainer (trainer).

This package's __init__ imports nothing heavy: the analysis commands must start without torch.
"""

from __future__ import annotations

import os
import sys


def launched() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun set them; (0, 1) when run on its own."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def leave_process_group() -> None:
    """Close torch.distributed's process group if this process joined one (torchrun): left open, gloo's
    threads can abort the interpreter at exit ("terminate called without an active exception")."""
    torch = sys.modules.get("torch")  # a NumPy run never imported it, and need not now
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
