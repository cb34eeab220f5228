"""ONNX backend: lowering of each layer kind, export with checks, onnxruntime sessions, and the
analysis of any ONNX model (model.py loads, count.py counts, analysis.py groups into layers)."""

# The opsets dlc exports: from 13 (Softmax before 13 normalises over every axis from `axis` on, not
# over channels alone) to 21, the newest that every onnxruntime dlc's pyproject admits (>= 1.20) runs.
# Here, free of imports, so that `dlc export --help` states the range without loading onnx.
MIN_OPSET, MAX_OPSET = 13, 21
GELU_OPSET = 20  # the first opset with a Gelu operator
