"""ONNX backend: lowering of each layer kind, export with checks, onnxruntime sessions, and the
analysis of any ONNX model (model.py loads, count.py counts, analysis.py groups into layers)."""

# The opsets dlc exports: from 13 (Softmax before 13 normalises over every axis from `axis` on, not
# over channels alone) to 23, the first with RotaryEmbedding (attention's rope; onnxruntime 1.31 runs it).
# Only a network with rope defaults to 23; the others keep the older opsets every onnxruntime from
# 1.20 runs. Here, free of imports, so that `dlc export --help` states the range without loading onnx.
MIN_OPSET, MAX_OPSET = 13, 23
GELU_OPSET = 20  # the first opset with a Gelu operator
ROTARY_OPSET = 23  # the first opset with RotaryEmbedding (attention's rope)
