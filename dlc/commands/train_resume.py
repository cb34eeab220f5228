"""`dlc train --resume DIR`: the run saved in DIR, rebuilt to continue exactly where it stopped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from dlc.commands.arguments import read_spec
from dlc.commands.train_settings import RUN_FLAGS
from dlc.errors import DlcError


def load_resume(folder: Path, spec: str | None, expr: str | None, keys: dict) -> tuple:
    """(graph, config, data source, normalisation, checkpoint) of the run saved in folder."""
    from dlc.compile import compile_spec
    from dlc.engine.params import check_against, load_checkpoint
    from dlc.graph import Network
    from dlc.train.config import config_from_json
    from dlc.train.trainer import Running
    from dlc.train.loop import Position
    from dlc.train.rundir import check_run_fields
    from dlc.train.sources import DataSource
    from dlc.train.streams import rng_from

    ctx = click.get_current_context()
    given = sorted(name for name in RUN_FLAGS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE)
    if given:
        flags = ", ".join(f"--{g.replace('_', '-')}" for g in given)
        raise DlcError(f"--resume continues the saved run with its own settings; drop {flags} "
                       f"(only --epochs may change, to extend the run)")
    path = folder / "last.npz"
    if not path.exists():
        raise DlcError(f"--resume {folder}: no last.npz there (is it a dlc train run directory?)")
    params, state, meta = load_checkpoint(path)
    check_run_fields(meta, path)
    if spec is not None or expr is not None:
        _, text = read_spec(spec, expr)
        if text != meta["spec"]:
            raise DlcError(f"the spec given differs from the one the run in {folder} trained; "
                           f"drop SPEC to continue that run")
    graph = compile_spec(meta["spec"], file=meta["file"])
    check_against(Network(graph, params, state, weights=str(path), checkpoint=str(path)))
    field = "config"  # the field being read, for the refusal of one edited by hand
    try:
        cfg = config_from_json(meta["config"])
        if keys.get("epochs") is not None:
            cfg = replace(cfg, epochs=keys["epochs"])
        field = "data"
        src = DataSource(**dict(meta["data"], sizes=tuple(meta["data"]["sizes"]) if meta["data"]["sizes"] else None))
        for field, read in (("position", Position), ("running", Running)):  # what the loop restores
            read(**meta[field])
        field = "rng"
        rng_from(meta["rng"]["noise"]), rng_from(meta["rng"]["augment"])
    except (KeyError, TypeError, ValueError) as e:
        raise DlcError(f"{path}: its `{field}` is not what dlc train writes ({type(e).__name__}: {e}), so it "
                       f"cannot be resumed") from None
    return graph, cfg, src, meta["normalize"], (params, state, meta)


def check_same_data(saved: dict, now: dict, folder: Path) -> None:
    """--resume promises to continue exactly, so it refuses data other than the run's: other sample
    counts, or the same counts with other contents (a file replaced, a reader or generator changed)."""
    was = saved.get("data_fingerprint")
    if was is None:  # written before checkpoints kept a fingerprint: nothing to compare with
        return
    source = saved["data"]["source"]

    def counts(doc):
        return ", ".join(f"{n:,} {split}" for split, n in doc["samples"].items())

    if was["samples"] != now["samples"]:
        raise DlcError(f"--resume {folder}: the data {source} has changed since the run began (samples: "
                       f"{counts(now)} now, {counts(was)} then); a resumed run needs the data it trained on")
    if was["sha256"] != now["sha256"]:
        raise DlcError(f"--resume {folder}: the data {source} has the run's sample counts but other "
                       f"contents (its SHA-256 differs); a resumed run needs the data it trained on")
