"""`dlc export`, `dlc infer` and `dlc bench` as a user runs them, on this GPU-less machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import init_params, save_checkpoint
from dlc.engine.run import forward, predict
from dlc.errors import DlcError
from dlc.graph import Network

LENET = """input 1@32x32
conv 6@5x5 tanh -> avgpool 2/2
conv 16@5x5 tanh -> avgpool 2/2
flatten
fc 120 tanh -> fc 84 tanh -> fc 10 softmax
"""
SMALL = "input 2@6x6\nconv 3@3x3 bn relu\nfc 4 softmax\n"
LOGITS = "input 5 -> fc 4"  # a classifier without its softmax


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    path = tmp_path_factory.mktemp("lenet") / "lenet.onnx"
    r = run("export", "-e", LENET, "-o", path)
    assert r.exit_code == 0, r.output
    return path


def cuda_can_run() -> bool:
    return "CUDAExecutionProvider" in ort.InferenceSession(
        _tiny_model_bytes(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]).get_providers()


def _tiny_model_bytes() -> bytes:
    from dlc.onnx.export import to_onnx

    graph = compile_spec("input 2 -> relu")
    return to_onnx(Network(graph, {}, {})).SerializeToString()


def test_export_prints_the_summary_and_writes_a_loadable_model(lenet):
    r = run("export", "-e", LENET, "-o", lenet.parent / "again.onnx", "--seed", 3)
    assert r.exit_code == 0, r.output
    # LeNet-5: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 params, no bn statistics
    assert "61,706 params + 0 non-trainable" in r.output and "seed 3" in r.output
    assert "opset 13, IR 7" in r.output and "batch N" in r.output
    sess = ort.InferenceSession(str(lenet.parent / "again.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["N", 1, 32, 32]
    assert not [f for f in os.listdir(lenet.parent) if f.endswith(".tmp")]  # atomic write leaves nothing behind


def test_export_fixed_batch_and_opset(tmp_path):
    r = run("export", "-e", SMALL, "-o", tmp_path / "m.onnx", "--batch", 4, "--opset", 17)
    assert r.exit_code == 0, r.output
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [4, 2, 6, 6]
    assert "opset 17" in r.output


def test_infer_top_k_on_the_cpu(lenet):
    r = run("infer", lenet, "--random", 3, "--top", 2, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["provider"] == "CPUExecutionProvider" and doc["output_shape"] == [3, 10]
    assert len(doc["top"]) == 3 and all(len(row) == 2 for row in doc["top"])
    for row in doc["top"]:
        assert row[0]["p"] >= row[1]["p"] > 0 and row[0]["p"] + row[1]["p"] <= 1 + 1e-6
    assert not r.stderr  # --device cpu asks for no CUDA, so there is nothing to explain


def test_infer_engines_agree_on_an_exported_model(lenet, tmp_path):
    x = np.random.default_rng(5).standard_normal((4, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for engine in ("onnxruntime", "numpy"):
        out = tmp_path / f"{engine}.npy"
        r = run("infer", lenet, "--input", tmp_path / "x.npy", "--engine", engine, "--out", out, "--device", "cpu")
        assert r.exit_code == 0, r.output
        outs[engine] = np.load(out)
    assert outs["numpy"].shape == (4, 10)
    assert np.abs(outs["numpy"] - outs["onnxruntime"]).max() < 1e-5


def test_a_single_sample_is_a_batch_of_one(lenet, tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((1, 32, 32), np.float32))
    r = run("infer", lenet, "--input", tmp_path / "one.npy", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input_shape"] == [1, 1, 32, 32]


def test_infer_applies_softmax_to_logits(tmp_path):
    graph = compile_spec(LOGITS)
    params, state = init_params(graph, seed=2)
    save_checkpoint(tmp_path / "w.npz", params, state)
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("infer", "-e", LOGITS, "--weights", tmp_path / "w.npz", "--input", tmp_path / "x.npy", "--top", 4,
            "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    name = next(k for k in params if k.endswith(".W"))
    logits = x @ params[name].T + params[name.replace(".W", ".b")]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for i, row in enumerate(json.loads(r.stdout)["top"]):
        assert [c["class"] for c in row] == list(np.argsort(-p[i]))
        assert np.allclose([c["p"] for c in row], np.sort(p[i])[::-1], atol=1e-5)


def test_bench_reports_percentiles_and_the_provider_that_ran(lenet):
    r = run("bench", lenet, "--batch", "1,2", "--warmup", 1, "--runs", 3, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["provider"] == "CPUExecutionProvider"
    assert [x["batch"] for x in doc["results"]] == [1, 2]
    for x in doc["results"]:
        assert 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"]
        assert x["samples_per_s"] == pytest.approx(x["batch"] / (x["p50_ms"] / 1e3))
    r = run("bench", "-e", "input seq 4 -> embed 3 vocab=5 -> gru 2", "--batch", "2", "--runs", 2, "--warmup", 0)
    assert r.exit_code == 0, r.output
    assert "provider: CPUExecutionProvider" in r.stdout


def dlc_with_gpu_driver(present: bool, *args) -> subprocess.CompletedProcess:
    """`python -m dlc ARGS` in a fresh process whose GPU-driver probe answers `present`, whatever this
    machine holds. Fresh, because its whole stderr is what a user sees: onnxruntime's C++ logger writes
    to file descriptor 2 itself, and libraries another test loaded (torch's) change what CUDA misses."""
    code = ("import sys\nfrom dlc.onnx import runtime\n"
            f"runtime.gpu_driver = lambda: {present}\n"
            "from dlc.cli import main\nsys.argv[0] = 'dlc'\nmain()\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


def test_auto_on_a_machine_without_a_gpu_runs_on_the_cpu_and_says_nothing(lenet):
    # a laptop: no GPU, no driver; the CPU is the only device there is, so there is nothing to tell
    r = dlc_with_gpu_driver(False, "infer", lenet, "--random", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["provider"] == "CPUExecutionProvider" and doc["notice"] is None
    assert r.stderr == ""
    r = dlc_with_gpu_driver(False, "bench", lenet, "--batch", "1", "--runs", "1", "--warmup", "0")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_auto_with_a_gpu_but_no_cuda_falls_back_to_the_cpu_with_a_one_line_notice(lenet):
    if cuda_can_run():
        pytest.skip("this machine runs CUDA")
    # a driver is there, so CUDA is tried; whichever library it misses here, the user reads one line
    r = dlc_with_gpu_driver(True, "infer", lenet, "--random", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["provider"] == "CPUExecutionProvider"
    assert r.stderr == f"dlc: {doc['notice']}\n"
    assert re.fullmatch(r"CUDA unavailable: .+; running on the CPU", doc["notice"]), doc["notice"]


def test_a_missing_input_file_is_said_before_any_device_is_tried(lenet):
    r = dlc_with_gpu_driver(True, "infer", lenet, "--input", "nowhere.npy")
    assert r.returncode == 2 and r.stderr == "error: no such file: nowhere.npy\n", r.stderr


def test_device_cuda_where_cuda_cannot_run_exits_2(lenet):
    if cuda_can_run():
        pytest.skip("this machine runs CUDA")
    for cmd in (("infer", lenet, "--random", 1), ("bench", lenet, "--runs", 1)):
        r = run(*cmd, "--device", "cuda")
        assert r.exit_code == 2 and "--device cuda" in r.stderr and "Traceback" not in r.output


def test_trained_checkpoint_exports_to_the_same_predictions(tmp_path):
    """A few SGD steps (so bn's running statistics and every weight moved), normalisation in the
    checkpoint's meta; `dlc infer` on the exported model and the NumPy engine predict alike."""
    from dlc.engine.run import loss_and_grads

    graph = compile_spec(SMALL)
    params, state = init_params(graph, seed=0)
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 255, (16, 2, 6, 6)).astype(np.float32)
    mean, std = [100.0, 140.0], [60.0, 50.0]
    x = (raw - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    y = rng.integers(0, 4, 16)
    before = {k: v.copy() for k, v in {**params, **state}.items()}
    for _ in range(5):
        _, _, grads = loss_and_grads(Network(graph, params, state), x, y, "xent", rng=rng)
        for k, g in grads.items():
            params[k] -= 0.1 * g
    assert all(not np.array_equal(before[k], v) for k, v in {**params, **state}.items())
    ckpt = tmp_path / "trained.npz"
    save_checkpoint(ckpt, params, state, meta={"normalize": {"kind": "mean-std", "mean": mean, "std": std}})
    r = run("export", "-e", SMALL, "--weights", ckpt, "-o", tmp_path / "trained.onnx")
    assert r.exit_code == 0, r.output
    assert "mean-std" in r.output
    np.save(tmp_path / "raw.npy", raw)
    want = predict(Network(graph, params, state), x)
    for args in (("infer", tmp_path / "trained.onnx"), ("infer", "-e", SMALL, "--weights", ckpt, "--engine", "numpy"),
                 ("infer", "-e", SMALL, "--weights", ckpt)):
        r = run(*args, "--input", tmp_path / "raw.npy", "--out", tmp_path / "y.npy", "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "normalised (mean-std)" in r.stdout
        got = np.load(tmp_path / "y.npy")
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_infer_reads_token_ids_from_an_npz(tmp_path):
    spec = "input seq 5 -> embed 3 vocab=7 -> lstm 2 -> fc 3 softmax"
    graph = compile_spec(spec)
    params, state = init_params(graph, seed=4)
    save_checkpoint(tmp_path / "w.npz", params, state)
    x = np.random.default_rng(0).integers(0, 7, (3, 5))
    np.savez(tmp_path / "x.npz", x=x, y=np.zeros(3))
    r = run("infer", "-e", spec, "--weights", tmp_path / "w.npz", "--input", tmp_path / "x.npz", "--json",
            "--out", tmp_path / "y.npy", "--device", "cpu")
    assert r.exit_code == 0, r.output
    want, _ = forward(Network(graph, params, state), x)
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() < 1e-5
    np.save(tmp_path / "bad.npy", np.array([[0, 1, 2, 3, 7]]))
    r = run("infer", "-e", spec, "--weights", tmp_path / "w.npz", "--input", tmp_path / "bad.npy")
    assert r.exit_code == 2 and "0..6" in r.stderr


@pytest.mark.parametrize("args, message", [
    (("infer", "nowhere.onnx", "--random", 1), "no such file: nowhere.onnx"),
    (("infer", "{corrupt}", "--random", 1), "is not an ONNX model"),
    (("infer", "{lenet}", "--input", "{wrong_shape}"), r"expects \(N, 1, 32, 32\)"),
    (("infer", "{lenet}", "--input", "{wrong_dtype}"), r"int64.*\(N, 1, 32, 32\)"),
    (("infer", "{lenet}", "--input", "nowhere.npy"), "no such file: nowhere.npy"),
    (("infer", "{lenet}", "--input", "{lenet}"), "is not a NumPy .npy or .npz file"),
    (("infer", "{lenet}"), "--input X.npy"),
    (("infer", "{lenet}", "--random", 1, "--weights", "{ckpt}"), "carries its own weights"),
    (("infer", "-e", LENET, "--random", 1), "--weights"),
    (("infer", "-e", LENET.replace("fc 84", "fc 80"), "--weights", "{ckpt}", "--random", 1), "fc"),
    (("infer", "{lenet}", "--random", 1, "--engine", "numpy", "--device", "cuda"), "numpy engine"),
    (("export", "-e", LENET, "-o", "{tmp}/m.onnx", "--opset", 5), "opset 5"),
    (("export", "-e", LENET, "-o", "{tmp}/no/such/dir/m.onnx"), "no folder"),
    (("export", "-e", LENET.replace("fc 84", "fc 80"), "--weights", "{ckpt}", "-o", "{tmp}/m.onnx"), "fc"),
    (("bench", "{fixed}", "--batch", "2"), "batch 1"),
])
def test_bad_input_is_a_message_and_exit_2(args, message, lenet, tmp_path):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage that is no protobuf" * 10)
    np.save(tmp_path / "wrong_shape.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "wrong_dtype.npy", np.zeros((2, 1, 32, 32), np.int64))
    graph = compile_spec(LENET)
    save_checkpoint(tmp_path / "ckpt.npz", *init_params(graph))
    assert run("export", "-e", "input 3 -> fc 2", "-o", tmp_path / "fixed.onnx", "--batch", 1).exit_code == 0
    names = {"lenet": lenet, "corrupt": tmp_path / "corrupt.onnx", "wrong_shape": tmp_path / "wrong_shape.npy",
             "wrong_dtype": tmp_path / "wrong_dtype.npy", "ckpt": tmp_path / "ckpt.npz", "tmp": tmp_path,
             "fixed": tmp_path / "fixed.onnx"}
    r = run(*[str(a).format(**names) if "{" in str(a) and "->" not in str(a) else a for a in args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and re.search(message, r.stderr), r.stderr


def test_checkpoint_mismatch_names_the_first_layer_that_differs(tmp_path):
    save_checkpoint(tmp_path / "c.npz", *init_params(compile_spec(LENET)))
    other = LENET.replace("fc 84", "fc 80")
    graph = compile_spec(other)
    first = next(n for n in graph.nodes if n.kind == "fc" and n.attrs["units"] == 80)
    r = run("export", "-e", other, "--weights", tmp_path / "c.npz", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2 and first.name in r.stderr


def test_commands_start_without_numpy_or_onnx():
    code = "import sys, dlc.cli; print(sorted({'numpy', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_fallback_reason_is_read_from_onnxruntimes_log():
    from dlc.onnx.runtime import cuda_failure

    linux = ("[E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] ... Failed to load library "
             "/x/libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file: "
             "No such file or directory")
    assert cuda_failure(linux).startswith("libcudnn.so.9,")
    assert cuda_failure("CUDA failure 100: no CUDA-capable device is detected ; GPU=0") == \
        "no CUDA-capable device is detected"
    assert cuda_failure("") == "onnxruntime could not create its CUDA provider"


def test_a_session_leaves_onnxruntimes_process_wide_logger_at_its_default(monkeypatch):
    from dlc.onnx import runtime

    levels = []
    monkeypatch.setattr(runtime.ort, "set_default_logger_severity", levels.append)
    runtime.create_session(_tiny_model_bytes(), "cpu")
    with pytest.raises(DlcError):
        runtime.create_session(b"not a model", "cpu")
    # onnxruntime's documented default is 2 (warning); quieted to 3 (error) only while a session loads
    assert levels == [3, 2, 3, 2]
