"""`dlc roofline` as a user runs it: the Llama-3-8B and ResNet-50 figures, an ONNX model, the picture,
`dlc draw --device`, and every bad flag refused in one line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dlc.cli import main

H100_BF16, H100_BANDWIDTH = 989.5e12, 3.35e12


def run(*args):
    return CliRunner().invoke(main, list(args))


def roofline_json(*args):
    r = run("roofline", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_llama3_8b_on_h100_prefill_2048_then_256_tokens():
    doc = roofline_json("llama3_8b", "--device", "h100-sxm", "--dtype", "bf16", "--prompt", "2048", "--generate", "256")
    prefill, decode = doc["phases"]
    assert (doc["prompt"], doc["generate"], decode["passes"], decode["contexts"]) == (2048, 256, 256, [2049, 2304])
    assert prefill["totals"]["macs"] == 16_469_052_096_512  # the spec's own 2,048 tokens
    # the 256 steps: 7,504,658,432 weights that multiply each, and 32 x 2 x 4096 x context in attention
    assert decode["totals"]["macs"] == 256 * 7_504_658_432 + 32 * 2 * 4096 * sum(range(2049, 2305))
    assert decode["totals"]["weight_bytes"] == 256 * 2 * (7_504_658_432 + 65 * 4096 + 4096)
    # each step reads the cache (131,072 bytes a token) and writes its own token's keys and values
    assert decode["totals"]["kv_bytes"] == 131_072 * sum(c + 1 for c in range(2049, 2305))
    # at batch 1 every layer of a step reads far more bytes than it does FLOPs: all memory bound, so a
    # token takes its bytes over the bandwidth
    assert {layer["bound"] for layer in decode["layers"] if layer["seconds"]} == {"memory"}
    per_token = decode["totals"]["bytes"] / 256 / H100_BANDWIDTH
    assert doc["totals"]["seconds_per_token"] == pytest.approx(per_token, rel=1e-12)
    assert doc["totals"]["tokens_per_second"] == pytest.approx(1 / per_token)
    # a prefill's projections are compute bound: their time is their FLOPs at the bf16 peak
    fc = next(layer for layer in prefill["layers"] if layer["name"] == "llama1.fc3")
    assert (fc["flops"], fc["bound"]) == (2 * 2048 * 14336 * 4096, "compute")
    assert fc["seconds"] == pytest.approx(fc["flops"] / H100_BF16)
    assert doc["device"]["peak"] == H100_BF16 and doc["dtype"]["compute"] == "bf16"


def test_the_llama3_8b_tables():
    r = run("roofline", "llama3_8b", "--device", "h100-sxm", "--dtype", "bf16", "--prompt", "2048",
            "--generate", "256")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("llama3_8b on h100-sxm: bf16 peak 989.50 TFLOP/s, memory 3.35 TB/s, ridge 295.4 FLOP/B")
    assert "decode: the mean of 256 steps at contexts 2,049..2,304" in r.output
    assert "time to first token: " in r.output and " tokens/s at batch 1" in r.output


def test_resnet50_per_batch():
    doc = roofline_json("resnet50", "--device", "a100-80gb-sxm", "--batch", "8", "--dtype", "fp16")
    (batch,) = doc["phases"]
    assert batch["what"] == "batch" and "prompt" not in doc
    conv1 = next(layer for layer in batch["layers"] if layer["name"] == "conv1")
    # 64@112x112 outputs of 3x7x7 products, 8 samples; its 64*3*49 weights (no bias before bn) read once
    # in fp16; the row's bn is a node of its own (gamma, beta, mean, variance)
    assert conv1["macs"] == 8 * 64 * 112 * 112 * 3 * 49
    assert conv1["weight_bytes"] == 2 * 64 * 3 * 49
    assert doc["totals"]["samples_per_second"] == pytest.approx(8 / batch["seconds"])
    assert batch["seconds"] == pytest.approx(sum(layer["seconds"] for layer in batch["layers"]))


def test_an_onnx_model_costs_what_its_spec_does(tmp_path):
    model = tmp_path / "lenet5.onnx"
    assert run("export", "lenet5", "-o", str(model)).exit_code == 0
    spec = roofline_json("lenet5", "--device", "l4", "--batch", "4")["phases"][0]["totals"]
    onnx = roofline_json(str(model), "--device", "l4", "--batch", "4")["phases"][0]["totals"]
    assert onnx["macs"] == spec["macs"] == 4 * 416_520  # lenet5.dlc's MACs per sample
    assert onnx["weight_bytes"] == spec["weight_bytes"] == 4 * 61_706


def test_a_device_without_the_precision_says_which_it_used():
    r = run("roofline", "llama_char", "--device", "h100-sxm", "--dtype", "int4", "--act-dtype", "int4")
    assert r.exit_code == 0, r.output
    assert "note: h100-sxm lists no int4 peak: its products are timed at its int8 peak" in r.output


def test_the_picture_puts_every_layer_on_the_roofline(tmp_path):
    png, svg = tmp_path / "r.png", tmp_path / "r.svg"
    assert run("roofline", "resnet18", "--device", "l4", "-o", str(png)).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("roofline", "llama_char", "--device", "l4", "--generate", "4", "-o", str(svg))
    assert r.exit_code == 0 and f"wrote {svg}" in r.output
    text = svg.read_text()
    assert "ridge" in text and "decode" in text and "memory bound" in text


def test_draw_colours_boxes_by_bound(tmp_path):
    from dlc.draw.style import COLOURS

    out = tmp_path / "r.svg"
    r = run("draw", "resnet18", "--device", "h100-sxm", "--batch", "8", "-o", str(out))
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert COLOURS["compute"][0] in text and COLOURS["memory"][0] in text
    assert COLOURS["conv"][0] not in text  # boxes by bound, not by what they do
    assert "red compute-bound, blue memory-bound" in text


@pytest.mark.parametrize("args, words", [
    (("lenet5",), "Missing option '--device'"),
    (("lenet5", "--device", "h1000"), "no such device; the table has h100-sxm, h100-pcie, h200"),
    (("lenet5", "--device", "l4", "--prompt", "8"), "--prompt 8: lenet5 has no causal attention"),
    (("lenet5", "--device", "l4", "--generate", "8"), "--generate 8: lenet5 has no causal attention"),
    (("llama_char", "--device", "l4", "--generate", "-1"), "--generate"),
    (("llama_char", "--device", "l4", "--prompt", "0"), "--prompt"),
    (("llama_char", "--device", "l4", "--batch", "0"), "--batch"),
    (("llama_char", "--device", "l4", "--kv-dtype", "fp64"), "--kv-dtype"),
    (("gpt2_small", "--device", "l4", "--prompt", "1000", "--generate", "100"),
     "gpt2_small learns positions (posembed1) for 1024 tokens, fewer than 1100"),
    (("lenet5", "--device", "l4", "-o", "x.txt"), "-o x.txt: the file written is .png or .svg"),
])
def test_bad_flags_are_one_line_and_exit_2(args, words):
    r = run("roofline", *args)
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output


def test_a_bad_device_file_is_named(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text("memory_gb = 16\nbandwidth_gb_s = 'fast'\n[peak_tflops]\nfp32 = 1\n")
    r = run("roofline", "lenet5", "--device", str(f))
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {f}: bandwidth_gb_s = 'fast': give a number above 0"


def test_an_onnx_model_does_not_generate(tmp_path):
    model = tmp_path / "m.onnx"
    assert run("export", "lenet5", "-o", str(model)).exit_code == 0
    r = run("roofline", str(model), "--device", "l4", "--prompt", "4")
    assert r.exit_code == 2 and "an .onnx model runs batch by batch" in r.output


def test_learned_positions_leave_room_for_the_generated_tokens():
    # gpt2_small learns 1024 positions: by default the prompt is 1024 - 128 tokens
    doc = roofline_json("gpt2_small", "--device", "l4")
    assert (doc["prompt"], doc["generate"]) == (896, 128)
    assert doc["phases"][1]["contexts"] == [897, 1024]


def test_device_local_says_it_measured_then_that_it_read_the_cache(tmp_path, monkeypatch):
    from dlc import devices

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fake = devices.Device("local", 8 * 2**30, 10e9, {"fp32": 100e9}, {"peak": "measured"}, "", 2**20, 50e9)
    monkeypatch.setattr(devices, "measure", lambda: fake)
    cache = tmp_path / "dlc" / "device-local.json"
    first = run("roofline", "lenet5", "--device", "local")
    assert first.exit_code == 0, first.output
    assert f"--device local: measured this machine (cached in {cache})" in first.output
    monkeypatch.setattr(devices, "measure", lambda: pytest.fail("measured twice"))
    second = run("roofline", "lenet5", "--device", "local", "--json")
    assert f"--device local: read the measurement cached in {cache}" in second.stderr
    doc = json.loads(second.stdout)
    # LeNet-5 touches far less than the 1 MiB cache: its bytes move at the cache's 50 GB/s
    assert doc["phases"][0]["in_cache"] and doc["phases"][0]["bandwidth"] == 50e9


def test_a_quantized_files_int8_products_run_at_the_int8_peak(tmp_path):
    """A device whose int8 peak is 8x its fp32 one and whose memory is never the bound: each int8 product of
    onnxruntime's dynamic LeNet-5 takes its FLOPs over the int8 peak, every other node over the fp32 one."""
    pytest.importorskip("onnxruntime")
    assert run("export", "lenet5", "-o", str(tmp_path / "l.onnx")).exit_code == 0
    r = run("quantize", str(tmp_path / "l.onnx"), "--int8", "-o", str(tmp_path / "q.onnx"), "--runs", "1")
    assert r.exit_code == 0, r.output
    (tmp_path / "d.toml").write_text('name = "toy"\nmemory_gb = 16\nbandwidth_gb_s = 1e12\n'
                                     '[peak_tflops]\nfp32 = 1\nint8 = 8\n')
    doc = roofline_json(str(tmp_path / "q.onnx"), "--device", str(tmp_path / "d.toml"))
    assert doc["notes"] == ["toy: products in int8 run at its int8 peak, 8.00 TFLOP/s"]
    layers = doc["phases"][0]["layers"]
    integer = [n for n in layers if n["kind"] in ("ConvInteger", "MatMulInteger")]
    assert len(integer) == 5  # LeNet-5's two convs and three fcs
    for n in layers:
        peak = 8e12 if n in integer else 1e12
        assert n["seconds"] == pytest.approx(n["flops"] / peak, rel=1e-6), n


def test_an_onnx_model_with_token_ids_costs_what_its_spec_does(tmp_path):
    """Its activations are in two types (int64 ids, float32 values): each priced in its own, the products
    at the float32 peak; the work is the spec's, and the weights read too but for the embedding, whose Gather
    an ONNX file reads whole (docs/conventions.md) where the spec reads the rows it looks up."""
    model = tmp_path / "tr.onnx"
    assert run("export", "transformer_reverse", "-o", str(model)).exit_code == 0
    spec = roofline_json("transformer_reverse", "--device", "l4")["phases"][0]["totals"]
    onnx = roofline_json(str(model), "--device", "l4")["phases"][0]["totals"]
    assert onnx["macs"] == spec["macs"]
    # embed 64 vocab=16 over 12 tokens: the file reads 16 rows of 64 float32, the spec the 12 it looks up
    assert onnx["weight_bytes"] - spec["weight_bytes"] == 4 * 64 * (16 - 12)
