"""Training throughput of dlc's NumPy engine against references measured in the same run.

- The 784-30-10 sigmoid MLP at batch 10, quadratic cost, plain SGD (Nielsen's "Neural Networks and
  Deep Learning", chapter 1): against a per-sample backprop loop written the way his network.py is
  (column vectors, one sample at a time, gradients summed over the mini-batch), and PyTorch.
- LeNet-5 (the zoo's lenet5.dlc) at batch 64 on MNIST padded to 32x32, softmax cross-entropy,
  plain SGD: against PyTorch CPU training of the same network with the same thread count.

MNIST comes from --mnist (the classic mnist.pkl.gz), else random data of the same shape. PyTorch is
optional: without it those ratios are skipped. Run: python bench/bench_engine.py [--quick]

PyTorch gets OMP_NUM_THREADS threads (else one per core), as OpenBLAS under numpy does. On a machine
shared with other work, two busy-waiting thread pools fall apart under contention; for a steadier
comparison run both single-threaded: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_engine.py
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np

from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import loss_and_grads
from dlc.graph import Network
from dlc.zoo import zoo_path

MLP_SPEC = "input 784 -> fc 30 sigmoid -> fc 10 sigmoid"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.pkl.gz"


def load_mnist(path: Path | None, n: int, rng) -> tuple[np.ndarray, np.ndarray, str]:
    """(images (n, 784) float32 in [0, 1], labels (n,), where they came from)."""
    if path is not None and path.is_file():
        with gzip.open(path, "rb") as f:
            (images, labels), _, _ = pickle.load(f, encoding="latin1")
        return images[:n].astype(np.float32), labels[:n].astype(np.int64), str(path)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n), "random data (no MNIST file)"


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    """The fastest of `repeats` timed calls of each run, in seconds. The runs take turns, so load from
    other processes falls on all of them alike, and the fastest call is the least disturbed one."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


# --- dlc ---------------------------------------------------------------------------------------

def dlc_sgd(graph, x, y, batch: int, lr: float, loss: str):
    params, state = init_params(graph, seed=0)
    steps = len(x) // batch

    def epoch():
        for i in range(0, steps * batch, batch):
            _, _, grads = loss_and_grads(Network(graph, params, state), x[i:i + batch], y[i:i + batch], loss)
            for k, g in grads.items():
                params[k] -= lr * g
    return epoch


# --- network.py's per-sample loop --------------------------------------------------------------

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


def nielsen_sgd(sizes, x, y_onehot, batch: int, lr: float, dtype):
    """network.py's SGD: (an epoch, its `evaluate` as an accuracy(images, labels)). The epoch shuffles the
    samples and runs update_mini_batch and backprop on them: per-sample column vectors, gradients summed."""
    rng = np.random.default_rng(0)
    biases = [rng.standard_normal((n, 1)).astype(dtype) for n in sizes[1:]]
    weights = [rng.standard_normal((n, m)).astype(dtype) for m, n in zip(sizes[:-1], sizes[1:])]
    data = [(a.reshape(-1, 1).astype(dtype), t.reshape(-1, 1).astype(dtype)) for a, t in zip(x, y_onehot)]

    def backprop(a, t):
        nabla_b = [np.zeros(b.shape, dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, dtype) for w in weights]
        activation, activations, zs = a, [a], []
        for b, w in zip(biases, weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - t) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for layer in range(2, len(sizes)):
            delta = np.dot(weights[-layer + 1].transpose(), delta) * sigmoid_prime(zs[-layer])
            nabla_b[-layer] = delta
            nabla_w[-layer] = np.dot(delta, activations[-layer - 1].transpose())
        return nabla_b, nabla_w

    def update_mini_batch(mini_batch):
        nonlocal weights, biases
        nabla_b = [np.zeros(b.shape, dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, dtype) for w in weights]
        for a, t in mini_batch:
            db, dw = backprop(a, t)
            nabla_b = [nb + d for nb, d in zip(nabla_b, db)]
            nabla_w = [nw + d for nw, d in zip(nabla_w, dw)]
        weights = [w - (lr / len(mini_batch)) * nw for w, nw in zip(weights, nabla_w)]
        biases = [b - (lr / len(mini_batch)) * nb for b, nb in zip(biases, nabla_b)]

    def epoch():
        rng.shuffle(data)
        for i in range(0, len(data) - batch + 1, batch):
            update_mini_batch(data[i:i + batch])

    def feedforward(a):
        for b, w in zip(biases, weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def accuracy(images, labels) -> float:
        """network.py's evaluate, as a fraction: one feedforward per sample."""
        hits = sum(int(np.argmax(feedforward(a.reshape(-1, 1).astype(dtype))) == t) for a, t in zip(images, labels))
        return hits / len(labels)
    return epoch, accuracy


# --- PyTorch -----------------------------------------------------------------------------------

def torch_sgd(torch, model, x, y, batch: int, lr: float, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = len(x) // batch

    def epoch():
        for i in range(0, steps * batch, batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[i:i + batch]), yt[i:i + batch])
            loss.backward()
            opt.step()
    return epoch


def torch_models(torch):
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(784, 30), nn.Sigmoid(), nn.Linear(30, 10), nn.Sigmoid())
    lenet = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    return mlp, lenet


