"""`dlc plot`: training curves from run folders, as a figure file or a text chart."""

from __future__ import annotations

import json
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.plot import write_curves
from dlc.plot.runs import curve, read_run

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
