"""ONNX backend: lowering of each layer kind, export with checks, onnxruntime sessions, and the
analysis of any ONNX model (model.py loads, count.py counts, analysis.py groups into layers)."""

# The opsets dlc exports: from 13 (Softmax before 13 normalises over every axis from `axis` on, not
# over channels alone) to 23, the first with RotaryEmbedding (and RMSNormalization), which onnx >= 1.18
# writes and onnxruntime >= 1.23 runs (dlc's pyproject floors).
# Here, free of imports, so that `dlc export --help` states the range without loading onnx.
MIN_OPSET, MAX_OPSET = 13, 23
GELU_OPSET = 20  # the first opset with a Gelu operator
ROTARY_OPSET = 23  # the first with RotaryEmbedding (attention's rope)
