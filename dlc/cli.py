"""The `dlc` command line. The only place that prints errors and picks exit statuses.

Commands live in dlc/commands/*.py; heavy modules (numpy, onnx, onnxruntime) are imported inside the
commands that need them, so the analysis commands start fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from dlc import __version__
from dlc.errors import DlcError

EXIT_SPEC_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlc")
def main():
    """dlc: write a neural network as text; get its shapes, parameters, costs, ONNX model and training."""


def fail(message: str, status: int = EXIT_SPEC_ERROR):
    """Print an error for a person (no traceback) and exit."""
    click.echo(message, err=True)
    sys.exit(status)


def guarded(fn):
    """Turn DlcError (and the OS errors a user can cause) into a message on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlcError as e:
            fail(str(e))
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            fail(f"error: {e.filename}: {e.strerror}")
        except KeyboardInterrupt:
            fail("interrupted", 130)
    return wrapper


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


# Each module adds its commands to `main`.
from dlc.commands import analysis, gradcheck, onnx as onnx_commands, train  # noqa: E402,F401
