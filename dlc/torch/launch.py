"""`dlc train --nproc-per-node N`: PyTorch's own launcher (torchrun --standalone), run in this process
after dlc has checked the command.

Under a bare `torchrun`, a mistake every process meets (a mistyped --data) is said by rank 0 and then
reported again by torchrun's own process as a 40-line ChildFailedError traceback, which nothing inside
the processes can prevent. Here the command is checked before any process starts, and a process that
fails later has already said why: the launcher's report of it is left out, its exit status kept.
"""

from __future__ import annotations

import logging
import os
import tempfile


def under_launcher() -> bool:
    """Whether torchrun (or this launcher) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launch_standalone(nproc: int, argv: list[str]) -> int:
    """Run `python -m dlc ARGV` in nproc processes on this machine, as `torchrun --standalone
    --nproc-per-node NPROC -m dlc ARGV` does; the exit status of the first process that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # the agent logs each failed process and the signals it sends the others; the process has said why
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun's log tree (its processes' error files) goes in a folder removed after the run: left to
    # itself it makes a new /tmp/torchelastic_XXXX every run and leaves it behind
    with tempfile.TemporaryDirectory(prefix="dlc-torchrun-") as logs:
        args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={logs}",
                                             "-m", "dlc", *argv])
        try:
            run(args)
        except ChildFailedError as e:
            return e.get_first_failure()[1].exitcode
    return 0
