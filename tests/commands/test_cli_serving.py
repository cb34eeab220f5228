"""`dlc summary` of a causal spec: the KV cache, a decode step beside the prefill, the memory to serve,
and whether it fits a device; refusals of the serving flags."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dlc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_llama3_8b_summary_in_bf16_at_8192_tokens():
    r = run("summary", "llama3_8b", "--dtype", "bf16", "--context", "8192", "--device", "h100-sxm")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # 32 layers x 2 x 8 kv heads x 128 x 2 bytes per token; 8,192 of them: 2^30 bytes
    assert ("KV cache: 131,072 B (128.00 KiB) per token in bf16 = 32 layers x 2 x 8 kv heads x 128 x 2 B; "
            "1.00 GiB (1,073,741,824 B) at context 8,192 x batch 1") in lines
    # 7,504,658,432 weights that multiply + 32 layers x 2 x 4096 x 8192 in attention
    decode = 7_504_658_432 + 32 * 2 * 4096 * 8192
    assert any(line.startswith(f"decode step at context 8,192: 9.65 G MACs ({decode:,})") for line in lines)
    # weights 2 x 8,030,261,248 + KV 2^30 + the softmax's 8192 x 128256 logits read and as many written
    served = 2 * 8_030_261_248 + 2**30 + 2 * 8192 * 128256 * 2
    assert f"memory to serve at context 8,192 x batch 1: {served / 2**30:.2f} GiB" in r.output
    assert "h100-sxm: 19.87 GiB fits in its 74.51 GiB (80,000,000,000 B)" in lines


def test_the_serving_figures_in_json_with_their_conventions():
    r = run("summary", "llama3_8b", "--dtype", "bf16", "--context", "2048", "--batch", "2", "--kv-dtype", "fp8",
            "--device", "l4", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["serving"]
    assert (s["context"], s["batch"], s["kv_dtype"]) == (2048, 2, "fp8")
    assert s["kv_bytes_per_token"] == 32 * 2 * 8 * 128
    assert s["kv_cache_bytes"] == 2 * 2048 * 32 * 2 * 8 * 128
    assert s["decode"]["macs"] == 2 * 8_041_529_344
    assert s["serve_bytes"]["total"] == sum(s["serve_bytes"][k] for k in ("weights", "kv_cache", "activations"))
    assert s["device"] == {"name": "l4", "memory": 24 * 10**9, "fits": True}
    assert set(s["conventions"]) >= {"kv_bytes_per_token", "decode", "bytes", "serve_bytes"}


def test_a_cnn_summary_has_no_serving_lines():
    r = run("summary", "lenet5")
    assert r.exit_code == 0 and "KV cache" not in r.output


@pytest.mark.parametrize("args, words", [
    (("lenet5", "--context", "8"), "--context 8: "),
    (("lenet5", "--kv-dtype", "fp8"), "--kv-dtype fp8: "),
    (("llama_char", "--context", "0"), "--context"),
    (("llama_char", "--kv-dtype", "fp64"), "--kv-dtype"),
    (("llama_char", "--device", "h1000"), "--device h1000: no such device; the table has h100-sxm"),
])
def test_bad_serving_flags_are_refused(args, words):
    r = run("summary", *args)
    assert r.exit_code == 2
    assert words in r.output and "Traceback" not in r.output


def test_a_cnn_with_a_device_says_whether_a_batch_fits():
    r = run("summary", "resnet50", "--batch", "64", "--dtype", "fp16", "--device", "l4")
    assert r.exit_code == 0, r.output
    # 25,557,032 params and 53,120 bn statistics in fp16; the largest layer at batch 64: a stage-1 add
    # reading two 256@56x56 tensors and writing a third
    weights, activations = 2 * (25_557_032 + 53_120), 3 * 64 * 256 * 56 * 56 * 2
    assert (f"memory to serve at batch 64: {(weights + activations) / 2**20:.2f} MiB = weights "
            f"{weights / 2**20:.2f} MiB + largest live activations {activations / 2**20:.2f} MiB") in r.output
    assert "l4: 342.85 MiB fits in its 22.35 GiB (24,000,000,000 B)" in r.output
    doc = json.loads(run("summary", "resnet50", "--device", "l4", "--json").output)["serving"]
    assert doc["serve_bytes"]["kv_cache"] == 0 and doc["device"]["fits"] is True
