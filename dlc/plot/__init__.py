"""Training curves from the log.jsonl of run folders: a matplotlib figure (the `plot` extra) or a text
chart for the terminal."""

from __future__ import annotations

from pathlib import Path

CURVES = "curves.png"  # what `dlc train --plot` writes into the run folder


def available() -> bool:
    """Whether the `plot` extra (matplotlib) is installed."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_curves(run_dir: Path, out_path: Path | None = None) -> Path:
    """Draw the run in run_dir (one run, or the seed folders of a --repeat run as mean ± std) into
    out_path (default run_dir/curves.png; .png or .svg) and return the path written."""
    from dlc.plot.figure import save
    from dlc.plot.runs import read_run

    out = Path(out_path) if out_path is not None else Path(run_dir) / CURVES
    save([read_run(Path(run_dir))], out)
    return out
