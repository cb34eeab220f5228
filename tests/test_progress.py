"""Progress on stderr for long work (issue 9: export of vgg16, bench of a large model and gradcheck of a
large spec were silent for seconds to minutes)."""

from __future__ import annotations

import io
import sys
import time

from dlc import progress as progress_module
from dlc.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_long_work_on_a_terminal_shows_a_bar_on_stderr(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress_module, "SHOW_AFTER", 0.0)
    with progress("gradcheck", 4) as update:
        update(1)
        for _ in range(100):  # the bar appears from a timer thread; wait for it, however loaded the machine
            if term.getvalue():
                break
            time.sleep(0.1)
        update(3, what="gradcheck: conv1")
    assert "gradcheck" in term.getvalue()


def test_nothing_is_shown_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "SHOW_AFTER", 0.0)
    with progress("export", 3) as update:
        time.sleep(0.1)
        update()
    assert capsys.readouterr().err == ""
