"""The `dlc` command line. The only place that prints errors and picks exit statuses.

Commands live in dlc/commands/*.py as plain click commands; the CLI finds them through COMMANDS and
imports only the module of the command it runs (the way pip finds its commands), so nothing imports
the CLI back and the analysis commands start without numpy, onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
import json
import keyword
import sys

import click

from dlc import __version__
from dlc.errors import DlcError, Failure
from dlc.torch import end_worker, launched

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
    "export": "dlc.commands.export",
    "infer": "dlc.commands.infer",
    "bench": "dlc.commands.bench",
    "train": "dlc.commands.train",
    "import": "dlc.commands.importer",
    "roofline": "dlc.commands.roofline",
    "quantize": "dlc.commands.quantize",
    "sample": "dlc.commands.sample",
    "draw": "dlc.commands.pictures",
    "plot": "dlc.commands.pictures",
}


def fail(message: str, status: int = EXIT_SPEC_ERROR, as_json: bool = False, error: DlcError | None = None):
    """Print an error for a person (no traceback) and exit. With --json, stdout gets the error too, as
    {"error": {"message", "file", "line", "col"}}, so a program reading stdout sees why it is empty.
    Under torchrun every process meets the same mistake: rank 0 alone says it, as it alone prints."""
    if launched()[0] != 0:
        sys.exit(status)
    if as_json:
        pos = error.pos if error is not None else None
        click.echo(json.dumps({"error": {
            "message": error.message if error is not None else message.removeprefix("error: "),
            "file": error.file if error is not None else None,
            "line": pos.line if pos else None, "col": pos.col if pos else None}}))
    click.echo(message, err=True)
    sys.exit(status)


class Commands(click.Group):
    """Reads COMMANDS lazily, and turns the errors a user can cause into a message and an exit status."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        ctx.meta["dlc.json"] = "--json" in args[1:args.index("--") if "--" in args else None]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = bool(args)  # click's parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if not given:
                raise  # `dlc` alone: click shows the help
            fail(*explain(e))  # `dlc --bogus`: the same `error:` line as a command's mistakes

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        attr = name.replace("-", "_")
        # a command named after a Python keyword (`import`) is defined as `import_`, PEP 8's spelling
        return getattr(importlib.import_module(module), attr + "_" if keyword.iskeyword(attr) else attr)

    def main(self, *args, **kwargs):
        """click's main; a torchrun worker (WORLD_SIZE > 1) ends through end_worker with the same status."""
        if launched()[1] == 1:
            return super().main(*args, **kwargs)
        try:
            super().main(*args, **kwargs)
        except SystemExit as e:
            end_worker(0 if e.code is None else e.code if isinstance(e.code, int) else 1)
        end_worker(0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Failure as e:
            fail(e.message, e.status)  # a verdict: the command has printed its own document
        except (DlcError, click.UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError, KeyboardInterrupt) as e:
            message, status = explain(e)
            fail(message, status, as_json=ctx.meta.get("dlc.json", False),
                 error=e if isinstance(e, DlcError) else None)


def explain(e: BaseException) -> tuple[str, int]:
    """The line a person reads for an error they caused, and the exit status."""
    if isinstance(e, DlcError):
        return str(e), EXIT_SPEC_ERROR
    if isinstance(e, click.UsageError):
        # a flag out of range or missing: the same `error:` line as every other mistake, not click's Usage block
        return f"error: {e.format_message()}", EXIT_SPEC_ERROR
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    return f"error: {e.filename}: {e.strerror}", EXIT_SPEC_ERROR


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlc")
def main():
    """dlc: write a neural network as text; get its shapes, parameters, costs, ONNX model and training."""
