"""Training curves as a small text chart, for `dlc plot` without -o: no matplotlib, no colours needed."""

from __future__ import annotations

from dlc.plot.runs import SPLITS, Curve, Run, curve

WIDTH = 56  # columns of the plotting area
HEIGHT = 10  # rows of the loss and accuracy charts
LR_HEIGHT = 4
MARKS = "•ox+*%@&"  # one per curve
SHARED = "#"  # a cell two or more curves fall in: no curve hides another


def render(runs: list[Run]) -> str:
    named = len(runs) > 1
    blocks = []
    for metric, height, percent in (("loss", HEIGHT, False), ("accuracy", HEIGHT, True)):
        series = [(f"{r.name} {s}" if named else s, c) for r in runs for s in SPLITS
                  if (c := curve(r, f"{s}_{metric}"))]
        if series:
            blocks.append(_chart(metric, series, height, percent))
    series = [(r.name if named else "lr", c) for r in runs if (c := curve(r, "lr"))]
    if series:
        blocks.append(_chart("learning rate", series, LR_HEIGHT, False))
    return "\n\n".join(blocks) + "\n"


def _chart(title: str, series: list[tuple[str, Curve]], height: int, percent: bool) -> str:
    first = min(c.epochs[0] for _, c in series)
    last = max(c.epochs[-1] for _, c in series)
    lo = min(min(c.mean) for _, c in series)
    hi = max(max(c.mean) for _, c in series)
    grid = [[" "] * WIDTH for _ in range(height)]
    for k, (_, c) in enumerate(series):
        for e, v in zip(c.epochs, c.mean):
            col = round((e - first) / (last - first) * (WIDTH - 1)) if last > first else 0
            row = round((hi - v) / (hi - lo) * (height - 1)) if hi > lo else height // 2
            mark = MARKS[k % len(MARKS)]
            grid[row][col] = mark if grid[row][col] in (" ", mark) else SHARED

    def value(v: float) -> str:
        return f"{v:.1%}" if percent else f"{v:.4g}"

    labels = {0: value(hi), height - 1: value(lo)} if hi > lo else {height // 2: value(hi)}
    pad = max(len(t) for t in labels.values())
    lines = [title]
    for i, row in enumerate(grid):
        lines.append(f"{labels.get(i, ''):>{pad}} │{''.join(row)}")
    lines.append(" " * pad + " └" + "─" * WIDTH)
    span = f"epoch {first}"
    lines.append(" " * (pad + 2) + span + f"{last:>{WIDTH - len(span)}}")
    key = "   ".join(f"{MARKS[k % len(MARKS)]} {label}" for k, (label, _) in enumerate(series))
    if any(SHARED in row for row in grid):
        key += f"   {SHARED} overlap"
    lines.append(" " * (pad + 2) + key)
    return "\n".join(lines)
