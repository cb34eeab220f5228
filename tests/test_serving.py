"""The serving cost model (dlc.serving): KV cache, decode steps, prefill, bytes moved, memory to serve,
each figure derived by hand."""

from __future__ import annotations

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.serving import batch_pass, decode_step, kv_bytes_per_token, kv_cache_bytes, prefill, serve_memory, time_of

LLAMA3_WEIGHTS = 8_030_261_248  # the model card's 8.03B (specs/llama3_8b.dlc)
# What a decoded token multiplies: per layer 2*4096^2 + 2*4096*1024 (attention, 8 kv heads of 128) +
# 3*4096*14336 (SwiGLU), 32 layers, and the head 128256*4096; the embedding is a lookup, norms scale.
LLAMA3_MATMUL = 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096


def test_llama3_8b_kv_cache_in_bf16(zoo_graph):
    g = zoo_graph("llama3_8b")
    # 32 layers x 2 (keys, values) x 8 kv heads x 128 x 2 bytes
    assert kv_bytes_per_token(g, "bf16") == 32 * 2 * 8 * 128 * 2 == 131_072
    assert kv_cache_bytes(g, 8192, 1, "bf16") == 2**30 == 1_073_741_824
    assert kv_cache_bytes(g, 8192, 4, "fp8") == 4 * 2**29


def test_llama3_8b_decode_step_at_2048(zoo_graph):
    a = analyse(zoo_graph("llama3_8b"), dtype="bf16")
    step = decode_step(a, 2048, 1, "bf16")
    assert LLAMA3_MATMUL == 7_504_658_432
    # one new token: every weight that multiplies once, then Q.K^T and the weighted sum of V over the 2,048
    # tokens of context: 32 layers x 2 x 32 heads x 128 x 2048
    assert step.total("macs") == LLAMA3_MATMUL + 32 * 2 * 32 * 128 * 2048 == 8_041_529_344
    # weights read once in bf16: those that multiply, the 65 rmsnorm gammas, one embedding row
    assert step.total("weight_bytes") == 2 * (LLAMA3_MATMUL + 65 * 4096 + 4096)
    # the cache read whole (2,048 tokens) and the new token's keys and values written
    assert step.total("kv_bytes") == 131_072 * (2048 + 1)


def test_llama3_8b_prefill_counts_as_the_analysis(zoo_graph):
    a = analyse(zoo_graph("llama3_8b"), dtype="bf16")
    # the spec's own 2,048 steps: the analysis' figure (specs/llama3_8b.dlc: 16,469,052,096,512)
    assert prefill(a, 2048, 1, "bf16").total("macs") == a.totals.macs == 16_469_052_096_512
    # 1,024 tokens at batch 3: the products per token and the causal square, dense, per layer 2 x 1024^2 x 4096
    assert prefill(a, 1024, 3, "bf16").total("macs") == 3 * (1024 * LLAMA3_MATMUL + 32 * 2 * 1024**2 * 4096)


def test_llama3_8b_memory_to_serve(zoo_graph):
    a = analyse(zoo_graph("llama3_8b"), dtype="bf16")
    m = serve_memory(a, 8192, 1, "bf16")
    assert m.weights == 2 * LLAMA3_WEIGHTS
    assert m.kv_cache == 2**30
    # the largest live layer: the head's softmax reads 8192 x 128256 logits and writes as many probabilities
    assert m.activations == 2 * 8192 * 128256 * 2
    assert m.total == 2 * LLAMA3_WEIGHTS + 2**30 + 2 * 8192 * 128256 * 2


def test_llama_char_decode_by_hand(zoo_graph):
    g = zoo_graph("llama_char")
    a = analyse(g)
    # 4 layers x 2 x 2 kv heads x 16 x 4 bytes
    assert kv_bytes_per_token(g, "fp32") == 4 * 2 * 2 * 16 * 4 == 1024
    # per layer 2*64^2 + 2*64*32 + 3*64*192 = 49,152 weights that multiply, the head 64*128; over 10 tokens
    # of context 4 layers x 2 x 64 x 10
    assert decode_step(a, 10, 1, "fp32").total("macs") == 4 * 49_152 + 8192 + 4 * 2 * 64 * 10 == 209_920


