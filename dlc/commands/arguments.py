"""Arguments several commands share: the SPEC argument (a file, stdin, a zoo name or -e TEXT), the
types of flag values, and the checks on output files."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from dlc.errors import DlcError

# The zoo's largest spec is a few kilobytes; a spec past this size is a wrong file (a model, /dev/zero),
# and reading it whole would hang or fill the memory.
MAX_SPEC_BYTES = 1 << 20


def is_onnx(model: str | None) -> bool:
    return model is not None and model.lower().endswith(".onnx")


def shape_option(fn):
    """--shape: an ONNX model's per-sample input shape where the file leaves dimensions free."""
    return click.option("--shape", "shapes", multiple=True, metavar="SHAPE|NAME=SHAPE",
                        help="An .onnx model's input shape per sample (batch left out) where the file leaves "
                             "dimensions free: 3@224x224, 128x768, seq 128; NAME=SHAPE for each of several "
                             "inputs.")(fn)


def parse_shapes(values: tuple[str, ...]) -> dict[str | None, tuple[int, ...]]:
    """--shape values by input name (None for a shape given without a name)."""
    from dlc.layers.spatial import parse_shape

    shapes: dict[str | None, tuple[int, ...]] = {}
    for value in values:
        name, _, text = value.rpartition("=")
        key = name.strip() or None
        if key in shapes:
            raise DlcError(f"--shape {value}: {'input ' + key if key else 'the input'} already has a shape")
        try:
            shapes[key] = parse_shape(text)
        except ValueError as e:
            raise DlcError(f"--shape {value}: {e}")
    if None in shapes and len(shapes) > 1:
        raise DlcError("--shape: name every input (NAME=SHAPE) when giving several")
    return shapes


def spec_input(fn, metavar: str = "SPEC"):
    """SPEC argument: a file, `-` for stdin, or a zoo name; or -e 'TEXT' for inline text. A command that
    can run without one (train --resume DIR) shows it as `[SPEC]`."""
    fn = click.option("-e", "--expr", "expr", metavar="TEXT", help="Spec text given inline.")(fn)
    return click.argument("spec", required=False, metavar=metavar)(fn)


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


# --- flag values --------------------------------------------------------------------------------

class Threads(click.ParamType):
    """`auto` or a whole number of threads, at least 1."""

    name = "threads"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text == "auto" or (text.isdigit() and int(text) >= 1):
            return text
        self.fail(f"{value!r} is neither auto nor a whole number of threads (1 or more)", param, ctx)


THREADS = Threads()

# numpy's generators take any whole number >= 0 as a seed and refuse a negative one with a traceback.
SEED = click.IntRange(min=0)


class FiniteFloat(click.ParamType):
    """A float flag that must be a finite number at or above `low` (above it with `open_low`):
    float('nan') and float('inf') parse, and nan passes every comparison a range check makes."""

    name = "number"

    def __init__(self, low: float | None = None, open_low: bool = False):
        self.low, self.open_low = low, open_low

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            x = value
        else:
            try:
                x = float(value)
            except OverflowError:  # a whole number past float's range
                x = math.inf
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value} is not a finite number", param, ctx)
        if self.low is not None and (x < self.low or self.open_low and x == self.low):
            self.fail(f"{value} is not {'>' if self.open_low else '>='} {self.low:g}", param, ctx)
        return x


NON_NEGATIVE = FiniteFloat(low=0)  # a tolerance, a decay, a penalty
POSITIVE = FiniteFloat(low=0, open_low=True)  # a rate, an epsilon


# --- output files -------------------------------------------------------------------------------

# Every command that writes a file or a folder takes the same three spellings for it.
OUT_FLAGS = ("-o", "--out", "--output")

def output_file(path: str, flag: str, suffixes: tuple[str, ...], inputs: list[str | None]) -> None:
    """Refuse a name whose extension does not fit what is written, and what writable() refuses, before
    any work is done."""
    if not path.lower().endswith(suffixes):
        raise DlcError(f"{flag} {path}: the file written is {' or '.join(suffixes)}; name it so")
    writable(path, flag, inputs)


def writable(path: str, flag: str, inputs: list[str | None]) -> None:
    """Refuse an output that would destroy an input (the same file after links are followed: `export
    my.dlc -o my.dlc`), that is not a regular file (a folder, or a device: `-o /dev/null` run as root
    would put a file in its place), or whose folder is not one."""
    if not path:
        raise DlcError(f"{flag} '': give a file name")
    target = Path(path)
    for source in inputs:
        if source and source != "-" and Path(source).exists() and _same_file(target, Path(source)):
            raise DlcError(f"{flag} {path} is the input {source}: writing it would destroy the input")
    folder = target.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise DlcError(f"cannot write {path}: {existing} is a file, not a folder")
    if existing != folder:
        raise DlcError(f"cannot write {path}: there is no folder {folder}")
    from dlc.atomic import replaceable  # here: `secrets` would slow every command's start

    replaceable(target)  # a folder, device or FIFO is refused before the work, not at the write


def _same_file(a: Path, b: Path) -> bool:
    if a.exists():
        return os.path.samefile(a, b)  # hard links too
    return a.resolve() == b.resolve()
