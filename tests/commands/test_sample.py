"""A character-level language model trained on a text file the test writes, and `dlc sample` from it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dlc.cli import main
from dlc.engine.params import load_checkpoint

# Each character of this text has one successor (é is two UTF-8 bytes but one character), so a model
# that learned the text predicts every step right and greedy sampling continues the cycle exactly.
CYCLE = "abcdefgé\n"
LM = "input seq 16 -> embed 16 vocab=9 -> attention 2 causal -> fc 9 softmax"


def train_on_text(tmp_path, *extra):
    text = tmp_path / "cycle.txt"
    text.write_text(CYCLE * 300, encoding="utf-8")
    r = CliRunner().invoke(main, ["train", "-e", LM, "--data", str(text), "--optimizer", "adam", "--lr", "0.02",
                                  "--batch", "16", "--epochs", "6", "--out", str(tmp_path / "run"), *extra])
    assert r.exit_code == 0, r.output
    return r


def test_a_text_file_trains_a_next_character_model_that_samples_the_text(tmp_path):
    doc = json.loads(train_on_text(tmp_path, "--json").stdout)
    # 2,700 characters: the first 90% (2,430) cut into windows of 16 + 1 give 151 training samples
    assert "a vocabulary of 9" in doc["notes"][0] and "151 train" in doc["notes"][0]
    assert doc["val_accuracy"] > 0.95  # chance is 1/9; every successor is determined by its character
    meta = load_checkpoint(tmp_path / "run" / "last.npz")[2]
    assert meta["vocab"] == "\nabcdefgé"  # the file's characters in code-point order
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "cd", "--tokens", "20",
                                  "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "cdefgé\nabcdefgé\nabcdef\n"
    # at a temperature the draws follow the seed: the same seed gives the same text
    draws = [CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "a", "--tokens", "30",
                                       "--seed", str(seed)]).stdout for seed in (1, 1)]
    assert draws[0] == draws[1] and len(draws[0]) == 32


def test_sample_refuses_runs_without_a_vocabulary_and_unknown_characters(tmp_path):
    train_on_text(tmp_path, "--quiet", "--epochs", "1")
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "xyz"])
    assert r.exit_code == 2 and "never saw: xyz" in r.output
    xor = tmp_path / "xor"
    assert CliRunner().invoke(main, ["train", "-e", "input 2 -> fc 1 sigmoid", "--epochs", "1", "--quiet",
                                     "--out", str(xor)]).exit_code == 0
    r = CliRunner().invoke(main, ["sample", str(xor), "--prompt", "a"])
    assert r.exit_code == 2 and "not trained on a text file" in r.output
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "nothing"), "--prompt", "a"])
    assert r.exit_code == 2 and "no such checkpoint" in r.output


def test_a_text_file_needs_a_spec_reading_enough_token_ids(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(CYCLE * 10, encoding="utf-8")
    r = CliRunner().invoke(main, ["train", "-e", "input seq 8 -> embed 4 vocab=5 -> fc 9 softmax", "--data", str(text)])
    assert r.exit_code == 2 and "9 distinct characters" in r.output and "vocab=5" in r.output
    r = CliRunner().invoke(main, ["train", "-e", "input seq 8 of 3 -> fc 9 softmax", "--data", str(text)])
    assert r.exit_code == 2 and "token ids" in r.output
