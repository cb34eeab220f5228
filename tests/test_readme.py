"""Every command the README shows runs as written, in a fresh folder beside a checkout (`specs/` and
`.venv` as a reader has them): the ```sh blocks line by line, in order, and each `$ ` command of a
```text block, whose shown output fixes the exit status (an `error:` or a located message is 2) and
whose first line must appear. The blocks run in one folder, in order: each may read only what the
checkout ships and what a block above it wrote."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# Parts of a command the suite cannot run inside itself: making the virtualenv it runs in, installing
# into it or asking the index what it could install (what .ci/run does), and the suite itself.
NOT_HERE = re.compile(r"^(python3 -m venv|\.venv/bin/pip |\.venv/bin/python -m pytest)")
# Training runs are capped at one epoch (click takes a flag's last value): the commands are checked,
# not the accuracy (the training tests do that).
ONE_EPOCH = "--epochs 1"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, flags=re.S)


def sh_blocks() -> list[list[str]]:
    """Each ```sh block as its commands, with the parts the suite cannot run dropped."""
    out = []
    for block in blocks("sh"):
        commands = []
        for line in block.splitlines():
            kept = [part for part in line.split(" && ") if not NOT_HERE.match(part.strip())]
            if kept:
                commands.append(" && ".join(kept))
        out.append(commands)
    return out


def text_commands() -> list[tuple[str, str]]:
    """(command, its shown output) for each `$ ` line of a ```text block; a command runs on over lines
    while a quote is open."""
    found = []
    for block in blocks("text"):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            command = lines[i][2:]
            i += 1
            while not complete(command):
                command += "\n" + lines[i]
                i += 1
            shown = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            found.append((command, "\n".join(shown)))
    return found


def complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
        return True
    except ValueError:  # a quote still open
        return False


@pytest.fixture
def reader_folder(tmp_path) -> Path:
    """A folder as a reader's checkout looks from the README: specs/ and .venv/bin/dlc at hand."""
    (tmp_path / "specs").symlink_to(REPO / "specs")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={"PATH": path, "HOME": str(cwd), "COLUMNS": "200", "OPENBLAS_NUM_THREADS": "1"})


def test_the_readme_shows_commands_to_check():
    assert len(sh_blocks()) >= 3 and len(text_commands()) >= 3
    assert any("dlc train" in c for block in sh_blocks() for c in block)


def test_set_up_block_runs(reader_folder):
    setup = sh_blocks()[0]
    assert any(".venv/bin/dlc train" in c for c in setup), setup
    for command in setup:
        done = shell(command, reader_folder)
        assert done.returncode == 0, f"{command}\n{done.stderr}"


def test_test_block_is_the_ci_command():
    # the suite cannot run itself; .ci/run runs this very line and nothing else a user would not run
    line = re.search(r"```sh\n(.*?)\n```", README[README.index("Install and run the tests"):]).group(1)
    assert sh_blocks()[1] == [] and line.endswith("pip install -q -e '.[test]' && .venv/bin/python -m pytest -q")
    script = (REPO / ".ci" / "run").read_text().splitlines()
    steps = [x for x in script if x.strip() and not x.startswith(("#", "set ", "cd "))]
    assert steps == [line]


def test_no_block_names_a_file_that_nothing_before_it_makes():
    # the files a fresh clone lacks: the first command that names one is the one that writes it
    shown = "\n".join(blocks("sh"))
    for name in ("mnist.pkl.gz", "digits.npy", "resnet18.onnx"):
        assert name not in shown, name
    commands = [c for block in sh_blocks() for c in block]
    for name in ("runs/lenet5", "lenet5.onnx", "batch.npy", "runs/adam", "runs/momentum"):
        writer = next(c for c in commands if name in c)
        assert re.search(rf"(-o|--out) {re.escape(name)}( |$)|np\.save\('{re.escape(name)}'", writer), writer


@pytest.mark.slow
def test_every_block_runs_after_the_ones_above_it(tmp_path):
    """One reader's folder for the whole README: a block may use what an earlier one wrote (a run
    folder, a model, an input batch), and nothing beyond the checkout."""
    (tmp_path / "specs").symlink_to(REPO / "specs")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    for block in sh_blocks():
        for command in block:
            if "dlc train" in command:
                command = f"{command.split('#')[0]} {ONE_EPOCH}"
            done = shell(command, tmp_path)
            assert done.returncode == 0, f"{command}\n{done.stderr}"


@pytest.mark.parametrize("command, shown", text_commands(), ids=lambda v: v.split("\n")[0][:40])
def test_session_command_runs_as_shown(reader_folder, command, shown):
    done = shell(command, reader_folder)
    first = shown.strip().splitlines()[0]
    error = first.startswith("error:") or re.match(r"<expr>:\d+:\d+: ", first)
    assert done.returncode == (2 if error else 0), done.stderr
    assert first.split("#")[0].strip() in done.stdout + done.stderr
