"""Pictures of a network: one box per table row (or per block call), placed by a series-parallel layout,
written as SVG, Mermaid or Graphviz text. Nothing here imports numpy or onnx: `dlc draw` is an analysis."""
