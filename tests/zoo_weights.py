"""Which zoo specs a test may build with weights in memory.

The zoo's language models are sized by the analysis alone (tests/test_zoo.py): Llama-3-8B's weights
take 32 GB as float32 and Mixtral-8x7B's 187 GB, past any test machine (CI has 24 GiB). Tests that make
a network's weights (the NumPy engine's forward, the ONNX export checked by onnxruntime, the generated
PyTorch module) take the specs below the bound; the torch test counts the others' parameters on
PyTorch's meta device, which allocates nothing.
"""

from __future__ import annotations

from functools import lru_cache

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.zoo import zoo_names, zoo_path

WEIGHTS_MAX = 1_000_000_000  # params: 4 GB as float32, eight times GPT-2 small's


@lru_cache(maxsize=None)
def zoo_params(name: str) -> int:
    return analyse(compile_spec(zoo_path(name).read_text(), file=str(zoo_path(name)))).totals.params


def zoo_names_with_weights() -> list[str]:
    return [name for name in zoo_names() if zoo_params(name) <= WEIGHTS_MAX]
