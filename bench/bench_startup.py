"""How long `dlc params specs/resnet152.dlc` takes in a fresh process, against a bare interpreter.

Run: python bench/bench_startup.py [--runs 15]. Prints the median wall time of each and their ratio.
The issue's budget is 0.3 s median for the dlc command on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    spec = str(ROOT / "specs" / "resnet152.dlc")
    median_seconds([sys.executable, "-m", "dlc", "params", spec], 2)  # warm the OS cache and lark's cache
    bare = median_seconds([sys.executable, "-c", "pass"], args.runs)
    dlc = median_seconds([sys.executable, "-m", "dlc", "params", spec], args.runs)
    print(f"python -c pass:                      {bare * 1000:7.1f} ms median of {args.runs}")
    print(f"dlc params specs/resnet152.dlc:      {dlc * 1000:7.1f} ms median of {args.runs}")
    print(f"ratio dlc / bare interpreter:        {dlc / bare:7.2f}x   (budget: 300 ms -> "
          f"{'within' if dlc <= 0.3 else 'OVER'})")


if __name__ == "__main__":
    main()
