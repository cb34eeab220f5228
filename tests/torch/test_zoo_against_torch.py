"""Issue 22's zoo specs against plain-torch models of the layers Hugging Face and diffusers write
(tests/torch_models.py): parameters counted by PyTorch and multiply-accumulates by its FlopCounterMode
(FLOPs / 2), on the meta device, which allocates nothing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import torch_models  # noqa: E402
from dlc.analysis import analyse  # noqa: E402
from dlc.compile import compile_spec  # noqa: E402
from dlc.zoo import zoo_path  # noqa: E402


def totals(name: str) -> tuple[int, int]:
    t = analyse(compile_spec(zoo_path(name).read_text(), file=f"{name}.dlc")).totals
    return t.params, t.macs


def counted(module, *inputs) -> tuple[int, int]:
    """(PyTorch's parameter count, FlopCounterMode's FLOPs / 2) of one forward pass."""
    with FlopCounterMode(display=False) as flops:
        module(*inputs)
    return sum(p.numel() for p in module.parameters()), flops.get_total_flops() // 2


def test_bert_base_is_bertmodels_count_with_its_eager_attention():
    # the eager attention's matmuls are seen by the counter: 11,174,215,680 MACs at 128 tokens as dlc counts
    with torch.device("meta"):
        ids = torch.zeros(1, 128, dtype=torch.long)
        assert counted(torch_models.Bert(), ids, ids, torch.ones_like(ids)) == totals("bert_base")


def test_whisper_tiny_encoder_macs_and_its_params_beside_whispers():
    with torch.device("meta"):
        params, macs = counted(torch_models.WhisperEncoder(), torch.zeros(1, 80, 3000))
    spec_params, spec_macs = totals("whisper_tiny_encoder")
    assert macs == spec_macs == 18_468_864_000
    # torch's module holds the 1500x384 position table as a parameter (Hugging Face's embed_positions); dlc's
    # sinusoids are computed. Without it, exactly: no key bias on either side (keybias=off)
    assert params - 1500 * 384 == spec_params == 7_632_384


def test_the_sd_block_counts_as_diffusers_layers():
    with torch.device("meta"):
        block = torch_models.SDBlock()
        got = counted(block, torch.zeros(1, 320, 64, 64), torch.zeros(1, 1280), torch.zeros(1, 77, 768))
    assert got == totals("sd_block") == (4_801_280, 26_915_880_960)
    assert sum(p.numel() for p in block.resnet.parameters()) == 2_255_040
