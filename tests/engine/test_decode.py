"""Step-by-step decoding with a key/value cache (dlc.engine.decode) against the whole window run each time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.engine import kernels
from dlc.engine.decode import POSITIONWISE, STEP_KERNELS, Decoder, KVCache, attention_step, why_not_stepwise
from dlc.engine.kernels import Ctx
from dlc.engine.params import init_params
from dlc.engine.run import forward
from dlc.graph import Network
from dlc.layers import KINDS
from dlc.train.text import generate, window_output

# GPT-2's decoder (specs/gpt2_small.dlc) at a small size: tied output, biases, dropout, two blocks
GPT = """input seq {t}
embed 32 vocab=11 as tok
posembed -> dropout 0.1
block decoder(d, h, f) {{
    add( layernorm -> attention h causal -> dropout 0.1 | identity )
    add( layernorm -> fc f gelu -> fc d -> dropout 0.1 | identity )
}}
decoder(32, 4, 64) x2
layernorm
fc 11 tied=tok bias=off softmax
"""


def model(spec: str, dtype=np.float64, seed: int = 0):
    graph = compile_spec(spec)
    # gaussian weights of 0.3 make outputs that differ clearly from step to step (he's small fc outputs
    # behind layernorms would too, but a 0.02 table makes every step look alike)
    params, state = init_params(graph, init="gaussian", std=0.3, seed=seed, dtype=dtype)
    return Network(graph, params, state)


def full_window(net: Network):
    return window_output(lambda x: forward(net, x)[0], net.graph.input.out_shape[0])


@pytest.mark.parametrize("spec", [
    GPT.format(t=16),
    "input seq 16 -> embed 16 vocab=11 -> attention 2 causal bias=off -> fc 11",
    "input seq 16 -> embed 16 vocab=11 -> attention 2 causal keybias=off -> fc 11",  # Whisper's keys
    "input seq 16 -> embed 12 vocab=11 -> lstm 8 sequences -> gru 8 sequences -> rnn 6 sequences -> fc 11 softmax",
    "input seq 16 -> embed 12 vocab=11 -> concat( fc 6 relu | attention 3 causal ) -> layernorm -> fc 11",
    # Llama's parts: rmsnorm, the SwiGLU product, and a mixture whose router reads each step alone
    "input seq 16 -> embed 12 vocab=11 -> rmsnorm -> add( attention 3 causal bias=off | identity ) -> rmsnorm "
    "-> add( mul( fc 16 silu bias=off | fc 16 bias=off ) -> fc 12 bias=off | identity ) "
    "-> experts 4 top=2 { fc 8 silu -> fc 12 } -> fc 11",
    # the positionwise math kinds of issue 28, on each step's features
    "input seq 16 -> embed 12 vocab=11 -> attention 3 causal -> prelu channels -> shift channels -> glu "
    "-> softplus -> clip min=-1 max=1 -> reduce sum axis=1 keep -> fc 11 logsoftmax",
    # Llama's and Mistral's attention: grouped heads, rotary positions, a sliding window
    "input seq 16 -> embed 16 vocab=11 -> attention 4 kv=2 rope=500000 causal window=5 bias=off "
    "-> attention 2 kv=1 rope causal -> fc 11",
])
def test_the_cache_gives_the_whole_windows_outputs_step_by_step_and_past_the_window(spec):
    net = model(spec)
    assert why_not_stepwise(net.graph) is None
    cached, full = Decoder(net).next_output, full_window(net)
    rng = np.random.default_rng(1)
    ids = [3, 1, 4]
    # 40 ids over a window of 16: the window fills at 16 and slides for the 24 after
    for _ in range(40):
        a, b = cached(ids), full(ids)
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())
        ids.append(int(rng.integers(11)))
    # greedy generation picks the same tokens with and without the cache, in float32 too
    for dtype in (np.float64, np.float32):
        net = model(spec, dtype)
        runs = [generate(out, np.array([5, 2]), 40, net.graph.output.kind == "softmax", 11, 0.0,
                         np.random.default_rng(0))
                for out in (Decoder(net).next_output, full_window(net))]
        np.testing.assert_array_equal(runs[0], runs[1])
        assert len(set(runs[0].tolist())) > 2  # the model does not just repeat one token


def test_each_new_token_runs_each_layer_on_one_step_until_the_window_is_full(monkeypatch):
    """The work each fc layer does, counted in the steps it is handed: one per token with the cache,
    the whole window without; past the window both re-read it (its positions all move)."""
    fc = kernels.KERNELS["fc"]
    rows = []

    def counting(attrs, params, state, xs, ctx):
        rows.append(xs[0].shape[1])
        return fc(attrs, params, state, xs, ctx)

    monkeypatch.setitem(kernels.KERNELS, "fc", counting)
    net = model(GPT.format(t=64))  # 5 fc layers: two per block and the output
    prompt = np.array([1, 2, 3, 4])

    def steps_run(output, tokens):
        rows.clear()
        generate(output, prompt, tokens, True, 11, 0.0, np.random.default_rng(0))
        return sum(rows) // 5
    # 60 tokens: the prompt's 4 steps, then one step for each token after the first
    assert steps_run(Decoder(net).next_output, 60) == 4 + 59
    assert steps_run(full_window(net), 60) == 60 * 64
    # 70 tokens: up to 64 ids as before, then 65 to 73 slide the window, each a full pass over its 64 ids
    assert steps_run(Decoder(net).next_output, 70) == 4 + 60 + 9 * 64


def test_grouped_key_value_heads_are_cached_once_per_group():
    """kv=2 of 6 heads (the `kv=N` option's layout: Wk, Wv (kv x head_dim, D), query head i reading key/value
    head i // 3) step by step against the attention kernel with each key/value head's rows repeated for
    its 3 query heads, which is what grouped attention computes."""
    rng = np.random.default_rng(0)
    t, d, heads, kv = 10, 24, 6, 2
    dh = d // heads
    params = {w: rng.normal(size=(d, d)) for w in ("Wq", "Wo")}
    params.update({w: rng.normal(size=(kv * dh, d)) for w in ("Wk", "Wv")})
    params.update({b: rng.normal(size=len(params["W" + b[1]])) for b in ("bq", "bk", "bv", "bo")})
    attrs = {"heads": heads, "head_dim": dh, "causal": True, "dropout": 0.0, "kv": heads, "rope": False, "window": None,
             "from": None, "mask": None}
    x = rng.normal(size=(1, t, d))
    full = {k: np.repeat(v.reshape(kv, dh, *v.shape[1:]), heads // kv, axis=0).reshape(d, *v.shape[1:])
            if k[1] in "kv" else v for k, v in params.items()}
    want, _ = kernels.KERNELS["attention"](attrs, full, {}, [x], Ctx())
    cache = KVCache(np.empty((kv, t, dh)), np.empty((kv, t, dh)))
    first = attention_step(attrs, params, x[:, :4], cache)  # four steps at once (a prompt), then one by one
    got = np.concatenate([first] + [attention_step(attrs, params, x[:, i:i + 1], cache) for i in range(4, t)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert cache.length == t


@pytest.mark.slow
def test_time_per_token_stays_flat_from_token_16_to_512_and_far_below_a_whole_window():
    """Issue 19's measure on a model big enough that a token is more than Python's overhead (4 blocks of
    D=128 at T=512): each token's time is the thread's CPU time (what other work on the machine takes is
    not counted), the fastest of 3 runs, and the medians over 32 tokens compared. bench/bench_sample.py
    prints the same figures."""
    spec = GPT.format(t=512).replace("decoder(32, 4, 64) x2", "decoder(128, 4, 512) x4").replace("embed 32", "embed 128")
    net = model(spec, np.float32)
    ids = np.random.default_rng(0).integers(11, size=512).tolist()
    runs = []
    for _ in range(3):
        output, times = Decoder(net).next_output, []
        for n in range(512):
            t0 = time.thread_time()
            output(ids[:n + 1])
            times.append(time.thread_time() - t0)
        runs.append(times)
    fastest = np.min(runs, axis=0)
    early, late = np.median(fastest[16:48]), np.median(fastest[480:512])
    assert late < 1.5 * early, f"token 16: {early * 1e3:.3f} ms, token 512: {late * 1e3:.3f} ms"
    # without the cache every token is a pass over the whole window of 512 (as it was before the cache)
    full, t0 = full_window(net), time.thread_time()
    full(ids[:20])
    assert late < (time.thread_time() - t0) / 5


def test_a_cache_holds_two_vectors_of_d_per_attention_layer_and_step():
    net = model(GPT.format(t=512), np.float32)
    assert Decoder(net).cache_bytes() == 2 * 2 * 32 * 512 * 4  # layers x 2 x D x T x 4 bytes


@pytest.mark.parametrize("spec, reason", [
    ("input seq 8 -> embed 8 vocab=11 -> attention 2 -> fc 11", "layer attention1 (attention) lets every step see later ones"),
    ("input seq 8 -> embed 8 vocab=11 -> lstm 4 sequences bidirectional -> fc 11", "reads the sequence backwards"),
    ("input seq 8 -> embed 8 vocab=11 -> lstm 4 -> fc 11", "does not keep one output per step"),
    ("input seq 8 -> embed 8 vocab=11 -> clstoken -> fc 11", "layer clstoken1 (clstoken) does not keep one output"),
    ("input seq 8 -> embed 8 vocab=11 -> concat( fc 4 | fc 4 ) -> fc 11", None),
    ("input seq 8 of 4 -> attention 2 causal -> fc 11", "its input is not a sequence of token ids"),
    # the math kinds of issue 28 with an axis: along a step's features positionwise, along the steps not
    ("input seq 8 -> embed 8 vocab=11 -> softmax axis=0 -> fc 11", "layer softmax1 (softmax) works along the steps"),
    ("input seq 8 -> embed 8 vocab=11 -> glu axis=0 -> fc 11", "layer glu1 (glu) does not keep one output per step"),
    ("input seq 8 -> embed 8 vocab=11 -> logsoftmax axis=-1 -> glu -> prelu channels -> shift -> fc 11", None),
    # several inputs (issue 22): the decoder feeds one sequence of token ids
    ("input seq 8 as a -> embed 8 vocab=11 as e\ninput seq 8 as b -> embed 8 vocab=11 -> add e -> fc 11",
     "it has 2 inputs"),
    ("input seq 8 -> embed 8 vocab=11 as e -> fc 8 -> maximum e -> sub e -> fc 11", None),
])
def test_networks_that_mix_steps_otherwise_are_named_for_the_full_window(spec, reason):
    why = why_not_stepwise(compile_spec(spec))
    assert why == reason if reason is None else reason in why


def test_every_kind_is_classified_for_the_step_by_step_decoder():
    # the kinds that mix or reshape steps, or never meet a sequence: a network with one runs the full window
    # (concat is decided by its axis: it runs step by step when it joins features)
    full_window_kinds = {"conv", "dwconv", "upconv", "avgpool", "maxpool", "gap", "gmp", "bn", "lrn", "upsample",
                         "flatten", "tokens", "clstoken", "seqpool", "concat", "input",
                         "pad", "instancenorm", "pixelshuffle", "tile", "slice", "reshape",  # issue 28's kinds
                         "patchmerge", "image",  # Swin's: it joins neighbouring tokens of a grid; image lays them out
                         "groupnorm"}  # issue 22: images and signals, not a sequence's steps
    unclassified = set(KINDS) - POSITIONWISE - STEP_KERNELS - full_window_kinds
    assert not unclassified, f"say whether {sorted(unclassified)} run step by step (dlc/engine/decode.py)"
