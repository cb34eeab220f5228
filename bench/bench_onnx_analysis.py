"""`dlc summary MODEL.onnx` in a fresh process, against a bare `onnx.load` of the same file and against
onnx-tool's `model_profile` where onnx-tool is installed (it is not a dependency of dlc).

Run: python bench/bench_onnx_analysis.py [--model PATH] [--runs 5]. Without --model it exports the
test suite's plain-torch ResNet-50 (torchvision's architecture, 98 MB; needs the test extra's torch)
with the TorchScript exporter. Prints the median wall time of each command and the ratios to
onnx.load. The issue's target: dlc within 2x of onnx.load, and faster than onnx-tool.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def export_resnet50(folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import torch_models

    path = folder / "resnet50.onnx"
    torch_models.export(torch_models.resnet50(), path, (torch.randn(1, 3, 224, 224),), dynamo=False)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="an .onnx file (default: ResNet-50 exported here)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else export_resnet50(Path(tmp))
        commands = {
            "onnx.load": [sys.executable, "-c", f"import onnx; onnx.load({str(path)!r})"],
            "dlc summary": [sys.executable, "-m", "dlc", "summary", str(path)],
        }
        try:
            import onnx_tool  # noqa: F401

            commands["onnx-tool model_profile"] = [
                sys.executable, "-c", f"import onnx_tool; onnx_tool.model_profile({str(path)!r})"]
        except ImportError:
            print("onnx-tool is not installed: `pip install onnx-tool` to compare with it")
        size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
        print(f"{path.name}: {size / 2**20:.0f} MiB; median of {args.runs} fresh processes")
        times = {name: median_seconds(cmd, args.runs) for name, cmd in commands.items()}
        for name, seconds in times.items():
            print(f"  {name:26s} {seconds:6.2f} s  {seconds / times['onnx.load']:5.2f}x onnx.load")


if __name__ == "__main__":
    main()
