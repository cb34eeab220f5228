"""The `dlc` command line. The only place that prints errors and picks exit statuses.

Commands live in dlc/commands/*.py as plain click commands; the CLI finds them through COMMANDS and
imports only the module of the command it runs (the way pip finds its commands), so nothing imports
the CLI back and the analysis commands start without numpy, onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
import sys

import click

from dlc import __version__
from dlc.errors import DlcError, Failure

EXIT_SPEC_ERROR = 2
EXIT_INTERRUPTED = 130

# Command name -> the module that defines it (as a click command named after it, `-` read as `_`).
COMMANDS: dict[str, str] = {
    "shapes": "dlc.commands.analysis",
    "params": "dlc.commands.analysis",
    "flops": "dlc.commands.analysis",
    "summary": "dlc.commands.analysis",
    "check": "dlc.commands.analysis",
    "zoo": "dlc.commands.analysis",
    "gradcheck": "dlc.commands.gradcheck",
    "export": "dlc.commands.onnx",
    "infer": "dlc.commands.onnx",
    "bench": "dlc.commands.onnx",
    "train": "dlc.commands.train",
    "sample": "dlc.commands.sample",
    "draw": "dlc.commands.pictures",
    "plot": "dlc.commands.pictures",
}


def fail(message: str, status: int = EXIT_SPEC_ERROR):
    """Print an error for a person (no traceback) and exit."""
    click.echo(message, err=True)
    sys.exit(status)


class Commands(click.Group):
    """Reads COMMANDS lazily, and turns the errors a user can cause into a message and an exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return getattr(importlib.import_module(module), name.replace("-", "_"))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Failure as e:
            fail(e.message, e.status)
        except DlcError as e:
            fail(str(e))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            fail(f"error: {e.filename}: {e.strerror}")
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlc")
def main():
    """dlc: write a neural network as text; get its shapes, parameters, costs, ONNX model and training."""
