"""`dlc train` on networks with several inputs (issue 22): an .npz with an array per input label, the
built-in pairs task, batches that keep each sample's inputs together, resume and infer afterwards, and
each bad file refused in one line with exit 2. specs/bert_pairs.dlc, a small BERT-style encoder,
learns the pairs task to 95% or more at its defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import load_checkpoint
from dlc.train.builtin import builtin_data
from dlc.train.catalog import InputWanted
from dlc.train.dataset import ByInput, Data, Split
from dlc.train.fit import carve_val
from dlc.train.sources import spec_inputs
from dlc.zoo import zoo_path

# The class is whether a's first value exceeds b's: learnt only when each sample's a and b stay together
# (a's rows shuffled apart from b's would leave chance, 50%).
TWO = """input 2 as a -> fc 8 as fa
input 2 as b -> fc 8
add fa
relu
fc 2 softmax
train optimizer=adam lr=0.05 batch=16 epochs=6
"""
PAIRS = [InputWanted("ids", (8,), 16), InputWanted("types", (8,), 2)]


def dlc(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def two_inputs(path: Path, n: int = 400, seed: int = 0, **extra) -> Path:
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, 2)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)
    np.savez(path, a=a, b=b, y=(a[:, 0] > b[:, 0]).astype(np.int64), **extra)
    return path


def test_the_pairs_class_says_whether_the_second_sequence_repeats_the_first():
    d = builtin_data("pairs", (8,), 2, (300, 50, 50), seed=0, inputs=tuple(PAIRS))
    x = d.train.x
    assert isinstance(x, ByInput) and list(x.arrays) == ["ids", "types"] and (len(d.val), len(d.test)) == (50, 50)
    ids, types = x.arrays["ids"], x.arrays["types"]
    assert ids.shape == types.shape == (300, 8) and ids.min() >= 0 and ids.max() < 16
    assert (types == [0, 0, 0, 0, 1, 1, 1, 1]).all()  # the segment of each token: the first four, then the second
    assert np.array_equal(d.train.y, (ids[:, :4] == ids[:, 4:]).all(axis=1))
    assert sum(int(s.y.sum()) for s in d.splits().values()) == 200  # half the 400 samples of each class
    again = builtin_data("pairs", (8,), 2, (300, 50, 50), seed=0, inputs=tuple(PAIRS))
    other = builtin_data("pairs", (8,), 2, (300, 50, 50), seed=1, inputs=tuple(PAIRS))
    assert np.array_equal(again.train.x.arrays["ids"], ids) and not np.array_equal(other.train.x.arrays["ids"], ids)


def test_a_held_out_split_takes_the_same_rows_of_every_input():
    n = np.arange(20)
    data = Data(Split(ByInput({"a": n * 1.0, "b": n * 10}), n), name="rows")
    data = carve_val(data, 0.25, seed=3)
    for split in (data.train, data.val):
        assert np.array_equal(split.x.arrays["b"], 10 * split.x.arrays["a"])
        assert np.array_equal(split.y, split.x.arrays["a"])
    assert (len(data.train), len(data.val)) == (15, 5)
    assert data.fingerprint() != carve_val(Data(Split(ByInput({"a": n * 1.0, "b": n * 10}), n)), 0.25, 4).fingerprint()


def test_spec_inputs_read_each_input_s_shape_and_vocabulary_from_the_network():
    assert spec_inputs(compile_spec(zoo_path("bert_pairs").read_text())) == tuple(PAIRS)
    assert spec_inputs(compile_spec(TWO)) == (InputWanted("a", (2,)), InputWanted("b", (2,)))


def test_an_npz_with_an_array_per_input_trains_resumes_and_infers(tmp_path):
    data = two_inputs(tmp_path / "ab.npz")
    r = dlc("train", "-e", TWO, "--data", data, "--val", "0.25", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "300 train, 100 val" in r.output
    assert log(tmp_path / "run")[-1]["val_accuracy"] > 0.9

    # three epochs, then resumed to six: the same weights as six at once
    r = dlc("train", "-e", TWO, "--data", data, "--val", "0.25", "--epochs", "3", "--out", tmp_path / "half")
    assert r.exit_code == 0, r.output
    r = dlc("train", "--resume", tmp_path / "half", "--epochs", "6")
    assert r.exit_code == 0, r.output
    whole, half = (load_checkpoint(tmp_path / d / "last.npz")[0] for d in ("run", "half"))
    for name in whole:
        assert np.array_equal(whole[name], half[name]), name

    # infer reads the inputs by label from an .npz (its y is left alone), as the run's data was given
    test = two_inputs(tmp_path / "test.npz", n=50, seed=1)
    r = dlc("infer", "-e", TWO, "--weights", tmp_path / "run" / "best.npz", "--input", test, "--engine", "numpy",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    right = np.load(tmp_path / "y.npy").argmax(axis=1) == np.load(test)["y"]
    assert right.mean() > 0.9


def test_validation_and_test_arrays_are_read_by_their_suffixes(tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 30, 2)).astype(np.float32)
    y = (a[:, 0] > b[:, 0]).astype(np.int64)
    np.savez(tmp_path / "d.npz", a=a[:20], b=b[:20], y=y[:20], a_val=a[20:25], b_val=b[20:25], y_val=y[20:25],
             a_test=a[25:], b_test=b[25:], y_test=y[25:])
    r = dlc("train", "-e", TWO, "--data", tmp_path / "d.npz", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "20 train, 5 val, 5 test" in r.output


def test_the_torch_engine_trains_several_inputs(tmp_path):
    pytest.importorskip("torch")
    r = dlc("train", "-e", TWO, "--data", two_inputs(tmp_path / "ab.npz"), "--val", "0.25", "--engine", "torch",
            "--device", "cpu", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert log(tmp_path / "run")[-1]["val_accuracy"] > 0.9


def test_a_spec_with_two_inputs_defaults_to_the_pairs_task(tmp_path):
    r = dlc("train", zoo_path("bert_pairs"), "--n-train", "64", "--n-val", "16", "--n-test", "16", "--epochs", "1",
            "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert ("data: pairs (the default for the inputs ids 8, types 8 and an output of 2; --data names another): "
            "64 train, 16 val, 16 test") in r.output


@pytest.mark.slow
def test_the_small_bert_learns_the_pairs_task_at_its_defaults(tmp_path):
    r = dlc("train", zoo_path("bert_pairs"), "--out", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs"] == 5 and doc["data"] == "pairs" and doc["test_accuracy"] >= 0.95, doc


@pytest.mark.slow
def test_the_small_bert_learns_the_pairs_task_on_torch(tmp_path):
    pytest.importorskip("torch")
    r = dlc("train", zoo_path("bert_pairs"), "--engine", "torch", "--device", "cpu", "--out", tmp_path / "run",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["test_accuracy"] >= 0.95, r.output


def bad(tmp_path, **arrays) -> str:
    np.savez(tmp_path / "bad.npz", **arrays)
    return str(tmp_path / "bad.npz")


@pytest.mark.parametrize("arrays, message", [
    ({"ids": np.zeros((4, 8), int), "y": np.zeros(4, int)}, "no array `types` for the input types"),
    ({"ids": np.zeros((4, 8), int), "types": np.zeros((4, 8), int)}, "no array `y` for the target"),
    ({"ids": np.zeros((4, 8), int), "segments": np.zeros((4, 8), int), "types": np.zeros((4, 8), int),
      "y": np.zeros(4, int)}, "holds the array `segments`, which is no input of the spec (its inputs: ids, types"),
    ({"ids": np.zeros((4, 8), int), "types": np.zeros((3, 8), int), "y": np.zeros(4, int)},
     "`types` has 3 rows, but the target has 4"),
    ({"ids": np.zeros((4, 8)), "types": np.zeros((4, 8), int), "y": np.zeros(4, int)},
     "`ids` holds float64, but the input ids is read by an embed, which takes whole token ids"),
    ({"ids": np.full((4, 8), 16), "types": np.zeros((4, 8), int), "y": np.zeros(4, int)},
     "`ids`: its token ids range over 16..16, but the embed reading ids has vocab=16"),
    ({"ids": np.zeros((4, 6), int), "types": np.zeros((4, 8), int), "y": np.zeros(4, int)},
     "`ids` holds samples of shape 6, but the input ids is 8"),
    ({"ids": np.zeros((4, 8), int), "types": np.zeros((4, 8), int), "y": np.zeros(4, int),
      "ids_val": np.zeros((2, 8), int)}, "no array `types_val` for the input types"),
])
def test_a_bad_npz_is_named_with_its_key_in_one_line(tmp_path, arrays, message):
    path = bad(tmp_path, **arrays)
    r = dlc("train", zoo_path("bert_pairs"), "--data", path, "--out", tmp_path / "run")
    assert r.exit_code == 2 and f"error: {path}: " in r.output and message in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def test_data_and_flags_for_one_input_are_refused_for_several(tmp_path):
    r = dlc("train", zoo_path("bert_pairs"), "--data", "reverse", "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert ("--data reverse: reverse data feeds one input, but the spec has 2 (ids, types); data with an array "
            "per input: pairs or .npz") in r.output
    r = dlc("train", "-e", TWO, "--data", two_inputs(tmp_path / "ab.npz"), "--normalize", "mean-std",
            "--out", tmp_path / "run")
    assert r.exit_code == 2 and "--normalize fit one input's data" in r.output, r.output
    r = dlc("train", "-e", TWO, "--data", tmp_path / "ab.npz", "--noise", "0.1", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "a network with several inputs (a, b) trains on its data as it is" in r.output, r.output
    r = dlc("train", "-e", "input 2 as y -> fc 8 as fy\ninput 2 as b -> fc 8\nadd fy\nfc 2 softmax",
            "--data", tmp_path / "ab.npz", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "the array y is the target, but the spec also has an input labelled y" in r.output
    r = dlc("train", "-e", "input seq 7 as ids -> embed 8 vocab=16 as w\ninput seq 7 as types -> embed 8 vocab=2\n"
                          "add w\nseqpool\nfc 2 softmax", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "two sequences of T/2 tokens side by side: T must be even" in r.output, r.output
    r = dlc("train", "-e", TWO, "--data", "pairs", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "the built-in task `pairs` feeds two inputs of token ids" in r.output, r.output


def test_three_inputs_have_no_default_data_but_train_on_an_npz(tmp_path):
    three = "input 2 as a -> fc 4 as fa\ninput 2 as b -> fc 4 as fb\ninput 2 as c -> fc 4\nadd fa\nadd fb\nfc 2 softmax"
    r = dlc("train", "-e", three, "--out", tmp_path / "run")
    assert r.exit_code == 2 and "no default data for a spec with 3 inputs: name it with --data" in r.output, r.output
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((3, 64, 2)).astype(np.float32)
    np.savez(tmp_path / "abc.npz", a=a, b=b, c=c, y=(a[:, 0] + b[:, 0] > c[:, 0]).astype(np.int64))
    r = dlc("train", "-e", three, "--data", tmp_path / "abc.npz", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 0 and "64 train" in r.output, r.output
