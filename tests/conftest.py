"""Fixtures shared by dlc's tests, and how the test tree is collected.

Test files sit in folders that mirror the package (tests/engine/ for dlc/engine/, ...), without
__init__.py files: pytest puts each test file's folder, and this one's, on sys.path, so helper modules
kept here (kernel_checks, test_dsl_examples) import by their plain names from any folder, and no
folder named like a library (tests/onnx/) shadows it. The price is that a test file's name must be
unique across the whole tree.

Tests marked `slow` (registered in pyproject.toml) train or run whole networks; `pytest -m "not slow"`
leaves them out for a quick run.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from dlc.compile import compile_spec
from dlc.graph import Graph
from dlc.zoo import zoo_path


@lru_cache(maxsize=None)
def _compiled_zoo(name: str) -> Graph:
    return compile_spec(zoo_path(name).read_text(), file=str(zoo_path(name)))


@pytest.fixture(scope="session")
def zoo_graph():
    """zoo_graph(name): the zoo spec's graph, compiled once per session (tests must not change it)."""
    return _compiled_zoo
