"""Arguments several commands share: the SPEC argument (a file, stdin, a zoo name or -e TEXT)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dlc.errors import DlcError

# The zoo's largest spec is a few kilobytes; a spec past this size is a wrong file (a model, /dev/zero),
# and reading it whole would hang or fill the memory.
MAX_SPEC_BYTES = 1 << 20


def spec_input(fn):
    """SPEC argument: a file, `-` for stdin, or a zoo name; or -e 'TEXT' for inline text."""
    fn = click.option("-e", "--expr", "expr", metavar="TEXT", help="Spec text given inline.")(fn)
    return click.argument("spec", required=False, metavar="SPEC")(fn)


def read_spec(spec: str | None, expr: str | None) -> tuple[str, str]:
    """(file name for messages, text) for the SPEC argument or -e."""
    from dlc.zoo import zoo_names, zoo_path

    if expr is not None:
        if spec is not None:
            raise DlcError("give either SPEC or -e TEXT, not both")
        return "<expr>", expr
    if spec is None:
        raise DlcError("no spec given: name a .dlc file, `-` for stdin, a zoo name, or -e 'TEXT'")
    if spec == "-":
        return "<stdin>", _text(sys.stdin.buffer, "<stdin>")
    path = Path(spec)
    if not path.exists() and "/" not in spec and not spec.endswith(".dlc"):
        path = zoo_path(spec)
        if path is None:
            import difflib
            near = difflib.get_close_matches(spec, zoo_names(), n=1)
            hint = f" (did you mean `{near[0]}`?)" if near else " (`dlc zoo` lists the zoo)"
            raise DlcError(f"no file and no zoo spec named `{spec}`{hint}")
    if path.is_dir():
        raise DlcError(f"{spec} is a directory, not a spec file")
    if not path.exists():
        raise DlcError(f"no such file: {spec}")
    with open(path, "rb") as f:
        return str(spec), _text(f, spec)


def _text(f, name: str) -> str:
    """A spec's text, read no further than MAX_SPEC_BYTES."""
    data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise DlcError(f"{name} is longer than {MAX_SPEC_BYTES >> 20} MiB; a spec is text of a few kilobytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DlcError(f"{name} is not a text file")
    if "\0" in text:
        raise DlcError(f"{name} is not a text file (it holds NUL bytes)")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


def load_graph(spec: str | None, expr: str | None):
    """Compile SPEC (see read_spec) into a Graph; errors come back located, as DlcError."""
    from dlc.compile import compile_spec

    file, text = read_spec(spec, expr)
    return compile_spec(text, file=file)
