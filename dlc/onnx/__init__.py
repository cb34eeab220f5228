"""ONNX backend: lowering of each layer kind, export with checks, onnxruntime sessions."""
