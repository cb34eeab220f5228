"""Issue 13's speed targets, each as a ratio against its reference measured in the same run.

Run: python bench/bench_train.py [--threads N] [--rounds 3] [--data ../shared/data/mnist.pkl.gz]
     [--accuracy-epochs 30] [--only NAME ...]

--only runs the named targets alone (repeat it for several): lenet, mlp10, mlp128, transformer,
onnxruntime, memory, startup.

This is the in-process form: dlc's training loop and the references' epochs timed inside one
process. bench_epoch.py times whole `dlc train` processes against whole PyTorch scripts, as a user
would (issue 24). The PyTorch references are reference_train.py's idiomatic ones, for both.

Every ratio comes from alternating rounds in this one process: dlc, then its reference, then dlc
again, so load from other processes falls on both alike; the median of the rounds' ratios counts
(each side's median rate is printed, and every round's ratio beside it). numpy's OpenBLAS and PyTorch get the same thread
count (--threads, default one per core), fixed before either is imported. OpenBLAS's threads
busy-wait, and on cores other processes load they collapse 10-50x: on a shared machine
`--threads 1` gives steadier ratios.

Targets (issue 13):
1. LeNet-5 (28x28 MNIST centre-padded to 32x32, momentum SGD lr 0.01, batch 64), `dlc train` end to
   end: the images_per_second its --json reports, against PyTorch CPU running the same loop (shuffled
   batches, forward, cross-entropy, backward, update; nothing read back per step). Target >= 1.0x (stretch 1.3x).
2. Nielsen's 784-30-10 (specs/mlp_mnist.dlc: sigmoid, quadratic cost, sgd 3.0) at batch 10 against
   network.py's per-sample loop (>= 5x), and at batch 128 against PyTorch's same loop (>= 1.0x).
3. specs/transformer_reverse.dlc (2 encoder blocks, D=64, 4 heads, T=12, batch 64, adam) against
   the same network in PyTorch: `dlc train`'s sequences/s, end to end, against PyTorch's loop (>= 0.8x).
4. `dlc bench` / `dlc infer` through onnxruntime against raw onnxruntime on the same session options
   (<= 5% slower), and whether the export of a conv-bn-relu stack lets onnxruntime fuse it.
5. A LeNet-5 training step's peak memory (tracemalloc) within 1.5x of `dlc summary --batch B`'s
   training estimate, B from 1 to 256.
6. `dlc params resnet152` start-up <= 0.2 s (median of fresh processes).
With --accuracy-epochs N it first trains Nielsen's network for N epochs and prints its test accuracy
(the book: about 95% after 30).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist.pkl.gz"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def dlc_train(args: list[str], tmp: Path) -> dict:
    """`dlc train ... --json` in this process, as the CLI runs it, into a new run folder under tmp;
    its JSON summary."""
    from dlc.cli import main as cli

    buf = io.StringIO()
    out = Path(tempfile.mkdtemp(dir=tmp)) / "run"
    with contextlib.redirect_stdout(buf):
        cli.main(["train", *args, "--out", str(out), "--json"], standalone_mode=False)
    return json.loads(buf.getvalue())


def alternate(pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]], rounds: int) -> dict:
    """Run each target's (dlc, reference) rate functions in turns for `rounds` rounds.

    Returns target -> (dlc rates, reference rates); a rate is items per second, higher is better.
    """
    rates = {name: ([], []) for name in pairs}
    for _ in range(rounds):
        for name, (ours, theirs) in pairs.items():
            rates[name][0].append(ours())
            rates[name][1].append(theirs())
    return rates


def report(name: str, ours: list[float], theirs: list[float], unit: str, ref: str, target: float,
           show_rounds: bool = True) -> None:
    # The ratio is the median of the rounds' ratios: each round's two sides ran back to back under
    # the same load, which a ratio of the two sides' medians (taken from different rounds) loses.
    mine, ref_rate = statistics.median(ours), statistics.median(theirs)
    ratios = [a / b for a, b in zip(ours, theirs)]
    ratio = statistics.median(ratios)
    per_round = "rounds: " + " ".join(f"{r:.2f}" for r in ratios) if show_rounds else f"{len(ratios)} rounds"
    print(f"{name:<34} {mine:>10,.0f} vs {ref_rate:>10,.0f} {unit:<8} {ratio:5.2f}x {ref:<20} "
          f"target >= {target:.2g}x {'met' if ratio >= target else 'NOT MET'}   ({per_round})")


# --- 1 and 2: training throughput ---------------------------------------------------------------

def torch_loop(torch, model, x, y, batch: int, opt, loss=None) -> Callable[[], float]:
    """One epoch of the idiomatic PyTorch loop (reference_train.torch_epoch), in images per second."""
    from reference_train import torch_epoch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch_epoch(torch, model, opt, xt[:4 * batch], yt[:4 * batch], batch, loss)  # autograd's first-use set-up

    def epoch() -> float:
        t0 = time.perf_counter()
        torch_epoch(torch, model, opt, xt, yt, batch, loss)
        return len(xt) / (time.perf_counter() - t0)
    return epoch


# --only's names: the training targets by their printed name, then the parts printed on their own
TRAINING = {"lenet": "LeNet-5 dlc train, batch 64", "mlp10": "784-30-10 dlc train, batch 10",
            "mlp128": "784-30-10 dlc train, batch 128", "transformer": "transformer encoder, batch 64"}
TARGETS = (*TRAINING, "onnxruntime", "memory", "startup")


def training_targets(torch, mnist, tmp: Path, args, wanted: list[str]) -> dict:
    """Printed name -> (dlc rate, reference rate) for the wanted training targets (--only's names)."""
    build = {"lenet": lambda: lenet_target(torch, mnist, tmp, args.lenet_images),
             "mlp10": lambda: mlp_target(torch, mnist, tmp, args.mlp_images, 10),
             "mlp128": lambda: mlp_target(torch, mnist, tmp, args.mlp_images, 128),
             "transformer": lambda: transformer_target(torch, tmp, args.sequences)}
    return {TRAINING[k]: build[k]() for k in TRAINING if k in wanted}


def lenet_target(torch, mnist, tmp: Path, images: int) -> tuple[Callable[[], float], Callable[[], float]]:
    import numpy as np
    from reference_train import torch_model, torch_optimizer

    n = min(images, len(mnist.train))
    subset = tmp / "lenet.npz"
    np.savez(subset, x=mnist.train.x[:n], y=mnist.train.y[:n])
    padded = np.zeros((n, 1, 32, 32), np.float32)  # as --reshape centre-pads 28x28 for dlc
    padded[:, 0, 2:30, 2:30] = mnist.train.x[:n].reshape(-1, 28, 28)
    labels = mnist.train.y[:n].astype(np.int64)
    lenet = torch_model(torch, "lenet_tanh")
    lenet_torch = torch_loop(torch, lenet, padded, labels, 64, torch_optimizer(torch, "lenet_tanh", lenet))

    def lenet_dlc() -> float:
        return dlc_train([str(ROOT / "specs" / "lenet5.dlc"), "--data", str(subset), "--reshape",
                          "--optimizer", "momentum", "--lr", "0.01", "--batch", "64", "--epochs", "1"],
                         tmp)["images_per_second"]
    return lenet_dlc, lenet_torch


def mlp_target(torch, mnist, tmp: Path, images: int, batch: int) -> tuple[Callable[[], float], Callable[[], float]]:
    """Nielsen's network at `batch`: against network.py's per-sample loop at batch 10, else PyTorch."""
    import numpy as np
    from bench_engine import nielsen_sgd, quadratic

    m = min(images, len(mnist.train))
    mlp_data = tmp / "mlp.npz"
    np.savez(mlp_data, x=mnist.train.x[:m], y=mnist.train.y[:m])
    onehot = np.eye(10, dtype=np.float32)[mnist.train.y[:m]]

    def mlp_dlc() -> float:
        return dlc_train([str(ROOT / "specs" / "mlp_mnist.dlc"), "--data", str(mlp_data),
                          "--batch", str(batch), "--epochs", "1"], tmp)["images_per_second"]

    if batch == 10:
        network_py, _ = nielsen_sgd([784, 30, 10], mnist.train.x[:m], onehot, 10, 3.0, np.float64)

        def network_py_rate() -> float:
            t0 = time.perf_counter()
            network_py()
            return m / (time.perf_counter() - t0)
        return mlp_dlc, network_py_rate
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(784, 30), nn.Sigmoid(), nn.Linear(30, 10), nn.Sigmoid())
    return mlp_dlc, torch_loop(torch, mlp, mnist.train.x[:m], onehot, batch,
                               torch.optim.SGD(mlp.parameters(), lr=3.0), quadratic)


