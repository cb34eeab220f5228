"""The table of ONNX's backend test corpus (docs/onnx-corpus.md): for each of its 149 models, whether
`dlc import` writes a spec for it, or its one-line refusal. `python tests/onnx/corpus_table.py` imports
every model (read from the installed onnx package) and writes the file; test_onnx_corpus.py checks each
of the 140 tested models' rows against the import it runs anyway, so the table cannot drift.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx
from click.testing import CliRunner

ROOT = Path(onnx.__file__).parent / "backend" / "test" / "data"
GROUPS = ("light", "pytorch-converted", "pytorch-operator", "simple")
TABLE = Path(__file__).resolve().parents[2] / "docs" / "onnx-corpus.md"


def model_paths() -> dict[str, Path]:
    """`group/name` -> its model file, in the table's order."""
    found = {f"light/{p.stem}": p for p in (ROOT / "light").glob("*.onnx")}
    found.update({f"{g}/{p.parent.name}": p for g in GROUPS[1:] for p in (ROOT / g).glob("*/model.onnx")})
    return dict(sorted(found.items()))


def row(model: str, path: Path, output: str, exit_code: int) -> str:
    """The table's row for one import: `imported`, or `refused` and the message, the model's own path
    (the install's) left out and the table's `|` escaped."""
    group, name = model.split("/")
    if exit_code == 0:
        return f"| {group} | {name} | imported | |"
    reason = output.strip().removeprefix("error: ").replace(str(path), path.name).replace("|", "\\|")
    return f"| {group} | {name} | refused | {reason} |"


def import_row(model: str, path: Path, folder: Path) -> str:
    from dlc.cli import main

    r = CliRunner().invoke(main, ["import", str(path), "-o", str(folder / "net.dlc")])
    return row(model, path, r.output, r.exit_code)


def table(rows: list[str]) -> str:
    tested = [r for r in rows if r.split(" | ")[0] in ("| pytorch-converted", "| pytorch-operator")]
    imported = sum(" | imported | " in r for r in tested)
    every = sum(" | imported | " in r for r in rows)
    return (f"# ONNX's backend test corpus\n\n"
            f"Every model of `onnx/backend/test/data` in the installed onnx package ({onnx.__version__}), and what "
            f"`dlc import` does with it: {every} of {len(rows)} import; of the {len(tested)} `pytorch-converted` "
            f"and `pytorch-operator` models, {imported}. Each imported model of the tested groups reproduces the "
            f"suite's expected outputs on dlc's NumPy engine within 1e-4 (tests/onnx/test_onnx_corpus.py); the "
            f"`light` models carry no outputs to compare. Written by `python tests/onnx/corpus_table.py`; the "
            f"corpus test checks every row but the light ones against the import it runs.\n\n"
            f"| group | model | import | why not |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")


def rows_of(text: str) -> dict[str, str]:
    """`group/name` -> its row, from the table's text."""
    out = {}
    for line in text.splitlines():
        cells = line.split(" | ")
        if len(cells) >= 3 and cells[0].lstrip("| ") in GROUPS:
            out[f"{cells[0].lstrip('| ')}/{cells[1]}"] = line
    return out


def main() -> None:
    from dlc.atomic import atomic_write

    with tempfile.TemporaryDirectory() as tmp:
        rows = [import_row(model, path, Path(tmp)) for model, path in model_paths().items()]
    with atomic_write(TABLE, "w") as f:
        f.write(table(rows))
    print(f"wrote {TABLE} ({len(rows)} models)", file=sys.stderr)


if __name__ == "__main__":
    main()
