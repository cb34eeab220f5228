"""Running dlc's commands and the models they write, for the tests of exported and quantized models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from dlc.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def outputs(path, x: np.ndarray) -> np.ndarray:
    """The model file's first output for the batch x, on onnxruntime's CPU provider."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]
