"""`dlc plot`: training curves from run folders, as a figure file or a text chart."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.plot import write_curves
from dlc.plot.runs import curve, read_run
from dlc.train import rundir

SPECS = Path(__file__).resolve().parent.parent / "specs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format puts right after the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_log(folder: Path, losses: list[float], accuracies=None, val=None) -> Path:
    """log.jsonl as dlc.train.loop writes it: one record per epoch, null for what a run does not measure."""
    folder.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses):
        record = {"epoch": i + 1, "step": 10 * (i + 1), "lr": 0.1 / (i + 1), "seconds": 1.0,
                  "images_per_second": 100.0, "train_loss": loss,
                  "train_accuracy": accuracies[i] if accuracies else None, "train_top5": None}
        for split in ("val", "test"):
            record.update({f"{split}_loss": None, f"{split}_accuracy": None, f"{split}_top5": None})
        if val:
            record["val_loss"] = val[i]
        lines.append(json.dumps(record))
    (folder / "log.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "xor"
    r = run("train", SPECS / "xor.dlc", "--epochs", "3", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_a_real_run_plots_to_a_png_of_the_documented_size(xor_run, tmp_path):
    out = tmp_path / "curves.png"
    r = run("plot", xor_run, "-o", out)
    assert r.exit_code == 0, r.output
    # XOR is scored (0/1 targets), so loss and accuracy side by side: 11 x 6 inches at 100 dpi
    assert png_size(out) == (1100, 600)


def test_write_curves_puts_curves_png_in_the_run_folder(xor_run):
    path = write_curves(xor_run)
    assert path == xor_run / "curves.png"
    assert png_size(path) == (1100, 600)


def test_a_loss_only_run_draws_one_column(tmp_path):
    folder = write_log(tmp_path / "regression", [1.0, 0.5, 0.25])
    out = tmp_path / "curves.png"
    assert run("plot", folder, "-o", out).exit_code == 0
    assert png_size(out) == (700, 600)


def test_runs_overlaid_in_svg_name_each_run(tmp_path):
    a = write_log(tmp_path / "sgd", [1.0, 0.6, 0.4], [0.5, 0.7, 0.8], val=[1.1, 0.7, 0.5])
    b = write_log(tmp_path / "adam", [0.9, 0.3, 0.1], [0.6, 0.9, 0.95])
    out = tmp_path / "both.svg"
    r = run("plot", a, b, "-o", out)
    assert r.exit_code == 0, r.output
    text = " ".join(ET.parse(out).getroot().itertext())
    assert "sgd" in text and "adam" in text and "val" in text


def test_a_repeat_run_is_the_mean_and_std_of_its_seeds(tmp_path):
    root = tmp_path / "rep"
    write_log(root / "seed0", [1.0, 0.5])
    write_log(root / "seed1", [3.0, 0.5])
    write_log(root / "seed2", [2.0, 0.5, 0.2])  # an epoch the others did not reach is left out
    c = curve(read_run(root), "train_loss")
    assert c.epochs == [1, 2]
    assert c.mean == pytest.approx([2.0, 0.5])
    assert c.std == pytest.approx([(2 / 3) ** 0.5, 0.0])  # population std of 1, 3, 2
    assert run("plot", root, "-o", tmp_path / "rep.png").exit_code == 0


def test_without_o_the_curves_are_drawn_in_the_terminal(tmp_path):
    folder = write_log(tmp_path / "run", [1.0, 0.5, 0.25], [0.5, 0.75, 1.0])
    r = run("plot", folder)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "loss"
    assert lines[1].lstrip().startswith("1 │•")  # the first epoch's loss, top left
    assert "0.25 │" in r.output and "100.0% │" in r.output and "50.0% │" in r.output
    assert "learning rate" in r.output and "• train" in r.output


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
    folder = write_log(tmp_path / "run", [1.0, 0.5])
    with open(folder / "log.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    assert curve(read_run(folder), "train_loss").epochs == [1, 2]


@pytest.mark.parametrize("make, args, message", [
    (lambda tmp: tmp / "nowhere", [], "no such run folder"),
    (lambda tmp: tmp, [], "holds no log.jsonl"),
    (lambda tmp: write_log(tmp / "empty", []), [], "no epoch has finished yet"),
    (lambda tmp: write_log(tmp / "run", [1.0]), ["-o", "curves.jpg"], "give a .png or .svg file"),
])
def test_bad_input_is_a_message_and_exit_2(tmp_path, make, args, message):
    r = run("plot", make(tmp_path), *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_without_matplotlib_a_file_needs_the_extra(tmp_path, monkeypatch):
    folder = write_log(tmp_path / "run", [1.0, 0.5])
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an import sees when it is not installed
    r = run("plot", folder, "-o", tmp_path / "c.png")
    assert r.exit_code == 2 and "pip install 'dlc[plot]'" in r.output
    assert run("plot", folder).exit_code == 0  # the terminal chart needs no extra


def plot_in_a_subprocess(*args) -> subprocess.CompletedProcess:
    """`dlc plot` as its own process with a timeout, so a read that blocks fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-m", "dlc", "plot", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("make_log", [
    lambda log: os.mkfifo(log),  # open() of a FIFO blocks until a writer comes
    lambda log: log.symlink_to("/dev/zero"),  # endless
    lambda log: log.mkdir(),
], ids=["fifo", "dev-zero", "folder"])
def test_a_log_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, make_log):
    (tmp_path / "run").mkdir()
    make_log(tmp_path / "run" / "log.jsonl")
    r = plot_in_a_subprocess(tmp_path / "run")
    assert r.returncode == 2 and r.stderr.strip().endswith("log.jsonl is not a regular file, so not a run log")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_fifo_or_device_given_as_the_run_is_not_a_folder(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", Path("/dev/zero")):
        r = plot_in_a_subprocess(path)
        assert r.returncode == 2 and r.stderr.strip().endswith(f"{path}: not a folder"), r.stderr


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "is not text (not UTF-8), so not a run log"),
    (b'{"epoch": 1, "train_loss": 0.5, "note": "caf\xe9"}\n', "is not text (not UTF-8), so not a run log"),
    (b'{"epoch": 1, "train_loss": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
     "no epoch has finished yet (log.jsonl holds no epoch record)"),
], ids=["binary", "latin-1", "nested"])
def test_a_log_that_is_not_a_run_log_is_one_line(tmp_path, content, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_bytes(content)
    r = run("plot", tmp_path / "run")
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output


def test_a_log_larger_than_any_run_log_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "MAX_LOG_BYTES", 1000)
    folder = write_log(tmp_path / "run", [1.0] * 20)  # about 400 bytes a line
    r = run("plot", folder)
    assert r.exit_code == 2 and "log.jsonl is larger than" in r.output, r.output


