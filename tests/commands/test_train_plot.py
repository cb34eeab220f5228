"""`dlc train --plot`: curves.png written into the run folder at the end of a real run, refused before
training when matplotlib is missing; without --plot, one line says how to draw them."""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlc.cli import main
from test_plot import png_size

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
XOR = REPO / "specs" / "xor.dlc"
# dlc.plot.figure's documented size with a loss and an accuracy panel (xor reports accuracy): 11 x 6 in at 100 dpi
TWO_PANELS = (1100, 600)


def train(*args):
    return CliRunner().invoke(main, ["train", str(XOR), "--epochs", "3", *map(str, args)])


def test_plot_writes_curves_png_into_the_run_folder(tmp_path):
    out = tmp_path / "xor"
    r = train("--plot", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"curves: {out / 'curves.png'}" in r.output.splitlines()
    assert png_size(out / "curves.png") == TWO_PANELS


def test_curves_png_is_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        assert train("--plot", "--out", tmp_path / "xor", "-q").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "xor" / "curves.png").stat().st_mode) == 0o644  # 0666 less the umask


def test_repeat_draws_the_seeds_of_the_root_as_bands(tmp_path):
    out = tmp_path / "xor"
    r = train("--plot", "--repeat", "2", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"curves: {out / 'curves.png'}" in r.output.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "seed0", "seed1"]
    assert png_size(out / "curves.png") == TWO_PANELS


def test_json_gains_the_curves_path(tmp_path):
    out = tmp_path / "xor"
    r = train("--plot", "--json", "--out", out)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["curves"] == str(out / "curves.png")


def test_without_plot_one_line_says_how_to_draw_them(tmp_path):
    out = tmp_path / "my runs" / "xor"
    r = train("--out", out)
    assert r.exit_code == 0, r.output
    hint = f"draw the curves: dlc plot {shlex.quote(str(out))} -o {shlex.quote(str(out / 'curves.png'))}"
    assert hint in r.output.splitlines()
    assert not (out / "curves.png").exists()
    for flag in ("--json", "-q"):
        r = train(flag, "--out", tmp_path / flag.strip("-"))
        assert r.exit_code == 0 and "dlc plot" not in r.output, r.output


def test_no_hint_without_the_plot_extra(tmp_path, monkeypatch):
    monkeypatch.setattr("dlc.plot.available", lambda: False)
    r = train("--out", tmp_path / "xor")
    assert r.exit_code == 0 and "curves" not in r.output, r.output


def test_plot_without_matplotlib_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr("dlc.plot.available", lambda: False)
    r = train("--plot", "--out", tmp_path / "xor")
    assert r.exit_code == 2 and "pip install 'dlc[plot]'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "xor").exists()  # no epoch ran


@pytest.mark.parametrize("flag", ["--json", "-q"])
def test_plot_still_writes_with_json_or_quiet(tmp_path, flag):
    out = tmp_path / "xor"
    r = train("--plot", flag, "--out", out)
    assert r.exit_code == 0 and "curves:" not in r.output, r.output
    assert png_size(out / "curves.png") == TWO_PANELS
