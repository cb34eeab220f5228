"""`dlc import` of issue 28's math kinds as PyTorch writes them, from both exporters: each module's file
imports as the spec line named beside it, and the spec reproduces onnxruntime's output on that file
through dlc's NumPy engine and through dlc's own export.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it

from torch import nn  # noqa: E402

import torch_models  # noqa: E402
from test_onnx_import import assert_reproduces, imported, onnxruntime_output  # noqa: E402
from test_onnx_torch import EXPORTERS  # noqa: E402


class Lambda(nn.Module):
    """A function of the input as a module: torch has no module for clamp, mean or softmax over dim 2."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Shifted(nn.Module):
    """x plus a learned tensor of one value per channel, broadcast over the pixels."""

    def __init__(self, channels: int):
        super().__init__()
        self.b = nn.Parameter(torch.linspace(-1, 1, channels).reshape(channels, 1, 1))

    def forward(self, x):
        return x + self.b


def image(*layers: nn.Module) -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Conv2d(3, 4, 3), *layers), (2, 3, 6, 6)


def vector(*layers: nn.Module) -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Linear(5, 8), *layers), (2, 5)


# case -> (the module and its input shape, the line the import writes for the kind)
CASES = {
    "PReLU": (lambda: image(nn.PReLU()), "prelu"),
    "PReLU(4)": (lambda: image(nn.PReLU(4)), "prelu channels"),
    "LogSoftmax": (lambda: vector(nn.LogSoftmax(dim=1)), "logsoftmax"),
    "Softplus": (lambda: vector(nn.Softplus()), "softplus"),
    "Softsign": (lambda: vector(nn.Softsign()), "softsign"),
    "GLU": (lambda: vector(nn.GLU()), "glu"),
    "GLU over channels": (lambda: image(nn.GLU(dim=1)), "glu"),
    "Softmin": (lambda: vector(nn.Softmin(dim=1)), "neg softmax"),
    "clamp": (lambda: vector(Lambda(lambda x: torch.clamp(x, -0.3, 0.4))), "clip min=-0.3 max=0.4"),
    "clamp below": (lambda: vector(Lambda(lambda x: torch.clamp(x, min=-0.3))), "clip min=-0.3"),
    "softmax over the width": (lambda: image(Lambda(lambda x: torch.softmax(x, 3))), "softmax axis=2"),
    "exp, abs, neg": (lambda: vector(Lambda(lambda x: -torch.exp(torch.abs(x)))), "abs exp neg"),
    "sqrt": (lambda: vector(nn.Softplus(), Lambda(torch.sqrt)), "sqrt"),
    "x + c": (lambda: vector(Lambda(lambda x: x + 0.75)), "shift"),
    "x + a stored per-channel tensor": (lambda: image(Shifted(4)), "shift channels"),
    "mean over the height": (lambda: image(Lambda(lambda x: x.mean(2))), "reduce axis=1"),
    "sum over the width, kept": (lambda: image(Lambda(lambda x: x.sum(3, keepdim=True))), "reduce sum axis=2 keep"),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES)
def test_math_kinds_from_pytorch(tmp_path, case, exporter):
    build, line = CASES[case]
    torch.manual_seed(0)
    net, shape = build()
    if isinstance(net[-1], nn.PReLU):  # slopes of their own, not the 0.25 a wrong import would also start at
        with torch.no_grad():
            net[-1].weight.uniform_(0.1, 0.6)
    path = tmp_path / "m.onnx"
    torch_models.export(net, path, (torch.randn(1, *shape[1:]),), dynamo=EXPORTERS[exporter])
    spec, weights = imported(tmp_path, path)
    steps = [text.split("#")[0].strip() for text in spec.read_text().splitlines()]
    assert any(step == line or step.endswith(f" {line}") for step in steps), spec.read_text()
    x = np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(path, x))
