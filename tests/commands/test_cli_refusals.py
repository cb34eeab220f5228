"""Bad flag values, sizes that cannot be allocated, tampered checkpoints, non-finite outputs and the
--json error document (issue 9): each is one `error:` line and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlc import machine
from dlc.analysis import analyse
from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import META_KEY, init_params, save_checkpoint
from dlc.report import table

CLASSIFIER = "input 4 -> fc 3 softmax"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    assert run("export", "-e", CLASSIFIER, "-o", path).exit_code == 0
    return path


# --- flags -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, said", [
    (("export", "-e", CLASSIFIER, "-o", "m.onnx", "--seed", -1), "Invalid value for '--seed': -1 is not in the range"),
    (("infer", "{model}", "--random", 2, "--seed", -1), "Invalid value for '--seed': -1"),
    (("shapes", "-e", CLASSIFIER, "--batch", 0), "Invalid value for '--batch': 0 is not in the range x>=1"),
    (("export", "-e", CLASSIFIER), "Missing option '-o'"),
    (("check", "-e", CLASSIFIER, "--bogus"), "No such option"),
    (("train", "-e", CLASSIFIER, "--threads", 0), "'0' is neither auto nor a whole number of threads"),
    (("train", "-e", CLASSIFIER, "--threads", "some"), "'some' is neither auto nor a whole number of threads"),
    (("train", "-e", CLASSIFIER, "--threads", 2, "--engine", "torch"), "--threads 2 sets the NumPy engine's BLAS"),
])
def test_flag_values_out_of_range_are_one_error_line_not_a_usage_block(args, said, model):
    r = run(*[str(a).format(model=model) for a in args])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and said in r.stderr and "Usage:" not in r.output


def test_opset_states_its_range_in_help():
    assert "ONNX opset, 13 to 23" in " ".join(run("export", "--help").output.split())


# --- --json failures -------------------------------------------------------------------------------

def test_a_failing_json_command_prints_the_error_as_json_on_stdout(model):
    r = run("check", "--json", "-e", "input 4\nfc x")
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert (err["file"], err["line"], err["col"]) == ("<expr>", 2, 5)
    assert err["message"].startswith("expected a repeat count after `x`")
    r = run("infer", model, "--json")  # no input given: not about a place in a spec
    assert r.exit_code == 2
    assert json.loads(r.stdout) == {"error": {"message": "give the input: --input X.npy (or .npz) or --random N",
                                              "file": None, "line": None, "col": None}}
    r = run("shapes", "--json", "-e", CLASSIFIER, "--batch", 0)
    assert r.exit_code == 2 and "--batch" in json.loads(r.stdout)["error"]["message"]
    assert run("check", "-e", "input 4\nfc x").stdout == ""  # without --json, stdout stays empty


# --- sizes -----------------------------------------------------------------------------------------

@pytest.fixture
def one_gib(monkeypatch):
    monkeypatch.setattr(machine, "available_bytes", lambda: 2**30)


def test_infer_refuses_a_batch_that_cannot_fit(model, one_gib):
    # per sample: input 4 + output 3 + largest tensor 4 values (x 4 bytes) = 44; the float64 draw of
    # --random 4 x 8 = 32; top-k's float64 copies and sort of the output 3 x 32 = 96: 172 bytes.
    # 10^8 x 172 + 15 weights x 4 = 17,200,000,060 bytes = 16.02 GiB
    r = run("infer", model, "--random", 10**8)
    assert r.exit_code == 2
    assert "infer --random 100000000 needs at least 16.02 GiB of memory; 1.00 GiB is available" in r.stderr


def test_bench_refuses_a_batch_that_cannot_fit(model, one_gib):
    # 44 bytes of forward pass + 32 of the float64 random batch per sample: 7.6e9 + 60 bytes = 7.08 GiB
    r = run("bench", model, "--batch", f"1,{10**8}")
    assert r.exit_code == 2 and "bench --batch 100000000 needs at least 7.08 GiB" in r.stderr


def test_export_refuses_weights_that_cannot_fit_in_memory():
    # 10^6 x 10^6 weights + 10^6 biases, 4 bytes each: 4,000,004,000,000 bytes = 3.64 TiB, held twice
    # (the arrays and the model's copy): 7.28 TiB
    r = run("export", "-e", "input 1000000 -> fc 1000000", "-o", "big.onnx")
    assert r.exit_code == 2 and "export needs at least 7.28 TiB of memory" in r.stderr


def test_a_spec_file_without_end_is_refused_without_reading_it_all():
    r = run("check", "/dev/zero")
    assert r.exit_code == 2 and r.stderr == "error: /dev/zero is longer than 1 MiB; a spec is text of a few kilobytes\n"


# --- non-finite outputs ----------------------------------------------------------------------------

@pytest.fixture
def nan_input(tmp_path):
    x = np.ones((2, 4), np.float32)
    x[1, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


def test_infer_json_writes_null_for_nan(tmp_path, nan_input, model):
    r = run("infer", model, "--input", nan_input, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # strict JSON: a bare NaN would not parse in most readers
    assert all(e["p"] is None for e in doc["top"][1]) and all(e["p"] is not None for e in doc["top"][0])
    assert "NaN" not in r.stdout
    assert run("export", "-e", "input 4 -> fc 1", "-o", tmp_path / "r.onnx").exit_code == 0
    r = run("infer", tmp_path / "r.onnx", "--input", nan_input, "--json")
    assert json.loads(r.stdout)["output"][1] == [None]


def test_infer_warns_of_non_finite_outputs_without_json_too(nan_input, model):
    r = run("infer", model, "--input", nan_input)
    assert r.exit_code == 0
    assert "warning: 3 of 6 output values are not finite (NaN or infinite)" in r.stderr


@pytest.mark.parametrize("engine", ["onnxruntime", "numpy"])
def test_infer_says_which_input_values_overflow_and_numpy_says_nothing(tmp_path, model, engine):
    # float64 values past float32's largest (3.4e38) become infinite when the model reads float32; dlc
    # says so once, in its own words, and numpy's RuntimeWarnings (overflow in the cast, inf - inf in
    # the softmax of the top classes) do not reach the user
    x = np.ones((2, 4))
    x[1, 2] = 1e300
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run("infer", model, "--input", tmp_path / "x.npy", "--engine", engine)
    assert r.exit_code == 0 and r.exception is None, r.output
    assert f"dlc: warning: {tmp_path / 'x.npy'}: 1 of 8 values lie beyond float32's range (largest 3.403e+38) and " \
           f"become infinite" in r.stderr


def test_the_numpy_engine_runs_on_the_cpu_not_on_numpy(model):
    r = run("infer", model, "--random", 1, "--engine", "numpy")
    assert r.exit_code == 0 and r.stdout.startswith("numpy on the CPU, ")


# --- tampered checkpoints --------------------------------------------------------------------------

def tampered(path, change):
    params, state = init_params(compile_spec(CLASSIFIER))
    save_checkpoint(path, params, state)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)
    return path


def set_meta(**fields):
    def change(arrays):
        meta = json.loads(str(arrays[META_KEY]))
        meta.update(fields)
        arrays[META_KEY] = np.array(json.dumps(meta))
    return change


def nan_weight(arrays):
    arrays["fc1.W"] = arrays["fc1.W"].copy()
    arrays["fc1.W"][0, 0] = np.nan


@pytest.mark.parametrize("change, said", [
    (lambda a: a.update({"fc1.b": np.array(["a", "b", "c"])}), "tensor fc1.b holds <U1 values, not floating-point"),
    (nan_weight, "tensor fc1.W holds 1 NaN or infinite value (of 12)"),
    (set_meta(state_tensors=5), "its metadata's `state_tensors` is not a list of tensor names"),
    (set_meta(normalize="mean"), "its metadata's `normalize` is not an object with a `kind`"),
    (set_meta(normalize={"kind": "mean-std", "mean": ["x"], "std": 1}), "`normalize.mean` is not a finite number"),
    (set_meta(spec=5), "its metadata's `spec` is not text"),
    (lambda a: a.update({META_KEY: np.array("[" * 100_000 + "]" * 100_000)}), "is not a dlc checkpoint"),
])
def test_a_tampered_checkpoint_is_refused_by_infer_and_export_alike(tmp_path, change, said):
    ckpt = tampered(tmp_path / "c.npz", change)
    for args in (("infer", "-e", CLASSIFIER, "--weights", ckpt, "--random", 1),
                 ("export", "-e", CLASSIFIER, "--weights", ckpt, "-o", tmp_path / "m.onnx")):
        r = run(*args)
        assert r.exit_code == 2 and said in r.stderr and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "m.onnx").exists()


def npz_member(path, header: str, data: bytes, header_length: int | None = None, compress: bool = False) -> Path:
    """An .npz of one member, W.npy, in the .npy 2.0 layout: magic, version, a 4-byte header length
    (header_length, or the header's true one), the header, the data."""
    length = len(header) if header_length is None else header_length
    body = b"\x93NUMPY\x02\x00" + length.to_bytes(4, "little") + header.encode("latin1") + data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("W.npy", body)
    return path


@pytest.mark.parametrize("make, said", [
    # 59 + 5,000,000 + 1 bytes of header deflated to a few kB: numpy reads all of it before its bound applies
    (lambda p: npz_member(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + " " * 5_000_000 + "\n",
                          b"\0" * 48, compress=True),
     "c.npz, array W.npy: a header of 5,000,060 bytes, past numpy's bound of 10,000"),
    (lambda p: npz_member(p, "{", b"", header_length=2**32 - 1), "W.npy: a header of 4,294,967,295 bytes"),
    # a 100-byte member asking for 10^12 float32 values: numpy would allocate 3.64 TiB before reading
    (lambda p: npz_member(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }\n", b"\0" * 8),
     "W.npy: the header declares 4,000,000,000,000 bytes of float32 (1000000000000,), the file holds 8"),
])
def test_a_hostile_npz_is_refused_before_numpy_reads_or_allocates(tmp_path, make, said, model):
    arrays = make(tmp_path / "c.npz")
    r = run("export", "-e", CLASSIFIER, "--weights", arrays, "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2 and said in r.stderr and r.stderr.count("\n") == 1, r.output
    assert not (tmp_path / "m.onnx").exists()
    r = run("infer", model, "--input", arrays)  # an input is read the same way
    assert r.exit_code == 2 and said in r.stderr.splitlines()[-1] and "Traceback" not in r.output, r.output


def test_a_hostile_npy_input_is_refused_before_numpy_allocates(tmp_path, model):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }\n"
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8)
    r = run("infer", model, "--input", tmp_path / "x.npy")
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == (
        f"error: {tmp_path / 'x.npy'}: the header declares 400,000,000,000 bytes of float32 (100000000000,), "
        f"the file holds 8; it is damaged"), r.stderr


