"""PyTorch: a spec as a torch module (export), and the torch trainer (trainer).

This package's __init__ imports nothing heavy: the analysis commands must start without torch.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def launched() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun set them; (0, 1) when run on its own."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def end_worker(status: int) -> NoReturn:
    """End a torchrun worker whose command has finished, without the interpreter's finalization. gloo's
    worker threads release a finished collective's tensors on their own time, and a tensor Python made
    takes the GIL as it goes: at finalization that aborts the process ("terminate called without an
    active exception", exit -6; 3 runs in about 80 of a two-process `dlc train` beside a busy process;
    a core dump showed ProcessGroupGloo::runLoop freeing an AsyncAllreduceWork in take_gil while the
    main thread was in Py_FinalizeEx). Whatever the command wrote is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def leave_process_group() -> None:
    """Close torch.distributed's process group if this process joined one (torchrun): left open, gloo's
    threads can abort the interpreter at exit ("terminate called without an active exception")."""
    torch = sys.modules.get("torch")  # a NumPy run never imported it, and need not now
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
