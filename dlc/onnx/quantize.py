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
                  batch: int | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The model at `src` in int8: dynamic without `calibration` (arrays by input name), else static in
    `fmt`, calibrated `batch` samples at a time (the model's fixed batch, or CALIBRATION_BATCH). Returns
    it and the names of the nodes static quantization left in float (infinite_nodes)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dlc-quantize-") as tmp, quiet_quantizer():
        ready, out = str(Path(tmp) / "ready.onnx"), str(Path(tmp) / "int8.onnx")
        kept: list[str] = []
        try:
            quant_pre_process(src, ready, skip_symbolic_shape=True, save_as_external_data=True,
                              all_tensors_to_one_file=True)
            if calibration is None:
                quantize_dynamic(ready, out, weight_type=QuantType.QInt8)
            else:
                runs = batches(calibration, batch or CALIBRATION_BATCH)
                kept = infinite_nodes(ready, runs, str(Path(tmp) / "augmented.onnx"))
                qoperator = fmt == "qoperator"
                # the quantizer still derives a (NaN) scale for the infinite tensors, which no kept node uses
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    quantize_static(ready, out, Reader(runs),
                                    quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
                                    activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
                                    weight_type=QuantType.QInt8, nodes_to_exclude=kept)
        except Exception as e:  # the quantizer's errors share no base class; its first line says what
            advice = f" (--format qdq keeps {', '.join(kept)} in float)" if kept and fmt == "qoperator" else ""
            raise DlcError(f"onnxruntime's quantizer failed on {src}: {str(e).strip().splitlines()[0]}{advice}")
        return onnx.load_model(out), kept


def infinite_nodes(ready: str, runs: list[dict[str, np.ndarray]], augmented: str) -> list[str]:
    """The nodes that read or write a tensor whose range on the calibration data is not finite, named
    in `ready` (unnamed nodes get names, written back).

    int8 has no infinity: a tensor that reaches it gets an infinite scale and a NaN zero point, and every
    value quantized with them is lost. A causal mask's -inf before Softmax (dlc's export writes it as
    PyTorch's does) did that to a small GPT: static QDQ agreed with the float model on 0% of top-1
    predictions, and on 91-94% with its Where and Softmax left in float.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    model = onnx.load_model(ready, load_external_data=False)  # names and edges; the weights stay on disk
    if any(not n.name for n in model.graph.node):  # the quantizer excludes nodes by name
        taken = {n.name for n in model.graph.node}
        for i, n in enumerate(model.graph.node):
            if not n.name:
                name = f"{n.op_type}_{i}"
                while name in taken:
                    name += "_"
                n.name = name
                taken.add(name)
        onnx.save_model(model, ready)
    calibrator = create_calibrator(Path(ready), augmented_model_path=augmented,
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Reader(runs))
    infinite = {name for name, t in calibrator.compute_data().items()
                if not np.isfinite(np.asarray(t.range_value, np.float64)).all()}
    return [n.name for n in model.graph.node if infinite & {*n.input, *n.output}]


class Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared batches: the next feed dict, then None."""

    def __init__(self, runs: list[dict[str, np.ndarray]]):
        self.runs = iter(runs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.runs, None)
