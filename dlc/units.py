"""How figures are written for people: SI prefixes for counts, binary prefixes for bytes."""

from __future__ import annotations


def si(n: float, unit: str = "") -> str:
    """105,415,200 -> '105.42 M'. Counts use k = 10^3, M = 10^6, G = 10^9 (docs/conventions.md)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def binary(n: float) -> str:
    """Bytes with KiB = 2^10, MiB = 2^20, GiB = 2^30."""
    for factor, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{int(n)} B"


def grouped(n: int) -> str:
    return f"{n:,}"


def seconds(t: float) -> str:
    """0.03805 -> '38.05 ms': s, ms, µs, ns."""
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if t >= factor:
            return f"{t / factor:.2f} {unit}"
    return f"{t / 1e-9:.2f} ns" if t else "0 s"