def test_values_an_edited_log_holds_are_left_out_of_the_curve(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    records = [{"epoch": 1, "train_loss": 10**400}, {"epoch": 2, "train_loss": True},
               {"epoch": 3, "train_loss": "0.5"}, {"epoch": 4, "train_loss": 0.25}, {"epoch": True, "train_loss": 1.0}]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    c = curve(read_run(folder), "train_loss")
    assert c.epochs == [4] and c.mean == [0.25]
    assert run("plot", folder).exit_code == 0


def test_repeat_bands_stay_within_what_the_metric_can_be(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    root = tmp_path / "rep"
    # accuracies 100%, 100%, 94%: mean 98%, population std sqrt((2 x 0.02^2 + 0.04^2) / 3) = 2.83%, so the
    # band would reach 100.83%; losses 0, 0, 0.3: mean 0.1, std 0.1414, so it would reach -0.0414
    for seed, (acc, loss) in enumerate([(1.0, 0.0), (1.0, 0.0), (0.94, 0.3)]):
        write_log(root / f"seed{seed}", [0.5, loss], [0.5, acc])
    c = curve(read_run(root), "train_accuracy")
    assert c.mean[1] == pytest.approx(0.98) and c.std[1] == pytest.approx(0.0008 ** 0.5)
    assert c.band()[1][1] == 1.0 and curve(read_run(root), "train_loss").band()[0][1] == 0.0
    drawn = []
    real = Axes.fill_between
    monkeypatch.setattr(Axes, "fill_between",
                        lambda ax, x, y1, y2, **kw: drawn.append((y1, y2)) or real(ax, x, y1, y2, **kw))
    assert run("plot", root, "-o", tmp_path / "rep.svg").exit_code == 0
    assert len(drawn) == 2  # the loss band and the accuracy band
    assert min(v for y1, _ in drawn for v in y1) == 0.0 and max(v for _, y2 in drawn for v in y2) == 1.0


def test_in_the_terminal_curves_that_share_a_cell_show_as_an_overlap(tmp_path):
    # train and val meet at epochs 1 and 3 and part at epoch 2: both must show, neither hide the other
    folder = write_log(tmp_path / "run", [1.0, 0.5, 0.25], val=[1.0, 0.75, 0.25])
    lines = run("plot", folder).output.splitlines()
    chart = lines[1:11]
    assert chart[0].endswith("│#" + " " * 55) and chart[-1].endswith("#")  # epochs 1 and 3: both curves
    assert sum(row.count("•") for row in chart) == 1 and sum(row.count("o") for row in chart) == 1
    assert lines[13].split() == ["•", "train", "o", "val", "#", "overlap"]


def test_values_past_float32_are_left_out_not_a_traceback(tmp_path):
    # a run logs float32 means; past that range means overflow and matplotlib cannot lay out an axis
    folder = write_log(tmp_path / "one", [1.5e308, -1.5e308, 3e38, 0.0])
    assert curve(read_run(folder), "train_loss").mean == [3e38, 0.0]
    assert run("plot", folder).exit_code == 0 and run("plot", folder, "-o", tmp_path / "one.png").exit_code == 0
    root = tmp_path / "rep"
    write_log(root / "seed0", [1.7e308, 0.5])
    write_log(root / "seed1", [1.7e308, 0.3])
    assert curve(read_run(root), "train_loss").epochs == [2]
    assert run("plot", root).exit_code == 0 and run("plot", root, "-o", tmp_path / "rep.png").exit_code == 0


def test_a_repeat_folder_with_a_damaged_seed_names_that_seeds_log(tmp_path):
    root = tmp_path / "rep"
    write_log(root / "seed0", [1.0, 0.5])
    write_log(root / "seed1", [1.0, 0.5])
    (root / "seed1" / "log.jsonl").write_bytes(b"\x80\x81 not text")
    r = run("plot", root)
    log = root / "seed1" / "log.jsonl"
    assert r.exit_code == 2 and r.output == f"error: {log} is not text (not UTF-8), so not a run log\n"
