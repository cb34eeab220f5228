"""Training curves as a PNG or SVG figure with matplotlib (the `plot` extra): loss and accuracy per epoch,
train solid, val dashed, test dotted, one colour per run, mean ± std bands for --repeat runs, and the
learning rate in a small panel below the loss."""

from __future__ import annotations

from pathlib import Path

from dlc.atomic import atomic_write
from dlc.errors import DlcError
from dlc.plot.runs import SPLITS, Curve, Run, curve

FORMATS = (".png", ".svg")
STYLES = {"train": "-", "val": "--", "test": ":"}
DPI = 100
SIZE = {1: (7.0, 6.0), 2: (11.0, 6.0)}  # inches by the number of top panels: 700x600 or 1100x600 px
LOG_RATIO = 30  # a loss or lr spanning more than this factor is drawn on a log axis
MARKERS_UP_TO = 30  # epochs; past this the points would crowd the line


def save(runs: list[Run], out: Path) -> None:
    if out.suffix.lower() not in FORMATS:
        raise DlcError(f"cannot write curves to {out}: give a .png or .svg file")
    try:
        from matplotlib import rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError:
        raise DlcError("drawing curves to a file needs matplotlib: pip install 'dlc[plot]' "
                       "(without -o, `dlc plot` draws them in the terminal)") from None

    # Figure + the Agg canvas, not pyplot: no display is looked for and no global figure is kept.
    with_acc = any(curve(r, f"{s}_accuracy") for r in runs for s in SPLITS)
    cols = 2 if with_acc else 1
    fig = Figure(figsize=SIZE[cols], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, cols, height_ratios=(3, 1))
    loss_ax = fig.add_subplot(grid[0, 0])
    acc_ax = fig.add_subplot(grid[0, 1], sharex=loss_ax) if with_acc else None
    lr_ax = fig.add_subplot(grid[1, 0], sharex=loss_ax)  # under the loss, on the same epoch scale
    colours = [f"C{i % 10}" for i in range(len(runs))]
    markers = max(len(records) for r in runs for records in r.seeds) <= MARKERS_UP_TO

    losses, rates = [], []
    for run, colour in zip(runs, colours):
        for split in SPLITS:
            c = curve(run, f"{split}_loss")
            if c:
                _draw(loss_ax, c, colour, STYLES[split], markers)
                losses += c.mean
            c = curve(run, f"{split}_accuracy")
            if c and acc_ax is not None:
                _draw(acc_ax, c, colour, STYLES[split], markers)
        c = curve(run, "lr")
        if c:
            lr_ax.step(c.epochs, c.mean, where="post", color=colour)
            rates += c.mean
    for ax, values in ((loss_ax, losses), (lr_ax, rates)):
        if values and min(values) > 0 and max(values) / min(values) > LOG_RATIO:
            ax.set_yscale("log")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    loss_ax.set_title("loss")
    if acc_ax is not None:
        acc_ax.set_title("accuracy")
        acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    for ax in (loss_ax, acc_ax, lr_ax):
        if ax is not None:
            ax.grid(alpha=0.3)
    splits = [s for s in SPLITS if any(curve(r, f"{s}_loss") for r in runs)]
    handles = [Line2D([], [], color="black", linestyle=STYLES[s], label=s) for s in splits]
    if len(runs) > 1 or runs[0].seeds[1:]:
        handles += [Line2D([], [], color=c, linewidth=4,
                           label=r.name + (f" ({len(r.seeds)} seeds, mean ± std)" if len(r.seeds) > 1 else ""))
                    for r, c in zip(runs, colours)]
    if acc_ax is not None:  # the cell under the accuracy holds the legend
        key_ax = fig.add_subplot(grid[1, 1])
        key_ax.axis("off")
        key_ax.legend(handles=handles, loc="center", ncols=2 if len(handles) > 4 else 1, frameon=False)
    else:
        loss_ax.legend(handles=handles, fontsize="small")
    if len(runs) == 1:
        fig.suptitle(runs[0].name)
    # SVG text stays text (searchable, selectable); no date, so the same log gives the same file
    with rc_context({"svg.fonttype": "none"}), atomic_write(out, "wb") as f:
        kind = out.suffix.lower()[1:]
        fig.savefig(f, format=kind, metadata={"Date": None} if kind == "svg" else {})


def _draw(ax, c: Curve, colour: str, style: str, markers: bool) -> None:
    ax.plot(c.epochs, c.mean, color=colour, linestyle=style, marker="o" if markers else None, markersize=3)
    if c.std is not None:
        ax.fill_between(c.epochs, *c.band(), color=colour, alpha=0.18, linewidth=0)
