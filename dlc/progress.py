"""Progress of long work on stderr, so that a command silent for seconds is not taken for a hung one.

Shown only on a terminal, and only once the work has run for SHOW_AFTER seconds: a quick command prints
nothing, and stdout (tables, JSON) is never touched.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator

SHOW_AFTER = 2.0  # seconds


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Yield `update(done=None, total=None, what=None)`: the steps done so far (one more when None), the
    total when it becomes known, and a new description. A rich bar appears on a terminal's stderr once
    the work has run for SHOW_AFTER seconds."""
    if not sys.stderr.isatty():
        yield lambda done=None, total=None, what=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(description, total=total)
    lock = threading.Lock()
    shown = False

    def show() -> None:
        nonlocal shown
        with lock:
            if not shown:
                shown = True
                bar.start()

    timer = threading.Timer(SHOW_AFTER, show)
    timer.daemon = True
    timer.start()
    try:
        def update(done: int | None = None, total: int | None = None, what: str | None = None) -> None:
            bar.update(task, completed=done, advance=1 if done is None else None, total=total, description=what)

        yield update
    finally:
        timer.cancel()
        with lock:
            if shown:
                bar.stop()
            shown = True  # a timer that fires now finds the work done
