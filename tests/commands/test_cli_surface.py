"""What a newcomer reads from the command line itself: one spelling of the output flag in every command
that writes, help for every option, usage lines that say what is optional, and one form of error."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from dlc.cli import COMMANDS, main

WRITERS = ("export", "infer", "draw", "plot", "import", "train", "quantize")  # the commands that write a file or folder


def command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", WRITERS)
def test_every_writing_command_takes_o_out_and_output(name):
    outs = [p for p in command(name).params if "--out" in p.opts or "--output" in p.opts]
    assert len(outs) == 1 and set(outs[0].opts) == {"-o", "--out", "--output"}, [p.opts for p in outs]


def test_the_old_spellings_and_the_new_ones_write_the_same_file(tmp_path):
    for flag in ("-o", "--out", "--output"):
        name = flag.lstrip("-")
        r = run("export", "-e", "input 2 -> fc 1", flag, tmp_path / f"{name}.onnx")
        assert r.exit_code == 0, r.output
        r = run("draw", "-e", "input 2 -> fc 1", flag, tmp_path / f"{name}.svg")
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "o.onnx", "o.svg", "out.onnx", "out.svg", "output.onnx", "output.svg"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_says_what_it_does(name):
    bare = [p.opts[-1] for p in command(name).params if isinstance(p, click.Option) and not p.help]
    assert bare == []


def test_train_shows_spec_as_optional_since_resume_needs_none():
    usage = run("train", "--help").output.splitlines()[0]
    assert usage.endswith(" train [OPTIONS] [SPEC]"), usage


@pytest.mark.parametrize("args, said", [
    (("--bogus",), "No such option '--bogus'"),
    (("nosuch",), "No such command 'nosuch'"),
    (("train", "--bogus"), "No such option '--bogus'"),
])
def test_every_usage_mistake_is_one_lower_case_error_line(args, said):
    r = run(*args)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {said}.") and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("rank, said", [("0", "error: --data nowhere.pkl.gz: no such file"), ("1", "")])
def test_under_torchrun_rank_0_alone_says_the_mistake(rank, said, tmp_path):
    # every process torchrun starts meets the same missing file; the user reads it once, from rank 0
    env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank}
    r = subprocess.run([sys.executable, "-m", "dlc", "train", "lenet5", "--data", "nowhere.pkl.gz"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(said) and r.stderr.count("\n") == (1 if said else 0), r.stderr
