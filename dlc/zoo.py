"""The model zoo: the .dlc files that ship with dlc, found by name."""

from __future__ import annotations

from pathlib import Path

from dlc.resources import resource_dir


def zoo_dir() -> Path:
    return resource_dir("specs")


def zoo_names() -> list[str]:
    return sorted(p.stem for p in zoo_dir().glob("*.dlc"))


def zoo_path(name: str) -> Path | None:
    p = zoo_dir() / f"{name}.dlc"
    return p if p.is_file() else None


def describe(path: Path) -> str:
    """The first comment line of a spec: what the network is and where it comes from."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
