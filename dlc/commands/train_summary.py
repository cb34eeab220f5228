"""What `dlc train` reports at the end: one run's figures, or their mean and spread over --repeat."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.table import Table

METRICS = ["train_loss", "train_accuracy", "train_top5", "val_loss", "val_accuracy", "val_top5",
           "test_loss", "test_accuracy", "test_top5"]


def closing_table(summary: dict) -> Table:
    """Rows train/val/test; a cell is a value or, with --repeat, mean ± std."""
    from rich.table import Table

    def cell(v, pct):
        if isinstance(v, dict):
            if v["mean"] is None:
                return "-"
            return f"{v['mean']:.2%} ± {v['std']:.2%}" if pct else f"{v['mean']:.4g} ± {v['std']:.2g}"
        return "-" if v is None else (f"{v:.2%}" if pct else f"{v:.4g}")

    t = Table(show_edge=False, pad_edge=False)
    for col in ("split", "loss", "accuracy", "top-5"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "val", "test"):
        values = [summary.get(f"{split}_{m}") for m in ("loss", "accuracy", "top5")]
        if all(v is None or (isinstance(v, dict) and v["mean"] is None) for v in values):
            continue
        t.add_row(split, cell(values[0], False), cell(values[1], True), cell(values[2], True))
    return t


def run_summary(result, data, notes) -> dict:
    final = result.final
    trained = sum(r["images_per_second"] * r["seconds"] for r in result.history)
    train_seconds = sum(r["seconds"] for r in result.history)
    doc = {"epochs": len(result.history)}
    doc.update({m: final.get(m) for m in METRICS})
    doc.update(seconds=result.seconds, images_per_second=trained / train_seconds if train_seconds else None,
               out=str(result.out), best=result.best or None, stopped=result.stopped,
               message=result.message or None, data=data.name, notes=notes)
    return doc


def aggregate(docs: list[dict]) -> dict:
    """Each metric over the runs as {mean, std, runs} (population std, as numpy's default)."""
    import numpy as np

    doc = {}
    for key in ["epochs", *METRICS, "seconds", "images_per_second"]:
        runs = [d[key] for d in docs]
        values = [v for v in runs if v is not None]
        doc[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values)) if values else None, "runs": runs}
    doc.update(out=[d["out"] for d in docs], stopped=[d["stopped"] for d in docs],
               data=docs[0]["data"], notes=docs[0]["notes"])
    return doc


def print_summary(summary: dict, runs: int, quiet: bool, as_json: bool, root: Path | None = None) -> None:
    """One JSON object with --json; else the closing table, where the runs went and their curves (written
    by --plot, or how to draw them from `root`, the run folder or the folder of a --repeat's seeds);
    when quiet, that folder alone, on one line: what a script needs to find the run."""
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif quiet:
        click.echo(root if root is not None else summary["out"])
    else:
        from rich.console import Console
        console = Console(highlight=False)
        outs = summary["out"] if isinstance(summary["out"], str) else ", ".join(summary["out"])
        epochs = summary["epochs"]
        if (epochs["mean"] if isinstance(epochs, dict) else epochs) == 0:
            # a run stopped in its first epoch has no scores yet: a table of them would be empty
            console.print(f"no epoch finished, so there are no scores yet; the checkpoint is in {outs}")
            return
        console.print(closing_table(summary))
        ips = summary["images_per_second"]
        ips = ips["mean"] if isinstance(ips, dict) else ips
        secs = summary["seconds"]["mean"] if isinstance(summary["seconds"], dict) else summary["seconds"]
        console.print(f"{runs} run(s), {secs:.1f} s each, "
                      f"{'-' if ips is None else format(ips, ',.0f')} img/s; written to {outs}")
        # click, not rich: a path is neither wrapped at the console's width nor read as markup, so the
        # line can be copied whole
        if summary.get("curves"):
            click.echo(f"curves: {summary['curves']}")
        elif root is not None:
            from dlc.plot import CURVES, available

            if available():
                click.echo(f"draw the curves: dlc plot {shlex.quote(str(root))} -o {shlex.quote(str(root / CURVES))}")
