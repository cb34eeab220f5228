"""A character-level language model trained on a text file the test writes, and `dlc sample` from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.engine.params import META_KEY, load_checkpoint

# Each character of this text has one successor (é is two UTF-8 bytes but one character), so a model
# that learned the text predicts every step right and greedy sampling continues the cycle exactly.
CYCLE = "abcdefgé\n"
LM = "input seq 16 -> embed 16 vocab=9 -> attention 2 causal -> fc 9 softmax"


def train_on_text(tmp_path, *extra, spec=LM):
    text = tmp_path / "cycle.txt"
    text.write_text(CYCLE * 300, encoding="utf-8")
    r = CliRunner().invoke(main, ["train", "-e", spec, "--data", str(text), "--optimizer", "adam", "--lr", "0.02",
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


@pytest.mark.parametrize("flag, value, message", [
    ("--tokens", "1000000000", "1000000000 is not in the range 0<=x<=100000"),
    ("--tokens", "12345678901234567890123", "is not in the range 0<=x<=100000"),
    ("--temperature", "nan", "nan is not a finite number"),
    ("--temperature", "inf", "inf is not a finite number"),
    ("--seed", "-1", "-1 is not in the range x>=0"),
])
def test_flags_out_of_range_are_refused_before_the_run_is_read(tmp_path, flag, value, message):
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "no-run"), "--prompt", "a", flag, value])
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output


def test_the_token_bound_and_the_caches_memory_are_in_the_help():
    shown = " ".join(CliRunner().invoke(main, ["sample", "--help"]).output.split())
    assert "at most 100,000" in shown
    assert "2 x D x T numbers (4 bytes each in float32) per attention layer" in shown


def test_a_network_that_lets_steps_see_later_ones_samples_the_whole_window_and_says_so(tmp_path):
    train_on_text(tmp_path, "--quiet", "--epochs", "1", spec=LM.replace(" causal", ""))
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "ab", "--tokens", "5"])
    assert r.exit_code == 0 and len(r.stdout) == 8, r.output  # the prompt, 5 more and a newline
    assert r.stderr == ("dlc: no key/value cache: layer attention1 (attention) lets every step see later ones "
                        "(no `causal`), so every character re-runs the whole window\n")


def rewrite_meta(checkpoint, **changes):
    """The checkpoint with its metadata edited as a person might, the arrays kept."""
    arrays = dict(np.load(checkpoint))
    meta = json.loads(str(arrays[META_KEY]))
    meta.update(changes)
    arrays[META_KEY] = np.array(json.dumps({k: v for k, v in meta.items() if v is not DROP}))
    np.savez(checkpoint, **arrays)


DROP = object()


def test_a_run_whose_checkpoint_was_edited_is_one_line(tmp_path):
    train_on_text(tmp_path, "--quiet", "--epochs", "1")
    best = tmp_path / "run" / "best.npz"
    kept = best.read_bytes()

    def refused(message):
        r = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "ab", "--tokens", "3"])
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
        best.write_bytes(kept)

    for field, value in (("spec", 5), ("vocab", 5), ("vocab", ["a", "b"]), ("file", 5)):
        rewrite_meta(best, **{field: value})
        refused(f"its metadata's `{field}` is not text")
    rewrite_meta(best, vocab=CYCLE + "xyz")  # 12 characters for a network of 9 tokens
    refused("its vocabulary has 12 characters but its network reads and predicts 9 tokens")
    best.write_bytes(kept[:len(kept) // 2])
    refused("is not a dlc checkpoint (unreadable or damaged)")
    rewrite_meta(best, file=DROP)  # a checkpoint from before runs named their file still samples
    r = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "ab", "--tokens", "3"])
    assert r.exit_code == 0 and len(r.stdout) == 6, r.output
