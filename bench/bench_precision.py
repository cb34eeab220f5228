"""Size, speed and accuracy of a model in float32, float16, bfloat16 and int8 (dynamic and static), as
`dlc export --dtype` and `dlc quantize --int8` write them: the table in docs/precision.md.

For each spec: the float32 export, the two half-precision exports and the two int8 files from the float32
one (static calibrated on the first 256 evaluation inputs). Size is the file's bytes; speed the median
latency of onnxruntime on the CPU at batch 1 and batch 32, every model's runs taken in turn so that the
machine's other work falls on all alike; accuracy the largest difference from the float32 output over
its largest value, and top-1 agreement, on the evaluation inputs: MNIST's 10,000 test digits for a
LeNet-5 trained by --lenet-weights, else random inputs (512 token sequences, 64 images).

Run: python bench/bench_precision.py --lenet-weights runs/mnist/best.npz --mnist ../shared/data/mnist.pkl.gz
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import tempfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dlc.cli import main
from dlc.onnx import runtime as rt
from dlc.onnx.agreement import agreement

KINDS = ("fp32", "fp16", "bf16", "int8 dynamic", "int8 static")


def dlc(*args) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exit_code:
        raise SystemExit(r.output)


def files(spec: str, weights: str | None, calibration: Path, folder: Path) -> dict[str, Path]:
    paths = {k: folder / f"{spec}.{k.replace(' ', '_')}.onnx" for k in KINDS}
    for d in ("fp32", "fp16", "bf16"):
        dlc("export", spec, "--dtype", d, "-o", paths[d], *(["--weights", weights] if weights else []))
    dlc("quantize", paths["fp32"], "--int8", "-o", paths["int8 dynamic"], "--runs", 1)
    dlc("quantize", paths["fp32"], "--int8", "--calibrate", calibration, "-o", paths["int8 static"], "--runs", 1)
    return paths


def measure(spec: str, x: np.ndarray, weights: str | None, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "calibration.npy", x[:256])
        paths = files(spec, weights, Path(tmp) / "calibration.npy", Path(tmp))
        sessions = {k: rt.create_session(str(p), "cpu", spin=False) for k, p in paths.items()}
        ys = {k: np.concatenate([rt.infer(s, x[i:i + 256]) for i in range(0, len(x), 256)])
              for k, s in sessions.items()}
        speeds = {}
        for batch in (1, 32):
            feeds = {sessions["fp32"].input_name: x[:batch]}
            timed = rt.alternating_latency(list(sessions.values()), feeds, batch, 5, runs)
            speeds[batch] = dict(zip(sessions, timed))
        print(f"\n{spec} ({len(x):,} evaluation inputs{', trained weights' if weights else ', fresh weights'})")
        print("| precision | file bytes | p50 ms batch 1 | p50 ms batch 32 | max rel. diff | top-1 agreement |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k in KINDS:
            a = agreement(ys["fp32"], ys[k])
            top1 = f"{a.top1:.2%}" if a.top1 is not None else "-"
            print(f"| {k} | {paths[k].stat().st_size:,} | {speeds[1][k].p50 * 1e3:.3f} | "
                  f"{speeds[32][k].p50 * 1e3:.3f} | {a.max_rel:.2e} | {top1} |")


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lenet-weights", help="a LeNet-5 checkpoint trained on MNIST (dlc train lenet5 --reshape)")
    ap.add_argument("--mnist", help="mnist.pkl.gz: LeNet-5 is evaluated on its test digits")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.mnist:
        with gzip.open(args.mnist) as f:
            test = pickle.load(f, encoding="latin1")[2][0]
        digits = np.pad(test.reshape(-1, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2))).astype(np.float32)
    else:
        digits = rng.standard_normal((512, 1, 32, 32)).astype(np.float32)
    measure("lenet5", digits, args.lenet_weights, args.runs)
    measure("transformer_reverse", rng.integers(0, 16, (512, 12)), None, args.runs)
    measure("resnet18", rng.standard_normal((64, 3, 224, 224)).astype(np.float32), None, args.runs)


if __name__ == "__main__":
    main_()