TINY = "input seq 8\nembed 4 vocab=10\nattention 2 causal bias=off\nfc 10 bias=off\n"


def test_every_byte_of_a_decode_step():
    a = analyse(compile_spec(TINY))
    step = decode_step(a, 5, 2, "fp32")
    embed, attention, fc = step.layers[1:]
    # embed: 2 rows of 4 looked up; reads 2 token ids (int64), writes 2 x 4 floats
    assert (embed.weight_bytes, embed.activation_bytes) == (2 * 4 * 4, 2 * 8 + 2 * 4 * 4)
    # attention, D=4, 2 heads of 2: projections 4 x 4^2 per token, scores and weighted sum 2 x 5 x 4
    assert attention.macs == 2 * (4 * 16 + 2 * 5 * 4)
    assert attention.flops == 2 * (2 * (4 * 16 + 2 * 5 * 4) + 4 * 2 * 5)  # 2*MACs + scale and softmax per score
    assert attention.weight_bytes == 4 * 16 * 4
    assert attention.activation_bytes == 2 * (2 * 4 * 4)
    # keys and values, 2 x 4 per token: 5 tokens read and 1 written per sequence
    assert attention.kv_bytes == 2 * 8 * (5 + 1) * 4
    assert (fc.macs, fc.weight_bytes, fc.activation_bytes) == (2 * 40, 40 * 4, 2 * 10 * 4 + 2 * 4 * 4)
    assert step.total("bytes") == 32 + 48 + 256 + 64 + 384 + 160 + 112


def test_a_window_caps_the_context():
    a = analyse(compile_spec(TINY.replace("causal", "causal window=3")))
    attention = decode_step(a, 5, 1, "fp32").layers[2]
    assert attention.macs == 4 * 16 + 2 * 3 * 4
    assert attention.kv_bytes == 8 * (3 + 1) * 4
    assert kv_cache_bytes(a.graph, 5, 1, "fp32") == 8 * 3 * 4
    assert kv_cache_bytes(a.graph, 2, 1, "fp32") == 8 * 2 * 4


def test_a_mixture_reads_its_top_k_experts():
    spec = ("input seq 4\nembed 8 vocab=16\nexperts 4 top=1 { fc 8 bias=off }\nattention 2 causal bias=off\n")
    a = analyse(compile_spec(spec))
    step = decode_step(a, 4, 1, "fp32")
    # the router (8x4) and one 8x8 expert run on a step; the standby three are read by none
    moe = [c for c in step.layers if c.node.name.startswith("experts")]
    assert sum(c.weight_bytes for c in moe) == (8 * 4 + 8 * 8) * 4
    assert sum(c.macs for c in moe) == 8 * 4 + 8 * 8
    assert serve_memory(a, 4, 1, "fp32").weights == a.totals.param_bytes  # memory holds every expert


def test_a_cnn_batch_moves_weights_once_and_activations_per_sample():
    a = analyse(compile_spec("input 1@4x4\nconv 2@3x3\n"))
    conv = batch_pass(a, 3).layers[1]
    assert conv.macs == 3 * 2 * 2 * 2 * 9
    # 2 x 9 + 2 weights read once; 3 samples of 1@4x4 read and 2@2x2 written
    assert conv.bytes == (2 * 9 + 2) * 4 + 3 * 16 * 4 + 3 * 8 * 4
    assert serve_memory(a, None, 3, "fp32").kv_cache == 0


def test_the_roofline_takes_the_slower_of_compute_and_memory():
    a = analyse(compile_spec("input 1@4x4\nconv 2@3x3\n"))
    conv = batch_pass(a, 1).layers[1]
    # 72 MACs + 8 bias adds = 152 FLOPs over 80 + 64 + 32 = 176 bytes
    assert (conv.flops, conv.bytes) == (152, 176)
    assert time_of(conv, 1e3, 1e3) == (0.176, "memory")
    assert time_of(conv, 100.0, 1e6) == (1.52, "compute")


def test_a_pass_sets_its_own_batch_whatever_the_analysis_batch(zoo_graph):
    g = zoo_graph("llama_char")
    assert decode_step(analyse(g, batch=4), 10, 2, "fp32").total("macs") == 2 * 209_920


