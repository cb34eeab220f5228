"""`dlc train` loses nothing and refuses what it cannot do (issue 9): a folder holding a run's files is
not overwritten, a kill never drops an epoch from the log, --resume cleans killed writes and refuses
changed data, bad flag and spec values and impossible sizes are refused with a message, a run stopped
in its first epoch says so, and slow set-up shows what it is doing."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from dlc.cli import main

REPO = Path(__file__).resolve().parents[1]
XOR = REPO / "specs" / "xor.dlc"
TINY = "input 2 -> fc 2 softmax"


def run(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def refused(r, *patterns):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, (SystemExit, type(None))), r.exception
    for p in patterns:
        assert re.search(p, r.stderr, re.M), (p, r.stderr)  # a pattern's ^ is a line's start: the log comes first


# ------------------------------------------------------------------------------------- data loss

@pytest.mark.parametrize("name", ["best.npz", "last.npz", "log.jsonl", "metrics.json"])
def test_a_fresh_run_never_overwrites_a_file_a_run_writes(tmp_path, name):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / name).write_bytes(b"someone's good model")
    refused(run(XOR, "--epochs", "1", "--out", kept), re.escape(name))
    assert (kept / name).read_bytes() == b"someone's good model"
    assert sorted(p.name for p in kept.iterdir()) == [name]


def test_repeat_checks_each_seed_folder_and_other_files_do_not_matter(tmp_path):
    (tmp_path / "rep" / "seed1").mkdir(parents=True)
    (tmp_path / "rep" / "seed1" / "metrics.json").write_text("{}")
    refused(run(XOR, "--epochs", "1", "--repeat", "2", "--out", tmp_path / "rep"), "seed1 holds metrics.json")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("mine")
    assert run(XOR, "--epochs", "1", "--out", notes, "--quiet").exit_code == 0
    assert (notes / "README.txt").read_text() == "mine"


def test_out_through_a_file_is_refused(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    refused(run(XOR, "--epochs", "1", "--out", f), "it is a file, not a folder")
    refused(run(XOR, "--epochs", "1", "--out", f / "run"), "f.txt is a file, not a folder")
    assert f.read_text() == "x"


def test_every_checkpoint_finds_its_epochs_already_in_the_log(tmp_path, monkeypatch):
    # A kill can fall between any two writes; with the log line first, a checkpoint at epoch N never
    # exists while log.jsonl lacks line N (the other order lost an epoch for good: issue 9).
    import dlc.train.rundir as rundir

    out, seen, save = tmp_path / "x", [], rundir.save_checkpoint

    def watched(path, params, state, meta):
        if path.name == "last.npz":
            log = out / "log.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            seen.append((meta["position"]["epoch"], [json.loads(line)["epoch"] for line in lines]))
        save(path, params, state, meta)

    monkeypatch.setattr(rundir, "save_checkpoint", watched)
    assert run(XOR, "--epochs", "12", "--save-every", "1", "--out", out, "--quiet").exit_code == 0
    assert [epoch for epoch, _ in seen] == list(range(13))  # the fresh checkpoint, then every epoch
    for epoch, logged in seen:
        assert logged == list(range(1, epoch + 1)), (epoch, logged)


def dlc(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlc", "train", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigkills_at_random_moments_lose_no_epoch_and_leave_no_temp_files(tmp_path):
    # XOR's 2000 one-step epochs, killed six times at random moments while it writes its log, then
    # resumed to the end: every epoch's line once, in order, and metrics.json counting 2000. A checkpoint
    # every step (--save-every 1) puts a checkpoint write next to nearly every log append, and keeps a
    # run that needs under a second on a quiet machine alive long enough to be killed.
    out, log, rng = tmp_path / "xor", tmp_path / "xor" / "log.jsonl", random.Random(9)
    kills = 0
    proc = dlc(XOR, "--out", out, "--quiet", "--save-every", 1)
    while kills < 6:
        before = log.stat().st_mtime_ns if log.exists() else None
        wait_for(lambda: log.exists() and log.stat().st_mtime_ns != before, proc)  # it is training
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = dlc("--resume", out, "--quiet", "--save-every", 1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert kills >= 3, "the run ended before it was killed enough times"
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(1, 2001))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2000 and [h["epoch"] for h in metrics["history"]] == epochs
    assert not list(out.glob(".*.tmp"))


def test_resume_removes_what_killed_writes_left(tmp_path):
    out = tmp_path / "x"
    assert run(XOR, "--epochs", "2", "--out", out, "--quiet").exit_code == 0
    for name in ("last.npz", "best.npz", "log.jsonl", "metrics.json"):
        (out / f".{name}.k1ll3d__.tmp").write_bytes(b"half a file")
    (out / ".notes.txt.abc.tmp").write_text("not dlc's")
    assert run("--resume", out, "--epochs", "3", "--quiet").exit_code == 0
    assert sorted(p.name for p in out.glob(".*")) == [".notes.txt.abc.tmp"]


def test_resume_reads_the_log_as_plot_does_and_refuses_one_that_is_not_text(tmp_path):
    out = tmp_path / "x"
    assert run(XOR, "--epochs", "2", "--out", out, "--quiet").exit_code == 0
    log = out / "log.jsonl"
    kept = log.read_bytes()
    log.write_bytes(b"\xff\xfe binary")
    refused(run("--resume", out, "--epochs", "3"), r"log.jsonl is not text \(not UTF-8\), so not a run log")
    log.write_bytes(kept + b'{"epoch": 3, "train_lo')  # a line cut short is dropped, the epochs kept
    assert run("--resume", out, "--epochs", "3", "--quiet").exit_code == 0
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("edit, said", [
    (lambda m: m.pop("config"), r"last\.npz holds no `config`: it was not written by dlc train"),
    (lambda m: m.pop("rng"), r"last\.npz holds no `rng`"),
    (lambda m: m.update(file=5), r"`file` is not text"),
    (lambda m: m.update(elapsed="soon"), r"its `elapsed` is not what dlc train writes"),
    (lambda m: m.update(position={"epoch": 2, "bogus": 1}), r"its `position` is not what dlc train writes"),
    (lambda m: m["config"].pop("augment"), r"its `config` is not what dlc train writes \(KeyError: 'augment'\)"),
    (lambda m: m["data"].pop("sizes"), r"its `data` is not what dlc train writes"),
    (lambda m: m.update(rng={"noise": {}}), r"its `rng` is not what dlc train writes"),
])
def test_resume_of_a_checkpoint_edited_by_hand_names_the_field(tmp_path, edit, said):
    out = tmp_path / "x"
    assert run(XOR, "--epochs", "2", "--out", out, "--quiet").exit_code == 0
    arrays = dict(np.load(out / "last.npz", allow_pickle=False))
    meta = json.loads(str(arrays["__dlc_meta__"]))
    edit(meta)
    arrays["__dlc_meta__"] = np.array(json.dumps(meta))
    np.savez(out / "last.npz", **arrays)
    refused(run("--resume", out, "--epochs", "3"), said)


def test_resume_refuses_data_that_changed(tmp_path):
    data, out = tmp_path / "d.npz", tmp_path / "run"

    def write(n, seed):
        rng = np.random.default_rng(seed)
        np.savez(data, x=rng.random((n, 2)).astype(np.float32), y=np.arange(n) % 2)

    write(20, 0)
    assert run("-e", TINY, "--data", data, "--epochs", "2", "--out", out, "--quiet").exit_code == 0
    write(20, 1)  # same count, other values
    refused(run("--resume", out, "--epochs", "3"), "sample counts but other contents")
    write(21, 0)
    refused(run("--resume", out, "--epochs", "3"), r"samples: 21 train now, 20 train then")
    write(20, 0)  # the run's own data again
    assert run("--resume", out, "--epochs", "3", "--quiet").exit_code == 0


# ------------------------------------------------------------------------- flag and spec values

@pytest.mark.parametrize("flags, reason", [
    (["--seed", "-1"], r"--seed.*-1"),
    (["--schedule", "invsqrt", "--k", "-1"], r"--k.*-1 is not >= 0"),
    (["--lr", "nan"], r"--lr.*nan is not a finite number"),
    (["--lr", "inf"], r"--lr.*inf is not a finite number"),
    (["--lr", "0"], r"--lr.*0 is not > 0"),
    (["--optimizer", "adam", "--eps", "nan"], r"--eps.*nan is not a finite number"),
    (["--noise", "nan"], r"--noise.*nan is not a finite number"),
    (["--mixup", "nan"], r"--mixup.*nan is not a finite number"),
    (["--weight-decay", "-0.1"], r"--weight-decay.*-0.1 is not >= 0"),
    (["--l1", "-1"], r"--l1.*-1 is not >= 0"),
    (["--maxnorm", "-1"], r"--maxnorm.*-1 is not >= 0"),
    (["--init", "gaussian", "--init-std", "-1"], r"--init-std.*-1 is not >= 0"),
    (["--data", ""], r"--data '' is empty"),
])
def test_bad_flag_values_are_refused(tmp_path, flags, reason):
    refused(run("-e", "input 2 -> fc 1 sigmoid", "--epochs", "1", "--out", tmp_path / "o", *flags), reason)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setting", ["seed=-1", "lr=1e999", "schedule=invsqrt k=-1", "weight_decay=-0.5",
                                     "l1=-1", "maxnorm=-2", "init_std=-1", "eps=0", "batch=0"])
def test_bad_spec_settings_are_refused_where_they_stand(tmp_path, setting):
    key = setting.split()[-1].split("=")[0]
    r = run("-e", f"input 2 -> fc 1 sigmoid\ntrain {setting}", "--out", tmp_path / "o")
    # located: the message names the setting, or (a number past float's range) the value itself
    refused(r, rf"<expr>:2:\d+: .*({key}=|too large for a number)", rf"\n    train {re.escape(setting)}\n +\^+")


def test_sizes_beyond_memory_are_refused_with_the_figure(tmp_path, monkeypatch):
    import dlc.machine as machine

    monkeypatch.setattr(machine, "available_bytes", lambda: 8 * 2**30)
    # 10^8 training images of 1@32x32 plus glyphs' 1,000 + 1,000 others, 4 bytes a value and an 8-byte
    # label: 100,002,000 x (1,024 x 4 + 8) = 410,408,208,000 bytes = 382.22 GiB
    r = run("-e", "input 1@32x32 -> fc 10 softmax", "--n-train", "100000000", "--out", tmp_path / "o")
    refused(r, r"the data \(100,002,000 samples of 1@32x32: 382\.22 GiB\) plus a training step at batch 32 "
               r"\([\d.]+ KiB\) needs at least 382\.22 GiB of memory; 8\.00 GiB is available")
    refused(run("-e", TINY, "--data", "xor", "--n-train", "10"), "not the four points of xor")


SEQUENCE_LM = "input seq {} -> embed 8 vocab=8 -> fc 8 softmax"


@pytest.mark.parametrize("steps, flags, figure", [
    # the default 8,000 + 1,000 + 1,000 sequences of 100,000 int64 ids and as many int64 targets:
    # 10,000 x 100,000 x 16 = 16,000,000,000 bytes = 14.90 GiB
    (100_000, [], r"the data \(10,000 samples of 100000: 14\.90 GiB\) plus a training step at batch 32"),
    # (10^8 + 2,000) x 8 x 16 = 12,800,256,000 bytes = 11.92 GiB
    (8, ["--n-train", "100000000"], r"the data \(100,002,000 samples of 8: 11\.92 GiB\) plus a training step"),
])
def test_sequence_sets_too_large_for_memory_are_refused_before_they_are_made(tmp_path, monkeypatch, steps,
                                                                               flags, figure):
    import dlc.machine as machine
    import dlc.train.builtin as builtin

    monkeypatch.setattr(machine, "available_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(builtin, "sequence_task", lambda *a: pytest.fail("the sequences were made"))
    r = run("-e", SEQUENCE_LM.format(steps), "--data", "reverse", *flags, "--out", tmp_path / "o")
    refused(r, figure, r"needs at least [\d.]+ GiB of memory; 8\.00 GiB is available")


def test_a_training_step_too_large_for_memory_is_refused_before_it_runs(tmp_path, monkeypatch):
    import dlc.machine as machine
    import dlc.train.loop as loop

    monkeypatch.setattr(machine, "available_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("the run started"))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((20, 2), np.float32), y=np.arange(20) % 2)
    # a 50,000-to-50,000 layer: 2.5 x 10^9 weights, 9.3 GiB before gradients; a file's 20 samples are known
    # once read, and a batch is at most the split: the step is at batch 20, not --batch 1000000
    r = run("-e", "input 2 -> fc 50000 relu -> fc 50000 relu -> fc 2 softmax", "--data", data, "--batch", "1000000",
            "--out", tmp_path / "o")
    refused(r, r"^error: a training step at batch 20 needs at least [\d.]+ GiB of memory; 8\.00 GiB is available")


def test_running_out_of_memory_in_a_step_is_one_line(tmp_path, monkeypatch):
    import dlc.train.loop as loop

    def out_of_memory(*a, **k):
        raise MemoryError("Unable to allocate 1.46 TiB for an array with shape (10, 4, 100000, 100000)")

    monkeypatch.setattr(loop, "train", out_of_memory)
    refused(run(XOR, "--out", tmp_path / "o"), r"^error: out of memory while training: Unable to allocate 1\.46 TiB")


# ------------------------------------------------------------------------------ what is printed

def test_a_run_stopped_in_its_first_epoch_says_so_instead_of_an_empty_table(capsys):
    from dlc.commands.train_summary import print_summary, run_summary
    from dlc.train.dataset import Data, Split
    from dlc.train.loop import RunResult

    data = Data(Split(np.zeros((4, 2), np.float32), np.zeros(4, np.int64)), name="xor")
    stopped = RunResult(Path("runs/x"), [], {}, 1.5, "interrupted", "stopped by SIGINT at epoch 1, step 3")
    print_summary(run_summary(stopped, data, []), 1, quiet=False, as_json=False)
    printed = capsys.readouterr().out
    assert "no epoch finished" in printed and "runs/x" in printed
    assert "split" not in printed and "loss" not in printed


def test_slow_set_up_names_its_phase_on_stderr(monkeypatch):
    from dlc.commands.train_progress import Display

    display = Display(quiet=False)
    monkeypatch.setattr(display, "SETUP_AFTER", 0.0)
    screen = io.StringIO()
    display.console = Console(file=screen, force_terminal=True, width=100)
    shown = threading.Event()
    show = display._show_status
    monkeypatch.setattr(display, "_show_status", lambda: (show(), shown.set()))
    display.phase("reading /data/mnist.pkl.gz")
    assert shown.wait(30) and display.status is not None
    display.phase("normalising mnist.pkl.gz")  # the spinner follows the phase
    display.phase(None)  # and is gone when set-up ends, after a last frame
    assert "normalising mnist.pkl.gz" in screen.getvalue()
    assert display.status is None and display.timer is None


def test_quick_set_up_prints_nothing():
    from dlc.commands.train_progress import Display

    display = Display(quiet=False)
    screen = io.StringIO()
    display.console = Console(file=screen, force_terminal=True)
    display.phase("making the built-in set xor")
    display.phase(None)  # well before SETUP_AFTER
    assert screen.getvalue() == ""


def test_plot_never_overwrites_a_picture_kept_in_the_folder(tmp_path):
    pytest.importorskip("matplotlib")
    for repeat in ("1", "2"):
        kept = tmp_path / f"kept{repeat}"
        kept.mkdir()
        (kept / "curves.png").write_bytes(b"my own picture")
        refused(run(XOR, "--epochs", "1", "--plot", "--repeat", repeat, "--out", kept),
                f"{re.escape(str(kept))} holds curves.png, which the run writes")
        assert sorted(p.name for p in kept.iterdir()) == ["curves.png"]
        assert (kept / "curves.png").read_bytes() == b"my own picture"
    assert run(XOR, "--epochs", "1", "--out", tmp_path / "kept1", "--quiet").exit_code == 0  # no --plot: no clash


def test_two_runs_into_one_folder_the_second_refuses_with_the_first_ones_pid(tmp_path):
    # Both started together once both ran, and one log held 600 records for 300 epochs (issue 25).
    out = tmp_path / "same"
    first = dlc(XOR, "--out", out, "--quiet", "--epochs", "100000", "--save-every", "1")
    wait_for(lambda: (out / "log.jsonl").exists(), first)  # it holds the folder and is training
    second = subprocess.run([sys.executable, "-m", "dlc", "train", str(XOR), "--out", str(out), "--quiet"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    first_running = first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first_running, "the first run ended before the second started"
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (f"error: {out} is in use by another dlc train (process {first.pid}): "
                                     f"wait for it to end, or choose another --out")
    # the first run's log is its own: one line per epoch, in order
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))
    # a resume is refused the same way while a run holds the folder, and the lock goes with its holder
    assert not (out / ".lock").exists()
    third = dlc("--resume", out, "--quiet", "--epochs", "100000", "--save-every", "1")
    wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(third.pid), third)
    fourth = run("--resume", out, "--quiet")
    third.send_signal(signal.SIGKILL)  # a killed holder leaves its lock file, but not the lock
    third.wait()
    refused(fourth, f"in use by another dlc train \\(process {third.pid}\\)")
    assert run("--resume", out, "--quiet", "--epochs", str(len(epochs) + 1)).exit_code == 0


@pytest.mark.parametrize("full_at", ["checkpoint", "log"])
def test_a_full_disk_ends_the_run_in_one_line_and_the_last_checkpoint_loads(tmp_path, monkeypatch, full_at):
    import errno
    import os

    import dlc.engine.params as params
    import dlc.train.rundir as rundir
    from dlc.engine.params import load_checkpoint

    out, saved, savez, write = tmp_path / "x", [], np.savez, os.write
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def savez_until_full(f, **arrays):
        meta = json.loads(str(arrays["__dlc_meta__"])) if "__dlc_meta__" in arrays else {}
        if full_at == "checkpoint" and len(saved) >= 6:
            f.write(b"PK\x03\x04 half a checkpoint")  # the disk fills in the middle of the file
            raise disk_full
        savez(f, **arrays)
        saved.append(meta.get("position", {}).get("step"))

    def write_until_full(fd, data):
        if full_at == "log" and len(saved) >= 6 and data.startswith(b'{"epoch"'):
            raise disk_full
        return write(fd, data)

    monkeypatch.setattr(params.np, "savez", savez_until_full)
    monkeypatch.setattr(rundir.os, "write", write_until_full)
    r = run(XOR, "--epochs", "5", "--batch", "1", "--save-every", "1", "--out", out, "--quiet")
    monkeypatch.undo()
    broken = out / ("last.npz" if full_at == "checkpoint" else "log.jsonl")  # within an epoch, no best waits
    assert r.exit_code == 2, r.output
    assert r.stderr == (f"error: cannot write {broken}: No space left on device; the last checkpoint written, "
                        f"{out / 'last.npz'}, is intact: --resume {out} continues from it\n")
    last = load_checkpoint(out / "last.npz")[2]["position"]["step"]
    assert last == max(s for s in saved if s is not None) > 0
    assert not list(out.glob(".*.tmp"))
    assert run("--resume", out, "--quiet").exit_code == 0  # space freed: the run goes on from there
