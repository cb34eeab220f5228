"""dlc's NumPy engine: forward and backward for every layer kind, graph execution, parameters, losses."""
