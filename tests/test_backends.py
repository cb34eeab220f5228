"""Every backend table covers exactly the registry's kinds, and every tensor a kind has carries a role.

A backend is one dict from a kind's name to the function that runs it (tinygrad's ONNX support is one
such dict). A kind missing from a backend shows up only when someone runs a network that uses it, so
this test names it first. A new backend (an ONNX importer, a PyTorch module mapping) is one line in
BACKENDS.
"""

from __future__ import annotations

import importlib

import pytest

from dlc.compile import compile_spec
from dlc.engine.params import tensors
from dlc.layers import KINDS, Role
from dlc.zoo import zoo_names, zoo_path
from test_dsl_examples import (ALEXNET, INCEPTION, LENET5, LSTM_TEXT, MOBILENET, RESNET50, UNET, VGG16,
                               XOR)

# backend -> (module, the dict in it keyed by kind name)
BACKENDS = {
    "NumPy kernels": ("dlc.engine.kernels", "KERNELS"),
    "ONNX lowerings": ("dlc.onnx.lower", "LOWER"),
    "PyTorch modules": ("dlc.torch.modules", "MODULES"),
    "ONNX import": ("dlc.onnx.importing", "IMPORT"),
}
# backend -> the tuple in its module of kinds it leaves out on purpose, each with its reason beside it
EXEMPT = {"ONNX import": "NOT_IMPORTED"}

# `input` is the graph's entry: every backend feeds it the batch rather than computing it.
COMPUTED = sorted(k for k in KINDS if k != "input")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_table_has_one_entry_per_kind(backend):
    module, table = BACKENDS[backend]
    keys = set(getattr(importlib.import_module(module), table))
    exempt = set(getattr(importlib.import_module(module), EXEMPT[backend])) if backend in EXEMPT else set()
    assert not keys & exempt, f"{backend} both covers and exempts {', '.join(sorted(keys & exempt))}"
    keys |= exempt - {"input"}
    missing = [k for k in COMPUTED if k not in keys]
    unknown = sorted(keys - set(COMPUTED))
    assert not missing, f"{backend} ({module}.{table}) has no entry for the kind(s) {', '.join(missing)}"
    assert not unknown, f"{backend} ({module}.{table}) has entries for {', '.join(unknown)}, which no kind is"


def test_the_check_names_a_missing_and_an_unknown_kind(monkeypatch):
    # the contract checks itself: a table with a gap and a stray key fails, naming both
    from dlc.engine import kernels
    monkeypatch.delitem(kernels.KERNELS, "lrn")
    monkeypatch.setitem(kernels.KERNELS, "swish", kernels.KERNELS["relu"])
    with pytest.raises(AssertionError, match="no entry for the kind.s. lrn"):
        test_backend_table_has_one_entry_per_kind("NumPy kernels")
    monkeypatch.setitem(kernels.KERNELS, "lrn", kernels.KERNELS["relu"])
    with pytest.raises(AssertionError, match="entries for swish, which no kind is"):
        test_backend_table_has_one_entry_per_kind("NumPy kernels")


DSL_EXAMPLES = [LENET5, ALEXNET, VGG16, RESNET50, INCEPTION, MOBILENET, UNET, LSTM_TEXT, XOR]
# the options that change which tensors a kind has: no bias, two directions
VARIANTS = ["input 3@8x8 -> conv 4@3x3 bias=false -> dwconv 3x3 bias=false -> upconv 2@2x2/2 bias=false "
            "-> gap -> fc 3 bias=false -> bn",
            "input seq 6 -> embed 4 vocab=9 -> rnn 3 bidirectional sequences -> gru 3 bidirectional "
            "sequences -> lstm 2 bidirectional"]


SPECS = ([pytest.param(zoo_path(name).read_text(), id=f"zoo:{name}") for name in zoo_names()]
         + [pytest.param(text, id=f"example{i}") for i, text in enumerate(DSL_EXAMPLES + VARIANTS)])


@pytest.mark.parametrize("text", SPECS)
def test_every_tensor_a_kind_returns_has_a_role(text):
    graph = compile_spec(text, file="spec.dlc")
    for t in tensors(graph):
        kind = KINDS[t.node.kind]
        assert t.name in kind.tensors, f"`{kind.name}` returns a tensor {t.name} that its `tensors` give no Role"
        role = kind.tensors[t.name]
        # trainable tensors are weights, biases, tables, scales or shifts; running statistics are not
        assert (role.role == "statistic") == (not t.trainable), t.full_name


def test_a_role_is_a_known_one_that_starts_one_way():
    with pytest.raises(ValueError, match="unknown tensor role 'weights'"):
        Role("weights", constant=0.0)
    # a constant start and a random one exclude each other: a tensor with both, or neither, is a mistake
    with pytest.raises(ValueError, match="exactly one of"):
        Role("bias", constant=0.0, std=1.0)
    with pytest.raises(ValueError, match="exactly one of"):
        Role("weight")
