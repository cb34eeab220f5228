"""dlc's imports run one way, top to bottom, and no module imports itself back through others:

    CLI -> commands -> (pictures, torch) -> (train, onnx) -> analysis and reports -> engine
        -> layers/graph/compiler -> errors/units

Imports are read from the source with ast, function-level ones included (a lazy import is still a
dependency). A package's __init__ importing its own submodules (the registries of dlc.layers and
dlc.engine.kernels fill themselves that way) is the package's content, not an edge; the CLI reaches
the command modules only by name, through its COMMANDS table, which ast does not see as an import.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "dlc"

# Tiers, top first; a module may import its own group or any lower tier, never upwards or across.
TIERS: list[dict[str, tuple[str, ...]]] = [
    {"cli": ("dlc.cli", "dlc.__main__")},
    {"commands": ("dlc.commands",)},
    {"pictures": ("dlc.draw", "dlc.plot"),  # diagrams of the analysed graph, curves of runs
     "torch": ("dlc.torch",)},  # the PyTorch export and trainer: on top of train's loop and optimizer rules
    {"train": ("dlc.train",), "onnx": ("dlc.onnx",)},
    # the ONNX analysis builds on it; serving's costs and their time on a device (roofline) are the analysis's too
    {"analysis": ("dlc.analysis", "dlc.report", "dlc.memory", "dlc.serving", "dlc.roofline")},
    {"engine": ("dlc.engine", "dlc.normalize")},
    {"front": ("dlc.layers", "dlc.graph", "dlc.compile", "dlc.decompile", "dlc.syntax", "dlc.zoo")},
    {"base": ("dlc.errors", "dlc.units", "dlc.atomic", "dlc.npz", "dlc.machine", "dlc.devices", "dlc.resources", "dlc.choices", "dlc.progress", "dlc")},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The dlc modules a module imports anywhere in its body: `from a import b` counts a.b when b is a
    module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name
            and not (path.name == "__init__.py" and m.startswith(name + "."))}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, name, known) for name, path in known.items()}


def group_of(name: str) -> tuple[int, str]:
    """(tier, group) of a module: the group whose prefix matches it most closely."""
    best = None
    for tier, groups in enumerate(TIERS):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                # the package itself ("dlc") holds only its version: it names no subtree
                if name == prefix or (prefix != "dlc" and name.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), tier, group)
    assert best is not None, f"{name} belongs to no tier of this test: add it to TIERS"
    return best[1], best[2]


def wrong_way(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for name, targets in graph.items():
        tier, group = group_of(name)
        for target in targets:
            t_tier, t_group = group_of(target)
            if t_tier < tier or (t_tier == tier and t_group != group):
                bad.add((name, target))
    return bad


def cycle_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every edge that lies on a cycle: a -> b where a is reachable back from b."""
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    return {(a, b) for a, targets in graph.items() for b in targets if reaches(b, a)}


def test_the_reader_sees_function_level_relative_and_from_imports():
    graph = import_graph()
    assert "dlc.errors" in graph["dlc.cli"]  # from dlc.errors import DlcError
    assert "dlc.engine.budget" in graph["dlc.analysis"]  # from dlc.engine.budget import COLS_BYTES
    assert "dlc.commands.analysis" not in graph["dlc.cli"]  # named only in COMMANDS
    # a package's own submodules are its content; the submodules' imports of it are edges
    assert "dlc.layers.conv" not in graph["dlc.layers"] and "dlc.layers" in graph["dlc.layers.conv"]


def test_a_wrong_way_import_and_a_cycle_are_caught():
    graph = {"dlc.engine.run": {"dlc.commands.train"}, "dlc.commands.train": {"dlc.engine.run"}}
    assert wrong_way(graph) == {("dlc.engine.run", "dlc.commands.train")}
    assert cycle_edges(graph) == {("dlc.engine.run", "dlc.commands.train"), ("dlc.commands.train", "dlc.engine.run")}


def test_no_import_goes_up_or_across():
    assert wrong_way(import_graph()) == set()


def test_no_import_cycle():
    assert cycle_edges(import_graph()) == set()
