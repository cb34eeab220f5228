"""Stopping a run cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import signal


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so a stop never tears an update in half;
    a second signal stops at once."""

    def __init__(self):
        self.raised = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised is not None:
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
