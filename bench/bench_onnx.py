"""onnxruntime (CPU) against the NumPy engine's inference forward, on ResNet-50 and LeNet-5.

Run: python bench/bench_onnx.py [--runs 5] [--warmup 2]. onnxruntime runs through the code path of
`dlc bench` (dlc.onnx.runtime.create_session / bench); the NumPy engine runs dlc.engine.run.forward on the
same batch in the same process. Prints images per second for each and the ratio onnxruntime / NumPy.
"""

from __future__ import annotations

import argparse

import numpy as np

from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import forward
from dlc.graph import Network
from dlc.onnx import runtime as rt
from dlc.onnx.export import to_onnx
from dlc.zoo import zoo_path

NETWORKS = {"resnet50": 8, "lenet5": 64}  # zoo name -> batch size


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    print(f"{'network':10s} {'batch':>5s} {'onnxruntime img/s':>18s} {'numpy img/s':>12s} {'ratio':>7s}")
    for name, batch in NETWORKS.items():
        path = zoo_path(name)
        graph = compile_spec(path.read_text(), file=str(path))
        params, state = init_params(graph)
        session = rt.create_session(to_onnx(Network(graph, params, state)), "cpu")
        ort_result = rt.bench(session, batch, args.warmup, args.runs)
        x = rt.random_input(graph.input.out_shape, np.float32, batch)
        numpy_result = rt.latency(batch, rt.time_runs(lambda: forward(Network(graph, params, state), x),
                                                      args.warmup, args.runs))
        print(f"{name:10s} {batch:5d} {ort_result.throughput:18,.1f} {numpy_result.throughput:12,.1f} "
              f"{ort_result.throughput / numpy_result.throughput:6.2f}x   ({session.provider}, "
              f"median of {args.runs} runs after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
