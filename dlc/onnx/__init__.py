"""ONNX backend: lowering of each layer kind, export with checks, onnxruntime sessions, and the
analysis of any ONNX model (model.py loads, count.py counts, analysis.py groups into layers)."""

# The opsets dlc exports: from 13 (Softmax before 13 normalises over every axis from `axis` on, not
# over channels alone) to 23, the first with RMSNormalization (Llama's norm) and RotaryEmbedding (attention's
# rope); onnxruntime 1.31 runs both. Only a network with rmsnorm or rope defaults to 23; the others keep the
# older opsets every onnxruntime from 1.20 runs. Here, free of imports, so that `dlc export --help` states
# the range without loading onnx.
MIN_OPSET, MAX_OPSET = 13, 23
GELU_OPSET = 20  # the first opset with a Gelu operator
RMSNORM_OPSET = 23  # the first opset with RMSNormalization
ROTARY_OPSET = 23  # the first opset with RotaryEmbedding (attention's rope)
