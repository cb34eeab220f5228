"""`dlc train --nproc-per-node N`: the command is checked before PyTorch's launcher starts any process,
so a mistake is one line and exit 2, not torchrun's report of every failed process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def dlc(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "dlc", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_a_missing_data_file_is_one_line_before_any_process_starts(tmp_path):
    r = dlc("train", "lenet5", "--data", "mnist.pkl.gz", "--engine", "torch", "--nproc-per-node", 2,
            "--out", tmp_path / "ddp", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: --data mnist.pkl.gz: no such file or directory, and no built-in data set of that "
                        "name (built-in: xor, spirals, blobs, glyphs, reverse, sort, copy, pairs)\n")
    assert not (tmp_path / "ddp").exists()


def test_nproc_per_node_goes_with_the_torch_engine(tmp_path):
    r = dlc("train", "specs/xor.dlc", "--nproc-per-node", 2, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --nproc-per-node trains data-parallel with PyTorch: add --engine torch\n"


@pytest.mark.slow
def test_two_processes_train_one_run_that_counts_both_shards(tmp_path):
    temp = tmp_path / "temp"  # the temporary folder of the run, to see that it leaves nothing there
    temp.mkdir()
    r = dlc("train", "-e", "input 1@8x8 -> flatten -> fc 10 softmax", "--data", "glyphs", "--n-train", 64,
            "--n-val", 16, "--n-test", 0, "--batch", 8, "--epochs", 1, "--engine", "torch", "--nproc-per-node", 2,
            "--out", tmp_path / "ddp", "--json", cwd=tmp_path, env={**os.environ, "TMPDIR": str(temp)})
    assert r.returncode == 0, r.stderr
    # torchrun alone leaves a new torchelastic_XXXX log tree behind every run (torch's one torchinductor_USER
    # cache folder, reused by every run, may be there)
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []
    doc = json.loads(r.stdout)  # rank 0 alone prints: one document
    log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    # 64 samples in 2 shards of 32 at batch 8 per process: 4 steps, each over 16 samples
    assert doc["epochs"] == 1 and len(log) == 1 and log[0]["step"] == 4


@pytest.mark.slow
def test_two_processes_shard_several_inputs_together(tmp_path):
    # the pairs task's ids and types: each process's shard takes the same rows of both
    r = dlc("train", "bert_pairs", "--n-train", 64, "--n-val", 16, "--n-test", 0, "--batch", 8, "--epochs", 1,
            "--engine", "torch", "--nproc-per-node", 2, "--out", tmp_path / "ddp", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert json.loads(r.stdout)["data"] == "pairs" and log[0]["step"] == 4
