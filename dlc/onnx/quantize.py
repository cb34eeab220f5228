"""An ONNX model in int8 through onnxruntime's own quantizer (`dlc quantize`).

Without calibration data, dynamic quantization: the weights of MatMul, Gemm and Conv are stored as int8
with a scale each, and activations are quantized at run time from their own range, batch by batch. With
calibration data, static quantization: the ranges of the activations are measured once on the data
(min/max) and stored, as QuantizeLinear/DequantizeLinear pairs around each quantized operator (QDQ, which
onnxruntime fuses into int8 kernels when it loads the model) or as int8 operators (QOperator: QLinearConv,
QLinearMatMul). QOperator's activations are uint8, as onnxruntime asks on x86-64 for that form.

The model is first put through onnxruntime's pre-processing (its graph optimisations and ONNX shape
inference, not its symbolic shape inference, which takes seconds): a weight that reaches MatMul through
a Transpose (dlc's export of a sequence layer) is folded into a stored weight the quantizer can see.
onnxruntime.quantization is imported inside the function: it loads in about a second.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from dlc.errors import DlcError

FORMATS = ("qdq", "qoperator")
CALIBRATION_BATCH = 32  # samples per calibration run: bounded memory, and the same min/max as one big run


@contextmanager
def quiet_quantizer():
    """The quantizer logs advice on the root logger ("consider pre-processing", done here); the user reads
    dlc's report instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def batches(feeds: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i:i + size] for k, v in feeds.items()} for i in range(0, n, size)]


def quantize_int8(src: str, calibration: dict[str, np.ndarray] | None, fmt: str = "qdq",
                  batch: int | None = None) -> onnx.ModelProto:
    """The model at `src` in int8: dynamic without `calibration` (arrays by input name), else static in
    `fmt`, calibrated `batch` samples at a time (the model's fixed batch, or CALIBRATION_BATCH)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, runs):
            self.runs = iter(runs)

        def get_next(self):
            return next(self.runs, None)

    with tempfile.TemporaryDirectory(prefix="dlc-quantize-") as tmp, quiet_quantizer():
        ready, out = str(Path(tmp) / "ready.onnx"), str(Path(tmp) / "int8.onnx")
        try:
            quant_pre_process(src, ready, skip_symbolic_shape=True)
            if calibration is None:
                quantize_dynamic(ready, out, weight_type=QuantType.QInt8)
            else:
                runs = batches(calibration, batch or CALIBRATION_BATCH)
                qoperator = fmt == "qoperator"
                quantize_static(ready, out, Reader(runs),
                                quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
                                weight_type=QuantType.QInt8)
        except Exception as e:  # the quantizer's errors share no base class; its first line says what
            raise DlcError(f"onnxruntime's quantizer failed on {src}: {str(e).strip().splitlines()[0]}")
        return onnx.load_model(out)
