"""`dlc train`'s progress on stderr: a spinner naming slow set-up, a bar within an epoch, a line at its end."""

from __future__ import annotations

import threading
import time


class Display:
    """Progress on stderr: a rich bar for an epoch that lasts, and an epoch summary line (all of them
    for a few long epochs, about one a second for many short ones); silent when quiet."""

    BAR_AFTER = 0.5  # seconds into an epoch before its bar appears
    LINE_EVERY = 1.0  # seconds between summary lines of short epochs
    SETUP_AFTER = 2.0  # seconds of silent set-up (reading, fitting data) before a spinner names it

    def __init__(self, quiet: bool, label: str = ""):
        self.quiet, self.label = quiet, label
        self.progress = self.task = None
        self.epoch = {}
        self.last_update = self.last_line = 0.0
        self.status = self.timer = None
        self.phase_text = ""
        self.lock = threading.Lock()
        if not quiet:
            from rich.console import Console
            self.console = Console(stderr=True, highlight=False)

    def phase(self, what: str | None) -> None:
        """Set-up work now under way (None: set-up is over). One call blocks for seconds at times (a
        gunzip, an unpickle), so a timer thread shows the spinner once set-up has lasted SETUP_AFTER."""
        if self.quiet:
            return
        with self.lock:
            self.phase_text = what or ""
            if what is None:
                if self.timer is not None:
                    self.timer.cancel()
                if self.status is not None:
                    self.status.stop()
                self.status = self.timer = None
            elif self.status is not None:
                self.status.update(what)
            elif self.timer is None:
                self.timer = threading.Timer(self.SETUP_AFTER, self._show_status)
                self.timer.daemon = True
                self.timer.start()

    def _show_status(self) -> None:
        with self.lock:
            if self.phase_text and self.status is None:
                self.status = self.console.status(self.phase_text)
                self.status.start()

    def note(self, text: str) -> None:
        if not self.quiet:
            from rich.markup import escape
            self.console.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True)

    def __call__(self, kind: str, info: dict) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if kind == "epoch":
            self.epoch = dict(info, started=now)
        elif kind == "step":
            if now - self.last_update < 0.1 or now - self.epoch["started"] < self.BAR_AFTER:
                return
            self.last_update = now
            if self.progress is None:
                self._start_bar()
            scores = info["scores"]()  # a read of the trainer's sums: only when the bar redraws
            acc = "" if scores["accuracy"] is None else f"  acc {scores['accuracy']:.2%}"
            stats = f"loss {scores['loss']:.4g}{acc}  {info['images_per_second']:,.0f} img/s"
            self.progress.update(self.task, completed=info["batch"], stats=stats)
        elif kind == "end":
            self.close()
            if info["epoch"] == self.epoch["epochs"] or now - self.last_line >= self.LINE_EVERY:
                self.console.print(epoch_line(info, self.label), soft_wrap=True)
                self.last_line = now

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        e = self.epoch
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(f"{self.label}epoch {e['epoch']}/{e['epochs']}",
                                           total=e["batches"], completed=e["done"], stats="")

    def close(self) -> None:
        self.phase(None)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def epoch_line(r: dict, label: str = "") -> str:
    parts = [f"{label}epoch {r['epoch']}", f"loss {r['train_loss']:.4g}"]
    if r["train_accuracy"] is not None:
        parts.append(f"acc {_pct(r['train_accuracy'])}")
    for split in ("val", "test"):
        if r[f"{split}_loss"] is not None:
            acc = r[f"{split}_accuracy"]
            parts.append(f"{split} {_pct(acc) if acc is not None else format(r[f'{split}_loss'], '.4g')}")
    parts += [f"lr {r['lr']:.3g}", f"{r['images_per_second']:,.0f} img/s", f"{r['seconds']:.1f} s"]
    return "  ".join(parts)
