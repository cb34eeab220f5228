"""Arguments several commands share: the SPEC argument (a file, stdin, a zoo name or -e TEXT), the
types of flag values, and the refusal of work that cannot fit in memory."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from dlc.errors import DlcError


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
        return "<stdin>", sys.stdin.read()
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
    try:
        return str(spec), path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DlcError(f"{spec} is not a text file")


def load_graph(spec: str | None, expr: str | None):
    """Compile SPEC (see read_spec) into a Graph; errors come back located, as DlcError."""
    from dlc.compile import compile_spec

    file, text = read_spec(spec, expr)
    return compile_spec(text, file=file)


# --- flag values --------------------------------------------------------------------------------

# numpy's generators take any whole number >= 0 as a seed and refuse a negative one with a traceback.
SEED = click.IntRange(min=0)


class FiniteFloat(click.ParamType):
    """A float flag that must be a finite number at or above `low` (above it with `open_low`):
    float('nan') and float('inf') parse, and nan passes every comparison a range check makes."""

    name = "number"

    def __init__(self, low: float | None = None, open_low: bool = False):
        self.low, self.open_low = low, open_low

    def convert(self, value, param, ctx) -> float:
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


NON_NEGATIVE = FiniteFloat(low=0)  # a decay, a penalty, a noise level
POSITIVE = FiniteFloat(low=0, open_low=True)  # a rate, an epsilon


# --- memory -------------------------------------------------------------------------------------

def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, within a cgroup's limit; None
    where neither can be read (then nothing is refused)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def refuse_unless_fits(needed: int, what: str) -> None:
    """A DlcError naming both figures when `what` needs more memory than this machine has free."""
    from dlc.units import binary

    free = available_bytes()
    if free is not None and needed > free:
        raise DlcError(f"{what} needs at least {binary(needed)} of memory; {binary(free)} is available")
