"""What a user names or writes reaches the generated PyTorch source only as escaped text.

Every hostile text below carries a payload that, run, touches the file PWNED in the working folder:
the export's file must import without running it and still work, the torch engine must train
without running it, on a fresh run and on one resumed from a checkpoint whose metadata holds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from dlc.cli import main  # noqa: E402
from dlc.compile import compile_spec  # noqa: E402
from dlc.engine.params import init_params, load_checkpoint, save_checkpoint  # noqa: E402
from dlc.torch.trainer import network  # noqa: E402
from dlc.torch.export import pytorch_source  # noqa: E402

PAYLOAD = '__import__("pathlib").Path("PWNED").touch()'
# Every way out of a docstring or a comment: quotes, a backslash escape that breaks the string (\N),
# and each character Python's str.splitlines breaks at (Python's tokenizer ends a line at \n and \r).
HOSTILE = [f'a"""\n{PAYLOAD}\n"""b', f"a'''\n{PAYLOAD}\n'''b", f'a"""\r{PAYLOAD}\r"""b', "a\\Nb", "a\\N{x}\\",
           "a\\", *(f'a"""{brk}{PAYLOAD}{brk}"""b' for brk in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")]
XOR = "input 2 -> fc 2 sigmoid -> fc 1 sigmoid  # hidden 2\ntrain loss=mse epochs=1 batch=4\n"


def run_file(path: Path):
    """Import the generated file as a module, as a user's `import net` would."""
    spec = importlib.util.spec_from_file_location("generated_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_spec_file_name_is_only_ever_text_in_the_export(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(name + ".dlc").write_text(XOR)
    r = CliRunner().invoke(main, ["export", name + ".dlc", "--format", "pytorch", "-o", "net.py"])
    assert r.exit_code == 0, r.output
    net = run_file(tmp_path / "net.py").Net()
    assert not (tmp_path / "PWNED").exists()
    assert tuple(net(torch.zeros(3, 2)).shape) == (3, 1)


@pytest.mark.parametrize("name", HOSTILE[:4], ids=range(4))
def test_a_hostile_spec_file_name_trains_on_the_torch_engine_without_running(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(name + ".dlc").write_text(XOR)
    r = CliRunner().invoke(main, ["train", name + ".dlc", "--engine", "torch", "--device", "cpu", "--out", "run",
                                  "-q"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "PWNED").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["epoch"] == 1


def test_a_checkpoint_whose_file_names_code_resumes_on_torch_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("xor.dlc").write_text(XOR)
    r = CliRunner().invoke(main, ["train", "xor.dlc", "--out", "run", "-q"])
    assert r.exit_code == 0, r.output
    params, state, meta = load_checkpoint("run/last.npz")
    meta["file"] = HOSTILE[0] + "\x00"  # the metadata may hold what no file name can
    save_checkpoint("run/last.npz", params, state, meta)
    r = CliRunner().invoke(main, ["train", "--resume", "run", "--epochs", "2", "--engine", "torch", "--device", "cpu",
                                  "-q"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "PWNED").exists()
    assert json.loads(Path("run/metrics.json").read_text())["final"]["epoch"] == 2


def test_spec_comments_with_any_line_break_stay_comments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    breaks = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    text = "".join(f"# c{b}{PAYLOAD}\n" for b in breaks) + "input 2 -> fc 2 sigmoid -> fc 1 sigmoid\n"
    graph = compile_spec(text, "hostile.dlc")
    source = pytorch_source(graph)
    assert not set(breaks + "\r\0") & set(source)  # each written as its escape
    (tmp_path / "net.py").write_text(source, encoding="utf-8")
    run_file(tmp_path / "net.py").Net()
    assert not (tmp_path / "PWNED").exists()


def test_the_export_writes_utf8_source_under_an_ascii_locale(tmp_path):
    # Python reads source as UTF-8; a C locale without UTF-8 mode reads and writes text as ASCII
    (tmp_path / "u.dlc").write_text("input 2 -> fc 1  # 2×1, für XOR\n", encoding="utf-8")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    done = subprocess.run([sys.executable, "-m", "dlc", "export", "u.dlc", "--format", "pytorch", "-o", "u.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# input 2 -> fc 1  # 2×1, für XOR" in (tmp_path / "u.py").read_text(encoding="utf-8")
    run_file(tmp_path / "u.py").Net()


def test_labels_and_blocks_named_like_python_or_the_files_own_names_stay_apart():
    text = """\
block self(n) {
  fc n relu as torch
}
block lambda(n) {
  add(identity | fc n)
}
input 4 -> fc 4 as xx -> self(4) as nn -> lambda(4) x2 as F -> concat(identity | fc 2 as read_npz) as None -> fc 3
"""
    net = network(compile_spec(text, "names.dlc"))["Net"]()
    assert tuple(net(torch.zeros(2, 4)).shape) == (2, 3)
    assert sum(p.numel() for p in net.parameters()) == 20 + 20 + 2 * 20 + 10 + 21  # `dlc params`: 111


def test_load_dlc_on_an_instance_loads_in_place_and_on_the_class_builds_a_net(tmp_path):
    graph = compile_spec("input 2 -> fc 3 relu -> fc 1", "small.dlc")
    params, state = init_params(graph, seed=1)
    save_checkpoint(tmp_path / "w.npz", params, state)
    Net = network(graph)["Net"]
    net = Net()
    returned = net.load_dlc(tmp_path / "w.npz")
    assert returned is net  # in place, as load_state_dict does: not a new network the caller drops
    np.testing.assert_array_equal(net.fc1.weight.detach().numpy(), params["fc1.W"])
    np.testing.assert_array_equal(net.fc2.bias.detach().numpy(), params["fc2.b"])
    built = Net.load_dlc(tmp_path / "w.npz")
    assert isinstance(built, Net) and built is not net
    np.testing.assert_array_equal(built.fc1.weight.detach().numpy(), params["fc1.W"])
