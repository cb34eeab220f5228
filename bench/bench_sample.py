"""Time per generated token of `dlc sample`'s decoder (dlc/engine/decode.py) as the text grows.

A GPT-2-style character model (4 pre-layernorm blocks of D=128, 4 heads, a window of 512, tied output)
with random weights generates 512 tokens from one, `--repeats` times; each token's time is the fastest
of the repeats (the least disturbed by other work on the machine), and the table gives the median over
32 tokens at 16, 256 and 480. With the key/value cache a token costs one step of every layer plus its
attention over the cached steps, so the times stay near flat; the whole window, as `dlc sample` ran
every token before the cache and still runs past the window, is timed at a few lengths for contrast.
tests/engine/test_decode.py holds the ratio of the last medians to the first below 1.5 (a slow test, in
the thread's CPU time so that other work on the machine counts less) and counts the steps each layer
computes. Run: python bench/bench_sample.py [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dlc.compile import compile_spec
from dlc.engine.decode import Decoder
from dlc.engine.params import init_params
from dlc.engine.run import forward
from dlc.graph import Network
from dlc.train.text import window_output

SPEC = """input seq 512
embed 128 vocab=96 as tok
posembed
block decoder(d, h, f) {
    add( layernorm -> attention h causal | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
decoder(128, 4, 512) x4
layernorm
fc 96 tied=tok bias=off softmax
"""
STARTS = (16, 256, 480)  # the medians are over tokens START..START+31


def token_times(graph, params, state, ids: list[int], repeats: int) -> np.ndarray:
    """Seconds per token n (the output at ids[:n + 1]) with the cache, the fastest of `repeats` runs."""
    runs = []
    for _ in range(repeats):
        output = Decoder(Network(graph, params, state)).next_output
        times = []
        for n in range(512):
            t0 = time.perf_counter()
            output(ids[:n + 1])
            times.append(time.perf_counter() - t0)
        runs.append(times)
    return np.min(runs, axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of 512 tokens; each token's fastest counts")
    args = ap.parse_args()
    graph = compile_spec(SPEC)
    params, state = init_params(graph)
    ids = np.random.default_rng(0).integers(96, size=512).tolist()
    cached = token_times(graph, params, state, ids, args.repeats)
    full = window_output(lambda x: forward(Network(graph, params, state), x)[0], 512)
    print("token   cached (ms)   whole window (ms)")
    medians = []
    for start in STARTS:
        medians.append(np.median(cached[start:start + 32]))
        t0 = time.perf_counter()
        full(ids[:start + 1])
        print(f"{start:>5}-{start + 31:<5} {medians[-1] * 1e3:9.3f} {(time.perf_counter() - t0) * 1e3:15.1f}")
    print(f"tokens 480-511 against 16-47: {medians[-1] / medians[0]:.2f}x")


if __name__ == "__main__":
    main()
