"""Training speed and accuracy on MNIST: Nielsen's network against his network.py, and LeNet-5's images/s.

Run: python bench/bench_train.py [--data ../shared/data/mnist.pkl.gz] [--epochs 30] [--ref-epochs 1]
     [--lenet-samples 10000]

1. `dlc train specs/mlp_mnist.dlc` (784-30-10 sigmoid, quadratic cost, sgd eta 3.0, mini-batches of 10,
   N(0, 1) weights: chapter 1 of Nielsen's "Neural Networks and Deep Learning") for --epochs epochs,
   printing test accuracy and training seconds per epoch. The book reports about 95% after 30 epochs.
2. The book's own approach, network.py's loop (bench_engine.nielsen_sgd transcribes it): back-propagation
   one sample at a time as a column vector, gradients summed over the mini-batch, float64. It runs
   --ref-epochs epochs on the same images in the same run, so the ratio of epoch times compares the two
   on this machine at this moment.
3. `dlc train specs/lenet5.dlc` (its own train statement: adam, batch 64) for one epoch on the first
   --lenet-samples training images padded to 32x32: training images per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist.pkl.gz"


def dlc_train(args: list[str], out: Path) -> list[dict]:
    """Run `dlc train` as a user does and return its per-epoch records (log.jsonl)."""
    cmd = [sys.executable, "-m", "dlc", "train", *args, "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dlc train failed:\n{done.stderr}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def network_py_epoch_seconds(x: np.ndarray, y: np.ndarray) -> float:
    """Seconds of one epoch of the book's SGD (eta 3.0, mini-batches of 10), per-sample, in float64,
    through bench_engine's transcription of network.py's update_mini_batch and backprop."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import nielsen_sgd

    epoch = nielsen_sgd([784, 30, 10], x, np.eye(10)[y], 10, 3.0, np.float64)
    t0 = time.perf_counter()
    epoch()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of dlc's Nielsen run (the book: 30)")
    ap.add_argument("--ref-epochs", type=int, default=1, help="epochs of network.py's loop")
    ap.add_argument("--lenet-samples", type=int, default=10000)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: pass --data path/to/mnist.pkl.gz")
    from dlc.train.readers import load_file

    mnist = load_file(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"Nielsen's 784-30-10 network, {len(mnist.train):,} training images, dlc train for {args.epochs} epochs")
        print(f"{'epoch':>5} {'test acc':>9} {'train s':>8}")
        records = dlc_train([str(ROOT / "specs" / "mlp_mnist.dlc"), "--data", str(args.data),
                             "--epochs", str(args.epochs)], tmp / "mlp")
        for r in records:
            print(f"{r['epoch']:>5} {r['test_accuracy']:>9.2%} {r['seconds']:>8.2f}")
        dlc_epoch = statistics.median(r["seconds"] for r in records)

        print(f"\nnetwork.py's per-sample loop on the same {len(mnist.train):,} images, {args.ref_epochs} epoch(s)")
        ref = [network_py_epoch_seconds(mnist.train.x, mnist.train.y) for _ in range(args.ref_epochs)]
        for i, seconds in enumerate(ref, start=1):
            print(f"{i:>5} {'':>9} {seconds:>8.2f}")
        ref_epoch = statistics.median(ref)
        print(f"\nepoch time (median): dlc {dlc_epoch:.2f} s, network.py {ref_epoch:.2f} s; "
              f"network.py / dlc = {ref_epoch / dlc_epoch:.1f}x")
        print(f"dlc test accuracy after {len(records)} epochs: {records[-1]['test_accuracy']:.2%} "
              f"(book: about 95% after 30)")

        n = min(args.lenet_samples, len(mnist.train))
        subset = tmp / "mnist-subset.npz"
        np.savez(subset, x=mnist.train.x[:n], y=mnist.train.y[:n])
        lenet = dlc_train([str(ROOT / "specs" / "lenet5.dlc"), "--data", str(subset), "--reshape",
                           "--epochs", "1"], tmp / "lenet")
        print(f"\nLeNet-5 training (adam, batch 64, {n:,} images, 1 epoch): "
              f"{lenet[0]['images_per_second']:,.0f} images/s")


if __name__ == "__main__":
    main()