def test_a_pass_that_fits_the_cache_moves_at_its_bandwidth():
    from dlc.devices import Device
    from dlc.roofline import roofline

    a = analyse(compile_spec("input 1@4x4\nconv 2@3x3\n"))
    # the pass touches 80 bytes of weights and 64 + 32 of outputs (the input's and the conv's)
    assert batch_pass(a, 1).footprint == 80 + 64 + 32
    roomy = Device("x", 2**30, 1e3, {"fp32": 1e12}, cache=176, cache_bandwidth=1e6)
    (work,) = roofline(a, roomy, 1, "fp32").phases
    assert work.in_cache and work.bandwidth == 1e6 and work.seconds == 176 / 1e6
    tight = Device("x", 2**30, 1e3, {"fp32": 1e12}, cache=175, cache_bandwidth=1e6)
    (work,) = roofline(a, tight, 1, "fp32").phases
    assert not work.in_cache and work.seconds == 176 / 1e3


def test_a_tied_head_reads_the_whole_table_the_embedding_its_rows(zoo_graph):
    a = analyse(zoo_graph("gpt2_small"))
    step = decode_step(a, 100, 3, "fp32")
    by_kind = {}
    for c in step.layers:
        by_kind.setdefault(c.node.kind, []).append(c)
    (embed,) = by_kind["embed"]
    head = by_kind["fc"][-1]
    assert embed.weight_bytes == 3 * 768 * 4  # three sequences' new tokens: three rows of 768
    assert head.weight_bytes == 50257 * 768 * 4  # GPT-2's head is the token table, read whole
    (positions,) = by_kind["posembed"]
    assert positions.weight_bytes == 768 * 4  # one position's row


def test_fused_suffix_layers_move_nothing_and_take_no_time():
    # conv 2@3x3 on 1@4x4, then bn and relu: fused, they act on the conv's 2@2x2 output in registers
    a = analyse(compile_spec("input 1@4x4\nconv 2@3x3 bn relu\n"))
    plain = {c.node.kind: c for c in batch_pass(a, 1).layers}
    fused = {c.node.kind: c for c in batch_pass(a, 1, fused=True).layers}
    assert plain["bn"].activation_bytes == plain["relu"].activation_bytes == 2 * 8 * 4  # 2@2x2 read and written
    assert fused["bn"].activation_bytes == fused["relu"].activation_bytes == 0
    assert fused["bn"].weight_bytes == plain["bn"].weight_bytes == 4 * 2 * 4  # gamma, beta, mean, var
    assert fused["relu"].epilogue and time_of(fused["relu"], 1.0, 1.0) == (0.0, "compute")
    assert fused["conv"] == plain["conv"]  # it writes the row's output, once


def test_a_fused_residual_add_reads_only_its_shortcut():
    # the add follows the branch's conv, which nothing else reads: it takes the conv's output in registers
    # and reads the shortcut, the 4@3x3 input: 36 float32 values
    a = analyse(compile_spec("input 4@3x3\nadd( conv 4@3x3 pad=1 | identity )\n"))
    add = next(c for c in batch_pass(a, 1, fused=True).layers if c.node.kind == "add")
    assert (add.activation_bytes, add.out_bytes, add.epilogue) == (36 * 4, 0, False)
    plain = next(c for c in batch_pass(a, 1).layers if c.node.kind == "add")
    assert plain.activation_bytes == 3 * 36 * 4  # two inputs read, the output written


def test_fused_nodes_whose_traffic_fits_the_cache_move_at_its_bandwidth():
    from dlc.devices import Device
    from dlc.roofline import roofline

    a = analyse(compile_spec("input 1@4x4\nconv 2@3x3\nconv 2@1x1\n"))
    # conv1 moves 80 bytes of weights, 64 in, 32 out (176); conv2 (4 + 2) * 4 = 24, 32 in, 32 out (88); the
    # pass touches 80 + 24 of weights and 64 + 32 + 32 of outputs: 232, more than a cache of 176 holds
    assert batch_pass(a, 1).footprint == 232
    device = Device("x", 2**30, 1e3, {"fp32": 1e12}, cache=176, cache_bandwidth=1e6)
    assert roofline(a, device, 1, "fp32").phases[0].seconds == (176 + 88) / 1e3
    assert roofline(a, device, 1, "fp32", fused=True).phases[0].seconds == (176 + 88) / 1e6
