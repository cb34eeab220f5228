"""Training with a class at every step: the built-in reverse/sort/copy tasks sized from the spec, the
per-step accuracy, and the small encoder of the zoo learning to reverse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.errors import DlcError
from dlc.train.builtin import builtin_data
from dlc.train.scoring import count_correct, predictions
from dlc.train.sources import DataSource, prepare

SEQ = "input seq 6 -> embed 8 vocab=5 -> attention 2 -> fc 5 softmax"


@pytest.mark.parametrize("task, target", [
    ("reverse", lambda row: row[::-1]),
    ("sort", sorted),
    ("copy", lambda row: row),
])
def test_sequence_tasks_take_length_and_vocabulary_from_the_spec(task, target):
    data = builtin_data(task, (6,), 5, (40, 10, 10), seed=3, vocab=5)
    assert data.train.x.shape == (40, 6) and data.val.x.shape == (10, 6) and data.test.y.shape == (10, 6)
    for split in data.splits().values():
        assert split.x.dtype == np.int64 and split.y.dtype == np.int64
        assert split.x.min() >= 0 and split.x.max() <= 4
        for row, want in zip(split.x.tolist(), split.y.tolist()):
            assert want == list(target(row))
    again = builtin_data(task, (6,), 5, (40, 10, 10), seed=3, vocab=5)
    assert np.array_equal(again.train.x, data.train.x)
    assert not np.array_equal(builtin_data(task, (6,), 5, (40, 10, 10), seed=4, vocab=5).train.x, data.train.x)


def test_the_default_sizes_are_8000_1000_1000():
    data = builtin_data("reverse", (12,), 16, vocab=16)
    assert [len(s) for s in data.splits().values()] == [8000, 1000, 1000]
    assert set(np.unique(data.train.x)) == set(range(16))


def test_sequence_tasks_refuse_specs_they_do_not_fit():
    with pytest.raises(DlcError, match="reads token ids"):
        builtin_data("reverse", (6, 4), 5, (4, 0, 0))
    with pytest.raises(DlcError, match="16 tokens .* 10 classes per step"):
        builtin_data("sort", (6,), 10, (4, 0, 0), vocab=16)
    # an output of 7 steps (after a clstoken, say) cannot take one label per input step
    with pytest.raises(DlcError, match="each of 7 steps"):
        prepare(DataSource("copy", builtin=True, sizes=(4, 0, 0)), (6,), 5, tokens=True, steps=7, vocab=5)


def test_accuracy_counts_every_step_as_one_prediction():
    # two samples of three steps over four classes; the argmax per step is 0,1,2 and 3,3,3
    out = np.zeros((2, 3, 4), np.float32)
    out[0, [0, 1, 2], [0, 1, 2]] = 1
    out[1, :, 3] = 1
    y = np.array([[0, 1, 3], [3, 0, 3]])  # right: 2 of 3, then 2 of 3
    top1, _ = count_correct(out, y, 4)
    assert (top1, predictions(out)) == (4, 6)
    # six classes: top-5 misses only a label that is the least likely at its step
    out6 = np.tile(np.arange(6, dtype=np.float32), (1, 2, 1))  # class 0 least likely at both steps
    assert count_correct(out6, np.array([[0, 5]]), 6) == (1, 1)


def test_tied_scores_rank_as_a_stable_sort_does():
    # a saturated softmax gives many exact zeros: a label tied with others ranks after the tied
    # classes of lower index, as argmax picks the first maximum. Ten classes all equal: only label 0
    # is top-1, labels 0-4 are top-5.
    assert count_correct(np.zeros((10, 10), np.float32), np.arange(10), 10) == (1, 5)
    # label 9 scores 0 with classes 0-1 above it and seven zeros (2-8) before it: rank 9, a miss;
    # label 3 has classes 0-1 above it and one zero (2) before it: rank 3, a hit
    out = np.zeros((2, 10), np.float32)
    out[:, :2] = [0.6, 0.4]
    assert count_correct(out, np.array([9, 3]), 10) == (0, 1)


# The zoo's encoder (specs/transformer_reverse.dlc) at half its width and length, which this 2-core
# machine trains in seconds. Models of this kind sit on a plateau (about 40% here) until attention
# learns to route by position, then jump to 100%: seeds 0, 1 and 2 all reached 100% test accuracy
# by epoch 5, so 6 epochs at the threshold (98%) leave a margin. The full-size task (12
# tokens over 16, 10 epochs of 8,000) is measured outside the suite.
SMALL_ENCODER = """
input seq 6
embed 32 vocab=8
posembed
block encoder(d, h, f) {
    add( layernorm -> attention h | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
encoder(32, 2, 64) x2
layernorm
fc 8 softmax
train loss=xent optimizer=adam lr=0.01 batch=64 epochs=6
"""


@pytest.mark.slow
def test_a_small_encoder_learns_to_reverse(tmp_path):
    r = CliRunner().invoke(main, ["train", "-e", SMALL_ENCODER, "--data", "reverse", "--n-train", "2000",
                                  "--n-val", "0", "--n-test", "500", "--out", str(tmp_path / "rev"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs"] == 6 and doc["test_accuracy"] >= 0.98, doc


# The zoo's encoder itself on issue 24's benchmark setting, 20,000 sequences for 2 epochs, where PyTorch's
# reference (nn.TransformerEncoderLayer, its default init) reaches 100% (seeds 0-4). With attention's
# projections drawn He-scaled (√2 over Glorot's) dlc stayed on the plateau (22% test accuracy) until
# epoch 3 (seeds 0, 2, 3, 4; seed 1 made it); started Glorot-uniform, as PyTorch's and Keras's attention,
# seeds 0, 2, 3 and 4 reach 100% in 2 epochs (seed 1 at epoch 3). This is seed 0.
@pytest.mark.slow
def test_the_zoo_encoder_learns_to_reverse_in_two_epochs_as_pytorchs_does(tmp_path):
    spec = Path(__file__).resolve().parents[2] / "specs" / "transformer_reverse.dlc"
    r = CliRunner().invoke(main, ["train", str(spec), "--data", "reverse", "--n-train", "20000", "--n-val", "0",
                                  "--n-test", "1000", "--epochs", "2", "--out", str(tmp_path / "rev"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs"] == 2 and doc["test_accuracy"] >= 0.98, doc


def test_a_tagging_file_gives_a_label_per_step(tmp_path):
    # an .npz of feature sequences (N, T, F) with a tag per step: the reader keeps 2-D labels as float
    # rows, which become class indices for a TxV output; a step's tag is whether its feature is > 0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5, 1)).astype(np.float32)
    np.savez(tmp_path / "tags.npz", x=x, y=(x[..., 0] > 0).astype(np.float64))
    data, _ = prepare(DataSource(str(tmp_path / "tags.npz")), (5, 1), 2, steps=5)
    assert data.train.y.dtype == np.int64 and data.train.y.shape == (64, 5)
    r = CliRunner().invoke(main, ["train", "-e", "input seq 5 of 1 -> fc 8 tanh -> fc 2 softmax", "--data",
                                  str(tmp_path / "tags.npz"), "--optimizer", "adam", "--lr", "0.05", "--epochs",
                                  "30", "--out", str(tmp_path / "tag"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["train_accuracy"] > 0.95  # the sign of one feature, learnt per step
    np.savez(tmp_path / "bad.npz", x=x, y=x[..., 0])
    with pytest.raises(DlcError, match="not whole numbers"):
        prepare(DataSource(str(tmp_path / "bad.npz")), (5, 1), 2, steps=5)
