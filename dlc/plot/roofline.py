"""`dlc roofline -o`: every layer on the device's roofline with matplotlib (the `plot` extra): arithmetic
intensity (FLOP/byte) across, attainable FLOP/s up, both logarithmic; the roof min(peak, intensity x
bandwidth), its ridge point marked; layers coloured by what bounds them, one marker per phase."""

from __future__ import annotations

from pathlib import Path

from dlc.analysis import Analysis
from dlc.atomic import atomic_write
from dlc.errors import DlcError
from dlc.report import rows
from dlc.roofline import Roofline

COLOURS = {"compute": "tab:red", "memory": "tab:blue"}
MARKERS = {"batch": "o", "prefill": "o", "decode": "^"}
DPI = 100


def points(r: Roofline, analysis: Analysis) -> list[tuple[str, str, float, float, str]]:
    """(phase, row, FLOP/byte, FLOP/s reached, bound) of every table row that does arithmetic and moves
    bytes; a decode row is its mean step."""
    found = []
    for phase in r.phases:
        by_name = {n.node.name: n for n in phase.nodes}
        for row in rows(analysis):
            nodes = [by_name[s.node.name] for s in row.stats]
            flops, moved = sum(n.flops for n in nodes), sum(n.bytes for n in nodes)
            secs = sum(n.seconds for n in nodes)
            if flops and moved and secs:
                compute = sum(n.compute_seconds for n in nodes)
                found.append((phase.what, row.name, flops / moved, flops / secs,
                              "compute" if compute * 2 > secs else "memory"))
    return found


def save(r: Roofline, analysis: Analysis, out: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise DlcError("drawing the roofline needs matplotlib: pip install 'dlc[plot]'") from None

    placed = points(r, analysis)
    if not placed:
        raise DlcError(f"cannot draw {out}: no layer of {analysis.graph.file} does arithmetic")
    d, ridge = r.device, r.peak / r.device.bandwidth
    lo = min(min(p[2] for p in placed), ridge) / 4
    hi = max(max(p[2] for p in placed), ridge) * 4
    fig = Figure(figsize=(8, 5.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.plot([lo, ridge, hi], [lo * d.bandwidth, r.peak, r.peak], color="black", linewidth=2)
    if any(p.in_cache for p in r.phases):  # the roof its bytes met instead: the cache's
        knee = r.peak / d.cache_bandwidth
        ax.plot([lo, knee, hi], [lo * d.cache_bandwidth, r.peak, r.peak], color="black", linewidth=1,
                linestyle="--", label="cache")
    ax.axvline(ridge, color="grey", linestyle=":", linewidth=1)
    ax.text(ridge, 0.5, f"ridge {ridge:,.1f} FLOP/B ", rotation=90, ha="right", va="center", fontsize=9,
            color="dimgrey", transform=ax.get_xaxis_transform())
    for what, _, x, y, bound in placed:
        ax.scatter(x, y, color=COLOURS[bound], marker=MARKERS[what], s=28, alpha=0.75, edgecolors="none")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(min(p[3] for p in placed), lo * d.bandwidth) / 2, r.peak * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("FLOP/s reached")
    ax.set_title(f"{Path(analysis.graph.file).stem} on {d.name}: {r.precision} peak {r.peak / 1e12:,.1f} TFLOP/s, "
                 f"{d.bandwidth / 1e9:,.0f} GB/s, batch {r.batch}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    phases = sorted({p[0] for p in placed}, key=["batch", "prefill", "decode"].index)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=f"{b} bound") for b, c in COLOURS.items()]
    if len(phases) > 1:
        handles += [Line2D([], [], color="black", marker=MARKERS[w], linestyle="", label=w) for w in phases]
    ax.legend(handles=handles, loc="lower right")
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format=out.suffix.lower().lstrip("."))
