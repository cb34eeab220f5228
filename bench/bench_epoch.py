"""Issue 24: training speed as a user times it, from outside, whole processes against whole processes.

Run: python bench/bench_epoch.py [--rounds 3] [--only NAME ...] [--dlc OTHER_CHECKOUT] [--busy 1] [--threads auto]
     [--apart K] [--data ../shared/data/mnist.pkl.gz] [--images N] [--json FILE]

Each target is timed as `dlc train ... --epochs 1` and `--epochs 2`, two whole processes; the
difference of their wall times is one epoch: training on the training split (MNIST's 50,000 images)
plus scoring validation and test, which dlc train does every epoch. The reference is the same
pair of runs of bench/reference_train.py (idiomatic PyTorch, or network.py's loop for the 784-30-10
MLP), so start-up, data loading and the final writes cancel out of both. Contenders take turns within
a round, the order turning each round, and the median of the rounds' ratios counts (each round's
two sides ran back to back under the same load). No thread settings are passed: dlc runs with
numpy's defaults (OpenBLAS: one thread per core) and PyTorch with torch.set_num_threads(2), as a
user's script would.

--apart K times the 1-epoch run against a (1+K)-epoch one and divides the difference by K. A whole
process's wall time swings by 2-3 s from run to run on the 2-core development machine, as much as a
LeNet-5 or transformer epoch (PyTorch's own LeNet-5 epoch read 5.0-7.5 s in three rounds), so for the
short targets K = 4 divides that noise by 4 at the price of 3 more epochs per process.

--dlc PATH times a second checkout of dlc beside this one (its package imported from PATH, with
this Python), so one run gives the before/after table: `git worktree add /tmp/dlc-base base4` then
`--dlc /tmp/dlc-base`. --busy N starts N CPU-bound processes for the whole run (the under-load
column: compare with a run without it). --threads VALUE adds `dlc train --threads VALUE` as a contender
(`--busy 1 --threads auto`: what following the load gives beside a busy process).

Targets (ratio = reference seconds per epoch / dlc's, higher is better):
  lenet_relu    the issue's LeNet-5 (relu, maxpool) on 1@28x28, momentum 0.01, batch 64   >= 1.1x PyTorch
  lenet_tanh    the zoo's lenet5 (tanh, avgpool) on 32x32 (--reshape), momentum, batch 64 >= 1.1x PyTorch
  mlp10         specs/mlp_mnist.dlc (784-30-10 sigmoid, sgd 3.0, batch 10)               >= 5x network.py
  transformer   specs/transformer_reverse.dlc on --sequences reversal sequences          >= 1.0x PyTorch
  llama_char    specs/llama_char.dlc on --chars characters of Python's own sources       >= 0.8x PyTorch
  efficientnet  bench/efficientnet_small.dlc (MBConv, depthwise, SE, silu) on MNIST      >= 0.8x PyTorch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist.pkl.gz"

LENET_RELU = ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\n"
              "fc 120 relu -> fc 84 relu -> fc 10 softmax\n")
MNIST_SGD = ["--optimizer", "momentum", "--lr", "0.01", "--batch", "64"]

# target -> (dlc train's arguments before --data and --epochs, the data it reads, its goal ratio, reference)
TARGETS = {
    "lenet_relu": (["-e", LENET_RELU, *MNIST_SGD], "mnist", 1.1, "PyTorch"),
    "lenet_tanh": ([str(ROOT / "specs" / "lenet5.dlc"), "--reshape", *MNIST_SGD], "mnist", 1.1, "PyTorch"),
    "mlp10": ([str(ROOT / "specs" / "mlp_mnist.dlc")], "mnist", 5.0, "network.py"),
    "transformer": ([str(ROOT / "specs" / "transformer_reverse.dlc")], "reverse", 1.0, "PyTorch"),
    "llama_char": ([str(ROOT / "specs" / "llama_char.dlc")], "text", 0.8, "PyTorch"),
    "efficientnet": ([str(HERE / "efficientnet_small.dlc")], "mnist", 0.8, "PyTorch"),
}


@dataclass
class Contender:
    name: str  # "dlc", "before" (--dlc's checkout) or the reference's name
    command: list[str]  # without --epochs N
    env: dict
    epochs: list[float] = field(default_factory=list)  # seconds per epoch, one per round
    totals: list[float] = field(default_factory=list)  # wall seconds of the 1-epoch process
    scores: dict = field(default_factory=dict)  # the last longer run's validation/test accuracy


def make_reverse(path: Path, sequences: int) -> None:
    """Random 12-token sequences over 16 tokens and their reversals, with validation and test tenths."""
    import numpy as np

    rng = np.random.default_rng(0)
    parts = {}
    for suffix, n in (("", sequences), ("_val", sequences // 10), ("_test", sequences // 10)):
        x = rng.integers(0, 16, (n, 12))
        parts["x" + suffix], parts["y" + suffix] = x, x[:, ::-1].copy()
    np.savez(path, **parts)


def make_mnist_part(source: Path, path: Path, images: int) -> None:
    """The first `images` training images of mnist.pkl.gz and a fifth as many of validation and test, as
    an .npz that dlc train and reference_train.py both read (a quicker epoch for a loaded machine)."""
    import gzip
    import pickle

    import numpy as np

    with gzip.open(source, "rb") as f:
        (x, y), (xv, yv), (xt, yt) = pickle.load(f, encoding="latin1")
    k = max(1, images // 5)
    np.savez(path, x=x[:images], y=y[:images], x_val=xv[:k], y_val=yv[:k], x_test=xt[:k], y_test=yt[:k])


def make_text(path: Path, chars: int) -> None:
    """`chars` characters of Python's standard library sources, ASCII only (llama_char's vocab is 128)."""
    text, size = [], 0
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        part = source.read_text(encoding="utf-8", errors="ignore").encode("ascii", "ignore").decode()
        text.append(part)
        size += len(part)
        if size >= chars:
            break
    path.write_text("".join(text)[:chars], encoding="utf-8")


def contenders(target: str, data: Path, tmp: Path, before: Path | None, threads: str | None) -> list[Contender]:
    args, _, _, ref = TARGETS[target]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dlc = [sys.executable, "-m", "dlc", "train", *args, "--data", str(data), "--json"]
    out = [Contender("dlc", dlc, env), Contender(ref, [sys.executable, str(HERE / "reference_train.py"), target,
                                                       "--data", str(data)], env)]
    if before is not None:  # the other checkout's package comes first on the path
        out.append(Contender("before", dlc, dict(env, PYTHONPATH=str(before))))
    if threads is not None:  # the same dlc with `dlc train --threads`
        out.append(Contender(f"threads_{threads}", [*dlc, "--threads", threads], env))
    return out


def run(c: Contender, epochs: int, tmp: Path) -> tuple[float, dict]:
    """Wall seconds of one whole process, and the accuracies its JSON reports."""
    command = [*c.command, "--epochs", str(epochs)]
    if c.command[2:4] == ["dlc", "train"]:
        command += ["--out", tempfile.mkdtemp(dir=tmp)]
    t0 = time.perf_counter()
    done = subprocess.run(command, env=c.env, capture_output=True, text=True, cwd=tmp)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(command[:6])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    doc = json.loads(done.stdout)
    return seconds, {"val": doc.get("val_accuracy", doc.get("val")), "test": doc.get("test_accuracy", doc.get("test"))}


def time_target(target: str, data: Path, tmp: Path, before: Path | None, threads: str | None,
                rounds: int, apart: int) -> list[Contender]:
    cs = contenders(target, data, tmp, before, threads)
    for r in range(rounds):
        for c in cs[r % len(cs):] + cs[:r % len(cs)]:
            one, _ = run(c, 1, tmp)
            more, c.scores = run(c, 1 + apart, tmp)
            c.epochs.append((more - one) / apart)
            c.totals.append(one)
    return cs


def ratios(cs: list[Contender], mine: str = "dlc") -> list[float]:
    """Per round: the reference's seconds per epoch over `mine`'s (higher: `mine` is faster)."""
    me = next(c for c in cs if c.name == mine)
    return [ref / ours for ref, ours in zip(cs[1].epochs, me.epochs)]


def report(target: str, cs: list[Contender]) -> dict:
    goal, ref = TARGETS[target][2], cs[1].name
    row = {"target": target, "reference": ref, "goal": goal}
    for c in cs:
        row[c.name] = {"seconds_per_epoch": statistics.median(c.epochs), "rounds": c.epochs,
                       "one_epoch_process": statistics.median(c.totals), "accuracy": c.scores}
    for mine in [c.name for c in cs if c.name != ref]:
        rs = ratios(cs, mine)
        row[f"{mine}_ratio"] = {"median": statistics.median(rs), "rounds": rs}
    mine = row["dlc_ratio"]["median"]
    others = "".join(f"   {c.name} {row[c.name + '_ratio']['median']:5.2f}x ({row[c.name]['seconds_per_epoch']:6.2f} s)"
                     for c in cs[2:])
    acc = "  ".join(f"{c.name} val {c.scores['val']:.3f}" for c in cs if c.scores.get("val") is not None)
    print(f"{target:<13} {row['dlc']['seconds_per_epoch']:8.2f} s {row[ref]['seconds_per_epoch']:8.2f} s "
          f"{ref:<11} {mine:5.2f}x  >= {goal:.2g}x {'met' if mine >= goal else 'NOT MET':<8}"
          f"(rounds {' '.join(f'{r:.2f}' for r in row['dlc_ratio']['rounds'])}){others}   {acc}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mnist.pkl.gz")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median ratio counts")
    ap.add_argument("--only", action="append", choices=TARGETS, metavar="NAME",
                    help=f"time this target alone (repeatable): {', '.join(TARGETS)}")
    ap.add_argument("--dlc", type=Path, metavar="CHECKOUT", help="also time this checkout's dlc (before/after)")
    ap.add_argument("--threads", metavar="auto|N", help="also time dlc train --threads VALUE (with --busy: "
                    "does following the load pay)")
    ap.add_argument("--busy", type=int, default=0, metavar="N", help="CPU-bound processes beside the run")
    ap.add_argument("--images", type=int, default=0,
                    help="train on this many MNIST images (and a fifth as many scored) instead of all 50,000")
    ap.add_argument("--sequences", type=int, default=20_000, help="transformer training sequences")
    ap.add_argument("--chars", type=int, default=200_000, help="llama_char's text, in characters")
    ap.add_argument("--apart", type=int, default=1, metavar="K",
                    help="time 1 and 1+K epochs, the difference over K (less process noise per epoch)")
    ap.add_argument("--json", type=Path, help="write the table's numbers here")
    args = ap.parse_args()
    if args.apart < 1:
        sys.exit(f"--apart {args.apart}: K must be at least 1")
    wanted = args.only or list(TARGETS)
    if not args.data.exists() and any(TARGETS[t][1] == "mnist" for t in wanted):
        print(f"{args.data} not found: skipping the MNIST targets (pass --data path/to/mnist.pkl.gz)")
        wanted = [t for t in wanted if TARGETS[t][1] != "mnist"]
    if args.dlc is not None and not (args.dlc / "dlc" / "__init__.py").is_file():
        sys.exit(f"--dlc {args.dlc}: not a dlc checkout (no dlc/__init__.py in it)")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = {"mnist": args.data, "reverse": tmp / "reverse.npz", "text": tmp / "text.txt"}
            if args.images and args.data.exists():
                data["mnist"] = tmp / f"mnist_{args.images}.npz"
                make_mnist_part(args.data, data["mnist"], args.images)
            make_reverse(data["reverse"], args.sequences)
            make_text(data["text"], args.chars)
            print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, {args.busy} busy "
                  f"process(es) beside; {args.rounds} rounds; seconds per epoch ({1 + args.apart}-epoch run - 1-epoch "
                  f"run{f', over {args.apart}' if args.apart > 1 else ''}), medians\n")
            print(f"{'target':<13} {'dlc':>10} {'reference':>10} {'':<11} {'ratio':>6}")
            for target in wanted:
                cs = time_target(target, data[TARGETS[target][1]], tmp, args.dlc, args.threads, args.rounds,
                                 args.apart)
                rows.append(report(target, cs))
    finally:
        for p in busy:
            p.kill()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps({"busy": args.busy, "rounds": args.rounds, "apart": args.apart, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
