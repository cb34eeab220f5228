"""A spec's graph travels with its weights as one value, dlc.graph.Network: no function of dlc takes the
graph, the parameters and the running statistics as three loose arguments (the engine's forward and
predict, the ONNX export and its check, the trainers, the checkpoint check once did, each its own way)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.engine.run import predict
from dlc.graph import Network

PACKAGE = Path(__file__).resolve().parent.parent / "dlc"


def loose(source: str) -> list[str]:
    """The functions of `source` whose parameters include a graph, params and state, each its own argument."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            if all(any(word in n for n in names) for word in ("graph", "params", "state")):
                found.append(f"{node.lineno} {node.name}")
    return found


def test_the_search_sees_a_loose_signature():
    assert loose("def forward(graph, params, state, x): pass") == ["1 forward"]
    assert loose("def resume(cls, graph, cfg, params: dict, start_state: dict): pass") == ["1 resume"]
    assert loose("def forward(net, x): pass\ndef partial(graph, stored, fresh): pass") == []


def test_no_function_takes_graph_params_and_state_loose():
    found = [f"{p.relative_to(PACKAGE.parent)}:{where}" for p in sorted(PACKAGE.rglob("*.py"))
             for where in loose(p.read_text())]
    assert found == []


def test_one_network_runs_as_its_three_parts_did():
    # fc 3 on 2 inputs: 2*3 weights + 3 biases; the network's output is the hand-computed x @ W.T + b
    graph = compile_spec("input 2 -> fc 3")
    params, state = init_params(graph, seed=0)
    net = Network(graph, params, state)
    x = np.array([[1.0, -2.0]], np.float32)
    expected = x @ params["fc1.W"].T + params["fc1.b"]
    np.testing.assert_allclose(predict(net, x), expected, rtol=1e-6)
