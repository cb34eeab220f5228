"""The names `dlc train` and the analysis commands offer, without importing numpy.

The engine's tables (dlc.engine.losses.LOSSES, dlc.engine.params.INITS, dlc.train.optim.UPDATES)
hold the arithmetic behind these names; tests/test_train_choices.py checks that they cover the same names,
so the command line never offers a choice the engine cannot run.
"""

from __future__ import annotations

# Losses a run can train with. The engine also has bce_logits, the fused sigmoid + bce it picks by
# itself after a final sigmoid; no user names it.
LOSSES = ("xent", "bce", "mse", "hinge")
INITS = ("he", "xavier", "gaussian")
# The arrays each optimizer keeps per parameter: their names key the checkpoint's optimizer state,
# their count multiplies the gradients in the training-memory estimate (docs/conventions.md).
OPTIMIZER_SLOTS = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("c",), "rmsprop": ("c",),
                   "adam": ("m", "v"), "adamw": ("m", "v")}
# Bytes per value of each precision the analysis commands' --dtype names: int4 packs two values in a
# byte. A node's values round up to whole bytes (docs/conventions.md, Memory).
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
SCHEDULES = ("constant", "step", "poly", "cosine", "exp", "linear", "invsqrt")
NORMALIZE_KINDS = ("none", "mean-std", "minmax")
TRAIN_ENGINES = ("numpy", "torch")


def default_loss(graph) -> str:
    """What dlc trains and checks with when neither spec nor flag names a loss: softmax
    cross-entropy after a final softmax, else the quadratic cost."""
    return "xent" if graph.output.kind == "softmax" else "mse"
