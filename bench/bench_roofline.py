"""`dlc roofline --device local` against onnxruntime on this CPU: is the roofline a lower bound?

Run: python bench/bench_roofline.py [--runs 20] [--warmup 3]. Each network is exported to ONNX with
fresh weights; the roofline reads the .onnx file through the ONNX analysis, as `dlc roofline
MODEL.onnx --device local --fused` does (onnxruntime folds bn into the convolution, runs activations in
its epilogue and finds a layer's output still in cache), with this machine's measured float32
matrix-product peak and bandwidth (measured once, cached: dlc.devices.local); onnxruntime runs the same file through `dlc
bench`'s code path (median of the timed runs). The device is measured afresh (dlc.devices.measure, what
`--device local` caches), so that both sides see the machine's load of the moment. A prediction above
the measurement is marked "ABOVE": the roofline must never be. Not a timed test: the figures depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dlc.compile import compile_spec
from dlc.devices import measure
from dlc.engine.params import init_params
from dlc.graph import Network
from dlc.onnx import runtime as rt
from dlc.onnx.analysis import analyse_onnx
from dlc.onnx.export import to_onnx
from dlc.onnx.model import load
from dlc.roofline import roofline
from dlc.units import seconds
from dlc.zoo import zoo_path

# zoo name -> batch sizes; transformer_reverse and llama_char are the small transformers (the second
# causal, run here as onnxruntime runs it: one whole window per sample)
NETWORKS = {"lenet5": (1, 32), "alexnet": (1, 8), "resnet18": (1, 8), "resnet50": (1, 8),
            "mobilenet_v2": (1, 8), "transformer_reverse": (1, 32), "llama_char": (1, 8)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    device = measure()
    print(f"measured: fp32 peak {device.peak['fp32'] / 1e9:,.1f} GFLOP/s, copy bandwidth "
          f"{device.bandwidth / 1e9:,.2f} GB/s, a {device.cache / 2**20:.0f} MiB cache at "
          f"{device.cache_bandwidth / 1e9:,.1f} GB/s ({device.note})")
    print(f"{'network':20s} {'batch':>5s} {'GFLOPs':>8s} {'MB moved':>9s} {'in cache':>8s} {'bound':>14s} {'predicted':>10s} "
          f"{'measured':>10s} {'measured/predicted':>18s}")
    with tempfile.TemporaryDirectory() as folder:
        for name, batches in NETWORKS.items():
            path = zoo_path(name)
            graph = compile_spec(path.read_text(), file=str(path))
            params, state = init_params(graph)
            model = to_onnx(Network(graph, params, state))
            file = Path(folder) / f"{name}.onnx"
            file.write_bytes(model.SerializeToString())
            analysis, _ = analyse_onnx(load(str(file)))
            session = rt.create_session(model, "cpu")
            for batch in batches:
                (work,) = roofline(analysis, device, batch, "fp32", fused=True).phases
                compute = sum(n.compute_seconds for n in work.nodes)
                bound = f"{100 * compute / work.seconds:.0f}% compute"
                measured = rt.bench(session, batch, args.warmup, args.runs).p50
                verdict = "" if work.seconds <= measured else "  ABOVE"
                print(f"{name:20s} {batch:5d} {work.total('flops') / 1e9:8.3f} {work.total('bytes') / 1e6:9.1f} "
                      f"{'yes' if work.in_cache else 'no':>8s} "
                      f"{bound:>14s} {seconds(work.seconds):>10s} {seconds(measured):>10s} "
                      f"{measured / work.seconds:17.1f}x{verdict}")
    print(f"onnxruntime on the CPU provider, median of {args.runs} runs after {args.warmup} warm-up")


if __name__ == "__main__":
    main()
