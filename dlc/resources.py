"""Where the grammar and the zoo are: beside the package in a checkout, inside it in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for d in (_PKG.parent / name, _PKG / name):
        if d.is_dir():
            return d
    raise FileNotFoundError(f"dlc's {name}/ folder is missing from the installation")