def transformer_target(torch, tmp: Path, sequences: int) -> tuple[Callable[[], float], Callable[[], float]]:
    """specs/transformer_reverse.dlc (2 pre-layernorm encoder blocks, D=64, 4 heads, T=12, adam 3e-3,
    batch 64) reversing random 12-token sequences over 16 tokens, against the same network in
    PyTorch (nn.TransformerEncoderLayer, norm_first, exact GELU, no dropout): sequences/s, dlc's from
    `dlc train --json` (per-step targets: one class per output step)."""
    import numpy as np
    from reference_train import torch_model, torch_optimizer

    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, (sequences, 12))
    y = x[:, ::-1].copy()
    data = tmp / "reverse.npz"
    np.savez(data, x=x, y=y)

    model = torch_model(torch, "transformer")
    theirs = torch_loop(torch, model, x, y, 64, torch_optimizer(torch, "transformer", model))

    spec = str(ROOT / "specs" / "transformer_reverse.dlc")  # its train statement: adam 3e-3, batch 64
    return lambda: dlc_train([spec, "--data", str(data), "--epochs", "1"], tmp)["images_per_second"], theirs


# --- 4: onnxruntime ----------------------------------------------------------------------------

BLOCK = 20  # calls of LeNet-5 at batch 64 timed together: about 15 ms


