"""dlc: write a neural network as text; get its shapes, costs, ONNX model and a trained NumPy model."""

__version__ = "0.1.0"
