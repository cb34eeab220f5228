"""The analysis commands as a user runs them: tables, JSON, exit statuses, start-up imports."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from dlc.cli import main

ALEXNET_HEAD = "input 3@227x227\nconv 96@11x11/4 relu -> maxpool 3/2\n"


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_json_has_the_documented_fields():
    r = run("summary", "-e", ALEXNET_HEAD, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "dlc.analysis/1"
    assert doc["input"] == [3, 227, 227]
    names = [layer["name"] for layer in doc["layers"]]
    assert names == ["input", "conv1", "relu1", "maxpool1"]
    conv = doc["layers"][1]
    # Course table: AlexNet conv1 gives 96@55x55 with 96*3*11*11 + 96 = 34,944 params and
    # 96*55*55*3*11*11 = 105,415,200 MACs.
    assert conv["out_shape"] == [96, 55, 55]
    assert (conv["params"], conv["macs"]) == (34_944, 105_415_200)
    assert conv["line"] == 2 and conv["inputs"] == ["input"] and conv["kind"] == "conv"
    assert conv["receptive_field"] == [11, 11]
    pool = doc["layers"][3]
    assert pool["out_shape"] == [96, 27, 27] and pool["flops"] == 96 * 27 * 27 * 9
    assert pool["receptive_field"] == [11 + 2 * 4, 11 + 2 * 4] and pool["jump"] == [8.0, 8.0]
    totals = doc["totals"]
    for key in ("params", "non_trainable", "macs", "flops", "param_bytes", "activation_bytes", "train_bytes"):
        assert key in totals and key in doc["conventions"]
    assert totals["param_bytes"] == 4 * 34_944
    acts = 3 * 227 * 227 + 2 * 96 * 55 * 55 + 96 * 27 * 27
    assert totals["activation_bytes"] == 4 * acts
    assert totals["train_bytes"]["optimizer"] == "sgd" and totals["train_bytes"]["batch"] == 1


MIXTURE = "input seq 8 of 16\nexperts 4 top=2 {\n  fc 32 relu\n  fc 16\n}\nfc 3\n"


def test_a_mixture_adds_active_params_to_tables_and_json():
    # router 16x4, experts of 16*32+32 + 32*16+16 = 1,072, head 16*3+3: all 4 experts in params, 2 active
    doc = json.loads(run("summary", "-e", MIXTURE, "--json").output)
    assert (doc["totals"]["params"], doc["totals"]["active_params"]) == (4_403, 2_259)
    assert "active_params" in doc["conventions"]
    by_name = {layer["name"]: layer for layer in doc["layers"]}
    assert by_name["experts1.expert3.fc1"]["params"] == 544 and by_name["experts1.expert3.fc1"]["active_params"] == 0
    assert by_name["experts1.expert3.fc1"]["macs"] == 0 and by_name["experts1.expert2.fc1"]["macs"] == 8 * 16 * 32
    for view in ("summary", "params"):
        table = run(view, "-e", MIXTURE).output
        assert "active" in table.splitlines()[2]
        assert "experts 4 top=2 {…}" in table and "4,352   2,208" in table
        assert "active params: 2,259 of 4,403" in table


def test_without_a_mixture_nothing_says_active():
    doc = json.loads(run("summary", "-e", ALEXNET_HEAD, "--json").output)
    assert "active_params" not in doc["totals"] and "active_params" not in doc["conventions"]
    assert all("active_params" not in layer for layer in doc["layers"])
    assert "active" not in run("summary", "-e", ALEXNET_HEAD).output


def test_batch_and_optimizer_scale_costs_and_training_memory():
    one = json.loads(run("flops", "-e", ALEXNET_HEAD, "--json").output)["totals"]
    r = run("summary", "-e", ALEXNET_HEAD, "--json", "--batch", "8", "--optimizer", "adam")
    eight = json.loads(r.output)["totals"]
    assert eight["macs"] == 8 * one["macs"] and eight["flops"] == 8 * one["flops"]
    p, acts = 34_944, one["activation_bytes"]
    # parameters + gradients + two adam slots + batch x activations
    assert eight["train_bytes"]["bytes"] == 4 * p + 4 * p + 2 * 4 * p + 8 * acts


def test_table_folds_suffix_layers_and_all_unfolds_them():
    folded = run("summary", "-e", ALEXNET_HEAD)
    assert folded.exit_code == 0
    assert "conv 96@11x11/4 relu" in folded.output and "relu1" not in folded.output
    assert "34,944" in folded.output and "105.42 M" in folded.output
    assert "96@55x55" in folded.output and "96@27x27" in folded.output
    every = run("summary", "-e", ALEXNET_HEAD, "--all")
    assert "relu1" in every.output


def test_from_column_shows_where_branches_merge():
    spec = "input 8@8x8\nconv 8@3x3 pad=1 as a\nconv 8@3x3 pad=1\nadd a\n"
    r = run("shapes", "-e", spec)
    assert r.exit_code == 0, r.output
    line = next(l for l in r.output.splitlines() if l.lstrip().startswith("add"))
    assert "conv1" in line and "conv2" in line


def test_spec_error_exits_2_with_a_located_message_and_no_traceback():
    r = run("params", "-e", "input 3@32x32\nconv 16@3x3 relu\nfc 10 sofmax\n")
    assert r.exit_code == 2
    assert "<expr>:3:" in r.output and "softmax" in r.output
    assert "Traceback" not in r.output


def test_missing_file_and_unknown_zoo_name_are_errors_not_tracebacks(tmp_path):
    r = run("check", str(tmp_path / "nope.dlc"))
    assert r.exit_code == 2 and "no such file" in r.output
    r = run("check", "resnet5O")
    assert r.exit_code == 2 and "resnet50" in r.output  # did you mean


def test_stdin_and_check():
    r = run("check", "-", input="input 2 -> fc 2 sigmoid -> fc 1 sigmoid\n")
    assert r.exit_code == 0 and "ok" in r.output and "9 params" in r.output  # (2*2+2) + (2*1+1)


def test_zoo_lists_specs_and_names_resolve():
    r = run("zoo", "--json")
    names = {e["name"] for e in json.loads(r.output)}
    assert {"alexnet", "resnet50", "lenet5", "xor"} <= names
    r = run("params", "alexnet", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["input"] == [3, 227, 227]


def test_analysis_path_imports_neither_numpy_nor_onnx_nor_matplotlib_nor_torch(tmp_path):
    drawn = tmp_path / "resnet50.svg"
    code = (
        "import sys\n"
        "from dlc.cli import main\n"
        f"for args in (['shapes'], ['params'], ['flops'], ['summary'], ['check'], ['draw', '-o', {str(drawn)!r}],\n"
        "             ['roofline', '--device', 'h100-sxm'], ['summary', '--device', 'l4']):\n"
        "    try:\n"
        "        main([args[0], 'resnet50', *args[1:]], standalone_mode=False)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'onnx', 'onnxruntime', 'matplotlib', 'torch'))\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert drawn.exists()


def test_llama_attention_summary_and_its_refusals():
    # Llama-3-8B's attention at 2048 tokens: 41,943,040 params; a sliding window is counted in full
    spec = "input seq 2048 of 4096\nattention 32 kv=8 rope=500000 causal window=4096 bias=off"
    r = run("summary", "-e", spec)
    assert r.exit_code == 0, r.output
    assert "41,943,040" in r.output and "causal and sliding-window attention counted in full" in r.output
    for bad, said in (("kv=3", "kv=3"), ("rope=0", "rope=0"), ("window=0", "window"), ("kv=0", "kv")):
        r = run("summary", "-e", f"input seq 8 of 16\nattention 4 causal {bad}")
        assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output


def test_dtype_prices_llama3_8b_params_in_bf16():
    r = run("params", "llama3_8b", "--dtype", "bf16", "--json")
    doc = json.loads(r.output)
    assert doc["totals"]["param_bytes"] == 8_030_261_248 * 2
    assert doc["dtype"]["bytes_per_value"] == {"weights": 2, "activations": 2}
    # 16,060,522,496 bytes / 2**30 = 14.957 GiB
    assert "= 8,030,261,248 (14.96 GiB as bf16)" in run("params", "llama3_8b", "--dtype", "bf16").output


def test_dtype_int4_packs_two_values_a_byte_and_rounds_up_per_node():
    # LeNet-5's layers: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 params, even per layer: 30,853 bytes.
    # Its outputs: 1,024 + 4,704 x 2 + 1,176 + 1,600 x 2 + 400 x 2 + 120 x 2 + 84 x 2 + 10 x 2 = 16,036
    # values, 8,018 bytes; with adam, train = 30,853 x 4 + 8,018.
    doc = json.loads(run("summary", "lenet5", "--dtype", "int4", "--optimizer", "adam", "--json").output)
    t = doc["totals"]
    assert (t["param_bytes"], t["activation_bytes"]) == (30_853, 8_018)
    assert t["train_bytes"]["bytes"] == 30_853 * 4 + 8_018
    assert t["engine_train_bytes"] is None  # the NumPy engine computes in float32 only
    # An odd count rounds up a whole byte per node: fc 1 on 2 inputs has 3 params -> 2 bytes, and the
    # input's 2 values and the output's 1 value take 1 byte each; activations in int8 on request.
    doc = json.loads(run("summary", "-e", "input 2\nfc 1\n", "--dtype", "int4", "--act-dtype", "int8",
                         "--json").output)
    assert (doc["totals"]["param_bytes"], doc["totals"]["activation_bytes"]) == (2, 3)


def test_dtype_default_is_float32_and_bad_values_are_refused():
    default = json.loads(run("summary", "lenet5", "--json").output)
    assert default["dtype"]["weights"] == "fp32" and default["totals"]["param_bytes"] == 4 * 61_706
    r = run("summary", "lenet5", "--dtype", "int3")
    assert r.exit_code == 2 and "Traceback" not in r.output and "'int3' is not one of" in r.output