def onnxruntime_targets(rounds: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params
    from dlc.graph import Network
    from dlc.onnx import runtime as rt
    from dlc.onnx.export import to_onnx
    from dlc.zoo import zoo_path

    graph = compile_spec(zoo_path("lenet5").read_text(), file="lenet5.dlc")
    params, state = init_params(graph)
    payload = to_onnx(Network(graph, params, state)).SerializeToString()
    session = rt.create_session(payload, "cpu")
    # dlc's session differs from a default one only in its log level (the optimization level and
    # thread counts are printed to show it), so its own InferenceSession is the raw reference: two
    # sessions called in turns disturb each other, the idle one's threads spinning on the cores.
    opts, default = session.session.get_session_options(), ort.SessionOptions()
    same = all(getattr(opts, k) == getattr(default, k) for k in
               ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads", "execution_mode"))
    raw = session.session
    x = rt.random_input(graph.input.out_shape, np.float32, 64)
    name, out = raw.get_inputs()[0].name, raw.get_outputs()[0].name
    runs = {"dlc bench (LeNet-5, batch 64)": rt.runner(session, {session.input_name: x}),
            "dlc infer's run (LeNet-5, batch 64)": lambda: rt.infer(session, x),
            "raw": lambda: raw.run([out], {name: x})}
    # Blocks of calls in turns, the order turning round every round: interleaved call by call, the
    # call after another ran measurably slower whatever it was (dlc's own work per call is below),
    # and a block's mean evens that out. Each round's ratio to the raw block beside it counts.
    rates = {k: [] for k in runs}
    names = list(runs)
    for i in range(15 * rounds):
        for k in names[i % 3:] + names[:i % 3]:
            fn = runs[k]
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                fn()
            rates[k].append(64 * BLOCK / (time.perf_counter() - t0))
    raw_rates = rates.pop("raw")
    raw_rate = statistics.median(raw_rates)
    for target, ours in rates.items():
        report(target, ours, raw_rates, "img/s", "raw onnxruntime", 0.95, show_rounds=False)
    # Under load the turns above swing both ways; dlc's own work per call, timed alone, is steadier.
    own = min(timeit.repeat(lambda: rt.prepare_input(x, session.input_shape, session.input_dtype),
                            number=1000, repeat=5)) / 1000
    print(f"{'dlc infer own work per call':<34} {own * 1e6:>10.1f} us = {own * raw_rate / 64:.2%} of raw "
          f"onnxruntime's median call{'':>8} target <= 5% {'met' if own * raw_rate / 64 <= 0.05 else 'NOT MET'}")
    print(f"{'session options':<34} {'as onnxruntime defaults' if same else 'NOT the defaults'}: "
          f"{opts.graph_optimization_level}, intra-op threads {opts.intra_op_num_threads} (0: one per core)")
    print(f"{'conv-bn-relu export, ORT_ENABLE_ALL':<34} {fusion_check()}")


def fusion_check() -> str:
    """Which node kinds onnxruntime's own optimizer leaves of an exported conv-bn-relu stack."""
    import onnx
    import onnxruntime as ort
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params
    from dlc.graph import Network
    from dlc.onnx.export import to_onnx

    graph = compile_spec("input 3@16x16 -> conv 8@3x3 pad=1 bn relu -> conv 8@3x3 pad=1 bn relu -> gap -> fc 10",
                         file="<fusion>")
    params, state = init_params(graph)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()  # graph optimizations default to ORT_ENABLE_ALL
        opts.log_severity_level = 3  # not the warning that a saved optimized model is machine-specific
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(to_onnx(Network(graph, params, state)).SerializeToString(), opts,
                             providers=["CPUExecutionProvider"])
        kinds = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    fused = "BatchNormalization" not in kinds and "Relu" not in kinds
    return f"{'fused' if fused else 'NOT fused'}: optimized graph has {', '.join(kinds)}"


# --- 5: memory ---------------------------------------------------------------------------------

def memory_target(batches: tuple[int, ...]) -> None:
    import numpy as np
    from dlc.analysis import analyse
    from dlc.compile import compile_spec
    from dlc.zoo import zoo_path

    sys.path.insert(0, str(ROOT / "tests"))
    from step_memory import sgd_step_peak  # the memory test's own measurement

    graph = compile_spec(zoo_path("lenet5").read_text(), file="lenet5.dlc")
    rng = np.random.default_rng(0)
    ratios = []
    for batch in batches:
        estimate = analyse(graph, batch=batch, optimizer="sgd").totals.engine_train_bytes  # columns included
        ratios.append((batch, sgd_step_peak(graph, batch, rng) / estimate))
    worst = max(r for _, r in ratios)
    print(f"{'LeNet-5 step peak / estimate':<34} {' '.join(f'B={b}: {r:.2f}' for b, r in ratios)}   "
          f"target <= 1.5 {'met' if worst <= 1.5 else 'NOT MET'}")


# --- 6: start-up -------------------------------------------------------------------------------

def startup_target(runs: int) -> None:
    from bench_startup import median_seconds

    cmd = [sys.executable, "-m", "dlc", "params", str(ROOT / "specs" / "resnet152.dlc")]
    median_seconds(cmd, 2)  # warm the OS cache and lark's parser cache
    seconds = median_seconds(cmd, runs)
    print(f"{'dlc params resnet152 start-up':<34} {seconds * 1000:>10.0f} ms median of {runs}"
          f"{'':>27} target <= 200 ms {'met' if seconds <= 0.2 else 'NOT MET'}")


def accuracy_run(data: Path, epochs: int, tmp: Path) -> None:
    result = dlc_train([str(ROOT / "specs" / "mlp_mnist.dlc"), "--data", str(data), "--epochs", str(epochs)],
                       tmp)
    print(f"Nielsen's 784-30-10, {epochs} epochs of dlc train: test accuracy {result['test_accuracy']:.2%} "
          f"(book: about 95% after 30)\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median counts")
    ap.add_argument("--lenet-images", type=int, default=10_000, help="images in a LeNet-5 epoch")
    ap.add_argument("--mlp-images", type=int, default=10_000, help="images in a 784-30-10 epoch")
    ap.add_argument("--sequences", type=int, default=3_200, help="sequences in a transformer epoch")
    ap.add_argument("--accuracy-epochs", type=int, default=0, help="train Nielsen's network this long first")
    ap.add_argument("--only", action="append", choices=TARGETS, metavar="NAME",
                    help=f"run this target alone (repeatable): {', '.join(TARGETS)}")
    args = ap.parse_args()
    wanted = args.only or list(TARGETS)
    if not args.data.exists():
        sys.exit(f"{args.data} not found: pass --data path/to/mnist.pkl.gz")
    # before numpy or torch is imported: both size their thread pools once, at import
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch
    from dlc.train.readers import load_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"numpy {np.__version__}, torch {torch.__version__}, {args.threads} thread(s) each, "
          f"{os.cpu_count()} cores, load average {load:.1f} at the start; {args.rounds} alternating rounds\n")
    mnist = load_file(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.accuracy_epochs:
            accuracy_run(args.data, args.accuracy_epochs, tmp)
        print(f"{'target':<34} {'dlc':>10}    {'reference':>10}")
        rates = alternate(training_targets(torch, mnist, tmp, args, wanted), args.rounds)
        goals = {"LeNet-5 dlc train, batch 64": ("img/s", "PyTorch CPU", 1.0),
                 "784-30-10 dlc train, batch 10": ("img/s", "network.py's loop", 5.0),
                 "784-30-10 dlc train, batch 128": ("img/s", "PyTorch CPU", 1.0),
                 "transformer encoder, batch 64": ("seq/s", "PyTorch CPU", 0.8)}
        for name, (ours, theirs) in rates.items():
            report(name, ours, theirs, *goals[name])
    if "onnxruntime" in wanted:
        onnxruntime_targets(args.rounds)
    if "memory" in wanted:
        memory_target((1, 2, 4, 8, 16, 32, 64, 128, 256))
    if "startup" in wanted:
        startup_target(9)
    if hasattr(os, "getloadavg"):
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
