"""`dlc train --weights CKPT`: every tensor must fit the spec, or with --weights-partial a trained body
takes a new head (those that fit by name and shape are loaded, the rest start fresh, and the run lists
both); the README's fine-tuning example runs end to end on built-in data."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import init_params, load_checkpoint, save_checkpoint

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
BODY = "input 2 -> fc 8 relu -> fc 8 relu as body"
THREE, FIVE = f"{BODY} -> fc 3 softmax", f"{BODY} -> fc 5 softmax"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def trained_three(tmp_path) -> Path:
    """A checkpoint of the three-class net, its values drawn with another seed than any run's."""
    path = tmp_path / "three.npz"
    save_checkpoint(path, *init_params(compile_spec(THREE), seed=77))
    return path


def test_a_new_head_is_refused_by_default_with_the_way_out(tmp_path):
    r = run("train", "-e", FIVE, "--data", "blobs", "--weights", trained_three(tmp_path), "--out", tmp_path / "r")
    assert r.exit_code == 2, r.output
    assert ("fc3.W is (3, 8) in the checkpoint, (5, 8) in the spec; --weights-partial takes the tensors that fit "
            "and starts the rest fresh (a new head)") in r.stderr
    assert not (tmp_path / "r").exists()


def test_weights_partial_loads_what_fits_and_starts_the_head_fresh(tmp_path):
    ckpt = trained_three(tmp_path)
    r = run("train", "-e", FIVE, "--data", "blobs", "--weights", ckpt, "--weights-partial", "--epochs", 0,
            "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert f"--weights-partial: from {ckpt}: fc1.W, fc1.b, fc2.W, fc2.b" in r.stderr
    assert ("--weights-partial: started fresh: fc3.W (5, 8) (the checkpoint's is (3, 8)), fc3.b (5,) "
            "(the checkpoint's is (3,))") in r.stderr
    start = load_checkpoint(tmp_path / "r" / "last.npz")[0]  # epoch 0: the weights the run started from
    stored = load_checkpoint(ckpt)[0]
    fresh = init_params(compile_spec(FIVE), seed=0)[0]  # what a run of seed 0 draws
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b"):
        assert np.array_equal(start[name], stored[name]), name
    for name in ("fc3.W", "fc3.b"):
        assert np.array_equal(start[name], fresh[name]), name


def test_weights_partial_names_what_the_spec_does_not_use_and_refuses_a_stranger(tmp_path):
    ckpt = trained_three(tmp_path)
    r = run("train", "-e", "input 2 -> fc 8 relu -> fc 5 softmax", "--data", "blobs", "--weights", ckpt,
            "--weights-partial", "--epochs", 0, "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert f"--weights-partial: not used from {ckpt}: fc3.W, fc3.b" in r.stderr
    other = tmp_path / "other.npz"
    save_checkpoint(other, *init_params(compile_spec("input 3 -> fc 4 softmax")))
    r = run("train", "-e", FIVE, "--data", "blobs", "--weights", other, "--weights-partial", "--out", tmp_path / "o")
    assert r.exit_code == 2 and f"--weights-partial: no tensor of {other} fits" in r.stderr, r.output
    r = run("train", "-e", FIVE, "--data", "blobs", "--weights-partial", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "give the checkpoint" in r.stderr, r.output


def test_the_readme_fine_tuning_example_runs_and_keeps_the_frozen_body(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) if "--weights-partial" in b)
    monkeypatch.chdir(tmp_path)
    for line in block.splitlines():
        words = shlex.split(line)
        assert words[:2] == ["dlc", "train"], line
        r = run(*words[1:], "--epochs", 2)  # the commands are checked here, not the accuracy
        assert r.exit_code == 0, f"{line}\n{r.output}"
    body = load_checkpoint("runs/spirals/best.npz")[0]
    tuned = load_checkpoint("runs/blobs/last.npz")[0]
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b"):  # frozen up to `body`: as the spirals run left them
        assert np.array_equal(tuned[name], body[name]), name
    assert tuned["fc3.W"].shape == (5, 64)