def quadratic(out, target):
    """Nielsen's quadratic cost as dlc's mse defines it: half the squared error, averaged over the batch."""
    return 0.5 * ((out - target) ** 2).sum() / len(out)


# --- the run -----------------------------------------------------------------------------------

def row(name: str, seconds: float, images: int, reference: float | None = None, ref_name: str = "") -> str:
    rate = images / seconds
    line = f"  {name:<34} {rate:>10,.0f} images/s  {1e6 * seconds / images:>8.1f} us/image"
    if reference is not None:
        line += f"  {rate / reference:5.2f}x {ref_name}"
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="mnist.pkl.gz (else random data)")
    ap.add_argument("--mlp-images", type=int, default=10_000, help="images per timed MLP run")
    ap.add_argument("--lenet-images", type=int, default=6_400, help="images per timed LeNet-5 run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="a tenth of the images, one repeat (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.mlp_images, args.lenet_images, args.repeats = 1_000, 640, 1

    rng = np.random.default_rng(0)
    n = max(args.mlp_images, args.lenet_images)
    images, labels, source = load_mnist(args.mnist, n, rng)
    onehot = np.eye(10, dtype=np.float32)[labels]
    try:
        import torch
    except ImportError:
        torch = None
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    print(f"data: {source}; numpy {np.__version__}; {threads} thread{'s' if threads > 1 else ''}"
          + (f"; torch {torch.__version__}" if torch else "; torch not installed (its ratios skipped)"))
    if torch:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        torch_mlp, torch_lenet = torch_models(torch)

    # Nielsen's chapter 1 setting: eta = 3.0, mini-batches of 10, 5,000 steps an epoch of 50,000.
    x, t = images[:args.mlp_images], onehot[:args.mlp_images]
    mlp = compile_spec(MLP_SPEC, file="<mlp>")
    runs = {"dlc engine (float32)": dlc_sgd(mlp, x, t, 10, 3.0, "mse"),
            "per-sample loop, network.py (float64)": nielsen_sgd([784, 30, 10], x, t, 10, 3.0, np.float64)[0],
            "per-sample loop, float32": nielsen_sgd([784, 30, 10], x, t, 10, 3.0, np.float32)[0]}
    if torch:
        runs["PyTorch CPU"] = torch_sgd(torch, torch_mlp, x, t, 10, 3.0, quadratic)
    times = best_times(runs, args.repeats)
    loop = len(x) / times["per-sample loop, network.py (float64)"]
    print(f"\n784-30-10 sigmoid MLP, batch 10, quadratic cost, SGD (best of {args.repeats} x {len(x):,} images):")
    for name, s in times.items():
        print(row(name, s, len(x), loop, "the network.py loop"))
    dlc_epoch = times["dlc engine (float32)"] * 50_000 / len(x)
    print(f"  an epoch of 50,000 images: dlc {dlc_epoch:.2f} s, network.py's loop "
          f"{times['per-sample loop, network.py (float64)'] * 50_000 / len(x):.2f} s "
          f"(target: dlc >= 1.5x faster)")

    # LeNet-5 on MNIST padded from 28x28 to 32x32, as LeCun et al. fed it.
    padded = np.zeros((args.lenet_images, 1, 32, 32), dtype=np.float32)
    padded[:, 0, 2:30, 2:30] = images[:args.lenet_images].reshape(-1, 28, 28)
    y = labels[:args.lenet_images]
    lenet = compile_spec(zoo_path("lenet5").read_text(), file="lenet5.dlc")
    runs = {"dlc engine (float32)": dlc_sgd(lenet, padded, y, 64, 0.01, "xent")}
    if torch:
        runs["PyTorch CPU"] = torch_sgd(torch, torch_lenet, padded, y, 64, 0.01, torch.nn.functional.cross_entropy)
    times = best_times(runs, args.repeats)
    seen = len(padded) // 64 * 64
    print(f"\nLeNet-5, batch 64, softmax cross-entropy, SGD (best of {args.repeats} x {seen:,} images):")
    ref = seen / times["PyTorch CPU"] if torch else None
    for name, s in times.items():
        print(row(name, s, seen, ref, "PyTorch") if ref else row(name, s, seen))
    if torch:
        print("  (target: dlc >= 0.8x PyTorch)")


if __name__ == "__main__":
    main()