def test_weights_that_are_not_a_regular_file_are_refused_before_opening(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it would wait for a writer
    r = subprocess.run([sys.executable, "-m", "dlc", "export", "-e", CLASSIFIER, "--weights", tmp_path / "fifo",
                        "-o", tmp_path / "m.onnx"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'fifo'} is not a regular file, so not a checkpoint\n"


# --- a very wide merge -----------------------------------------------------------------------------

def test_a_merge_of_ten_thousand_branches_prints_a_bounded_table():
    graph = compile_spec("input 4\nadd(" + " | ".join(["relu"] * 10_000) + ")")
    lines = table(analyse(graph), "summary").splitlines()
    assert len(lines) == 10_002 + 3  # a header, two rules and one row per node
    assert max(len(line) for line in lines) < 250  # every row was padded to 69,000 characters
    add = next(line for line in lines if line.startswith("add1"))
    assert "relu1, relu2, relu3, … +9,997 more" in add and "add(relu | relu" in add


@pytest.mark.parametrize("values, dtype", [(np.ones((2, 4), np.complex64), "complex64"),
                                           (np.full((2, 4), "a"), "<U1")])
def test_infer_refuses_input_that_is_not_real_numbers(tmp_path, model, values, dtype):
    np.save(tmp_path / "x.npy", values)
    r = run("infer", model, "--input", tmp_path / "x.npy")
    assert r.exit_code == 2 and f"holds {dtype} values; a network reads real numbers or token ids" in r.stderr
