"""Issue 22's networks imported from ONNX and reproduced: cross-attention and padding masks from dlc's own
export, and from both PyTorch exporters a BERT-style encoder (token types, a padding mask, a position table
longer than the sequence, the pooler), Whisper's encoder (a 1-D conv stem, gelu, fixed positions) and group
norm, each run by dlc's NumPy engine against onnxruntime on the original model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import torch_models  # noqa: E402
from dlc.compile import compile_spec  # noqa: E402
from dlc.engine.params import init_params  # noqa: E402
from dlc.graph import Network  # noqa: E402
from dlc.onnx.export import save_model, to_onnx  # noqa: E402
from dlc.onnx.importing.importer import input_labels  # noqa: E402
from test_onnx_import import imported, relative_error, run  # noqa: E402
from test_onnx_torch import EXPORTERS  # noqa: E402

TOLERANCE = 1e-4


def reproduces(tmp_path, path, feeds: dict[str, np.ndarray]) -> str:
    """Import the model at `path`, run the spec on the NumPy engine with `feeds` (by the model's input names)
    and compare with onnxruntime on the original; the spec's text."""
    spec, weights = imported(tmp_path, path)
    names = input_labels([v.name for v in onnx.load(path).graph.input])
    np.savez(tmp_path / "x.npz", **dict(zip(names, feeds.values())))
    r = run("infer", spec, "--weights", weights, "--engine", "numpy", "--input", tmp_path / "x.npz",
            "--out", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert relative_error(np.load(tmp_path / "y.npy"), want) <= TOLERANCE
    return spec.read_text()


def exported_reproduces(tmp_path, net, feeds: dict[str, np.ndarray], exporter: str) -> str:
    """Export the PyTorch module `net` on `feeds` (its inputs by name, its output `y`) with `exporter`, then
    reproduces() on that file; the spec's text."""
    path = tmp_path / "torch.onnx"
    torch_models.export(net, path, tuple(torch.from_numpy(v) for v in feeds.values()), dynamo=EXPORTERS[exporter],
                        input_names=list(feeds), output_names=["y"])
    return reproduces(tmp_path, path, feeds)


def test_cross_attention_and_masks_of_dlcs_export_import_back(tmp_path):
    text = ("input seq 6 of 12 as encoded\ninput seq 6 as keep\ninput seq 4 of 8 as words\nattention 2 causal\n"
            "add( layernorm -> attention 2 from=encoded mask=keep kv=1 | identity )\n"
            "attention 4 mask=keep from=encoded\n")
    graph = compile_spec(text)
    params, state = init_params(graph, seed=3)
    params = {k: v + 0.1 for k, v in params.items()}  # biases away from 0
    save_model(to_onnx(Network(graph, params, state)), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = {"encoded": rng.standard_normal((2, 6, 12)).astype(np.float32),
             "keep": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]),
             "words": rng.standard_normal((2, 4, 8)).astype(np.float32)}
    spec = reproduces(tmp_path, tmp_path / "m.onnx", feeds)
    assert "attention 2 from=encoded mask=keep kv=1" in spec and "attention 4 from=encoded mask=keep" in spec


def test_a_decoder_attending_to_an_encoder_on_another_input_imports_back(tmp_path):
    # the encoder's layers are the first input's, written on its line, and the output's chain starts at the
    # text, a later input, whose line comes last
    text = ("input 4@12 as audio -> conv 8@3/2 pad=1 gelu -> tokens as encoded\ninput seq 5 of 8 as words\n"
            "attention 2 causal\nattention 2 from=encoded\nfc 3\n")
    graph = compile_spec(text)
    params, state = init_params(graph, seed=4)
    save_model(to_onnx(Network(graph, {k: v + 0.1 for k, v in params.items()}, state)), tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    feeds = {"audio": rng.standard_normal((2, 4, 12)).astype(np.float32),
             "words": rng.standard_normal((2, 5, 8)).astype(np.float32)}
    spec = reproduces(tmp_path, tmp_path / "m.onnx", feeds)
    assert "input 4@12 as audio -> conv 8@3/2 pad=1 -> gelu -> tokens as src1" in spec, spec
    assert spec.index("input seq 5 of 8 as words") < spec.index("attention 2 from=src1"), spec


def bert_feeds(t=8, seed=0):
    """One sample (the exporters bake the batch they trace into the heads' reshapes): two sentences, the
    last three steps padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, (1, t))
    types = (np.arange(t) >= t // 2).astype(np.int64)[None]
    mask = np.array([[1] * (t - 3) + [0] * 3])
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_bert_style_encoder_with_token_types_and_a_padding_mask(tmp_path, exporter):
    torch.manual_seed(0)
    net = torch_models.Bert(vocab=50, hidden=32, layers=2, heads=4, intermediate=64, positions=16)
    feeds = bert_feeds()
    torch_models.export(net, tmp_path / "bert.onnx", tuple(torch.from_numpy(v) for v in feeds.values()),
                        dynamo=EXPORTERS[exporter], input_names=list(feeds), output_names=["pooled"])
    spec = reproduces(tmp_path, tmp_path / "bert.onnx", feeds)
    assert spec.count("attention 4 mask=attention_mask") == 2 and "embed 32 vocab=2" in spec, spec
    # TorchScript keeps the 16-row table and gathers its first 8 rows; dynamo stores those 8 rows alone
    assert ("posembed 16" if exporter == "torchscript" else "posembed layernorm") in spec, spec


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_whispers_encoder_with_its_conv_stem_and_fixed_positions(tmp_path, exporter):
    # a small config of Whisper's encoder: 8 mel bins x 40 frames, 2 layers of 16 features
    torch.manual_seed(0)
    net = torch_models.WhisperEncoder(mels=8, d=16, heads=2, layers=2, ffn=32, frames=40)
    feeds = {"features": np.random.default_rng(1).standard_normal((1, 8, 40)).astype(np.float32)}
    torch_models.export(net, tmp_path / "whisper.onnx", (torch.from_numpy(feeds["features"]),),
                        dynamo=EXPORTERS[exporter], input_names=["features"], output_names=["encoded"])
    spec = reproduces(tmp_path, tmp_path / "whisper.onnx", feeds)
    # the stem as Whisper's, read back as dlc writes it; the stored table is Whisper's sinusoids: fixed
    assert "conv 16@3 pad=1 gelu" in spec and "conv 16@3/2 pad=1 gelu" in spec and "tokens" in spec, spec
    assert "posembed fixed" in spec and spec.count("attention 2") == 2, spec
    # k_proj has no bias: the key projection's bias is left out, not imported as zeros, so params match
    assert spec.count("attention 2 keybias=off") == 2, spec
    stored = np.load(tmp_path / "net.npz")
    assert sum(stored[k].size for k in stored.files if k != "__dlc_meta__") == \
        sum(p.numel() for p in net.parameters()) - net.embed_positions.weight.numel()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_diffusion_resblock_with_its_time_embedding_on_every_pixel(tmp_path, exporter):
    # diffusers' ResnetBlock2D at 8 channels in 4 groups: groupnorm, silu, the time embedding's projection
    # added to every pixel (`[:, :, None, None]`: `reshape 8@1x1`, then add broadcasting)
    torch.manual_seed(0)
    net = torch_models.ResnetBlock2D(channels=8, temb=12, groups=4)
    for norm in (net.norm1, net.norm2):  # scale and shift away from 1 and 0, so that misreading them shows
        norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(2)
    feeds = {"latent": rng.standard_normal((1, 8, 6, 6)).astype(np.float32),
             "temb": rng.standard_normal((1, 12)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert "input 12 as temb -> silu -> fc 8 -> reshape 8@1x1 as temb_out" in spec and spec.count("groupnorm 4") == 2


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_diffusers_cross_attention_to_text(tmp_path, exporter):
    # to_q, to_k and to_v without bias (zeros in dlc's), keys and values from 5 text steps of 12 features
    torch.manual_seed(0)
    net = torch_models.Attention(16, 2, context=12)
    rng = np.random.default_rng(3)
    feeds = {"hidden": rng.standard_normal((1, 9, 16)).astype(np.float32),
             "text": rng.standard_normal((1, 5, 12)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert "attention 2 from=text" in spec, spec


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_diffusers_spatial_transformer_reads_tokens_and_lays_them_back_out(tmp_path, exporter):
    # Transformer2DModel at 8 channels on a 4x6 latent, its block a cross-attention to 5 text steps: the
    # permute(0, 2, 3, 1) and reshape to 24 steps import as tokens, the reshape to 4x6 and permute(0, 3, 1, 2)
    # as image 4x6, between proj_in and proj_out, the latent added back
    torch.manual_seed(0)
    net = torch_models.Transformer2DModel(channels=8, heads=2, context=12, groups=4)
    net.transformer_blocks = torch.nn.ModuleList([torch_models.Attention(8, 2, context=12)])
    net.norm.weight.data.uniform_(0.5, 1.5), net.norm.bias.data.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(4)
    feeds = {"latent": rng.standard_normal((1, 8, 4, 6)).astype(np.float32),
             "text": rng.standard_normal((1, 5, 12)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert "conv 8@1x1 tokens" in spec and "attention 2 from=text" in spec and "image 4x6" in spec, spec


@pytest.mark.slow
def test_bert_base_from_torchscript_imports_with_the_zoos_counts(tmp_path):
    # BertModel's size at 128 tokens: the import keeps the 512-row position table, the token types and the
    # pooler, so its spec counts what specs/bert_base.dlc does
    from dlc.analysis import analyse

    torch.manual_seed(0)
    feeds = bert_feeds(t=128)
    torch_models.export(torch_models.Bert(), tmp_path / "bert.onnx", tuple(torch.from_numpy(v) for v in feeds.values()),
                        dynamo=False, input_names=list(feeds), output_names=["pooled"])
    spec, _ = imported(tmp_path, tmp_path / "bert.onnx")
    totals = analyse(compile_spec(spec.read_text())).totals
    assert (totals.params, totals.macs) == (109_482_240, 11_174_215_680)
    assert "posembed 512" in spec.read_text()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_diffusers_geglu_imports_as_two_fcs_and_their_product(tmp_path, exporter):
    # GEGLU's one Linear(8, 24) chunked in two (dynamo: a Split; TorchScript: two Slices whose ends it
    # computes from the projection's shape): its first 12 columns the hidden fc, its last 12 the gelu'd gate
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch_models.GEGLU(8, 12), torch.nn.Linear(12, 8))
    feeds = {"hidden": np.random.default_rng(6).standard_normal((1, 5, 8)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert "mul(\n    fc 12 " in spec and "| fc 12 gelu" in spec, spec


def lift_norms(net) -> None:
    """Norms' scales and shifts away from 1 and 0, so that misreading them shows."""
    for m in net.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_diffusers_spatial_transformer_with_its_basic_transformer_block(tmp_path, exporter):
    # Transformer2DModel at 8 channels on a 4x6 latent with its real BasicTransformerBlock: self-attention,
    # cross-attention to 5 text steps of 12, and the GEGLU feed-forward (8 -> 2x32, chunked, -> 8), each
    # behind a layernorm and added back
    torch.manual_seed(0)
    net = torch_models.Transformer2DModel(channels=8, heads=2, context=12, groups=4)
    lift_norms(net)
    rng = np.random.default_rng(7)
    feeds = {"latent": rng.standard_normal((1, 8, 4, 6)).astype(np.float32),
             "text": rng.standard_normal((1, 5, 12)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert spec.count("layernorm") == 3 and "attention 2 from=text" in spec and "| fc 32 gelu" in spec, spec
    assert "conv 8@1x1 tokens as skip1" in spec and "image 4x6" in spec, spec


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_the_whole_sd_block_with_its_time_embedding_and_text(tmp_path, exporter):
    # tests/torch_models.py's SDBlock (ResnetBlock2D, then Transformer2DModel) at 8 channels in 4 groups, a
    # time embedding of 12 and 5 text steps of 12: specs/sd_block.dlc's layers at a small size
    torch.manual_seed(0)
    net = torch_models.SDBlock(channels=8, temb=12, heads=2, context=12, groups=4)
    lift_norms(net)
    rng = np.random.default_rng(8)
    feeds = {"latent": rng.standard_normal((1, 8, 4, 6)).astype(np.float32),
             "temb": rng.standard_normal((1, 12)).astype(np.float32),
             "text": rng.standard_normal((1, 5, 12)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, net, feeds, exporter)
    assert "input 12 as temb -> silu -> fc 8 -> reshape 8@1x1" in spec and spec.count("groupnorm 4") == 3, spec
    assert "| fc 32 gelu" in spec and "attention 2 from=text" in spec, spec


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_the_sd_block_at_full_size_imports_with_the_zoos_counts(tmp_path, exporter):
    # SD 1.5's down_blocks.0 block on a 64x64 latent: specs/sd_block.dlc's 26,915,880,960 MACs, and its
    # 4,801,280 params but for to_q and to_v's biases: diffusers has none of q, k and v's; the import drops
    # the key's (keybias=off) and writes the other two as zeros, 2 attentions x 2 x 320 more than the zoo's
    # `attention 8 bias=off -> shift channels`
    from dlc.analysis import analyse

    torch.manual_seed(0)
    args = (torch.randn(1, 320, 64, 64), torch.randn(1, 1280), torch.randn(1, 77, 768))
    torch_models.export(torch_models.SDBlock(), tmp_path / "sd.onnx", args, dynamo=EXPORTERS[exporter],
                        input_names=["latent", "temb", "text"], output_names=["y"])
    spec, _ = imported(tmp_path, tmp_path / "sd.onnx")
    totals = analyse(compile_spec(spec.read_text())).totals
    assert (totals.params, totals.macs) == (4_801_280 + 2 * 2 * 320, 26_915_880_960)
    assert "| fc 1280 gelu" in spec.read_text(), spec.read_text()


class SigmoidChunk(torch.nn.Module):
    """GLU written by hand: a Linear's output chunked, the first half times the second's sigmoid."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 24)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_chunk_gated_by_a_sigmoid_stays_glu_where_glu_takes_it(tmp_path, exporter):
    # dynamo writes the chunk as nn.GLU's Split, which the glu kind imports whole (`fc 24 glu`); TorchScript's
    # Slices with computed ends glu does not take, and they import as the halves' two fcs
    torch.manual_seed(0)
    feeds = {"hidden": np.random.default_rng(9).standard_normal((1, 5, 8)).astype(np.float32)}
    spec = exported_reproduces(tmp_path, SigmoidChunk(), feeds, exporter)
    assert ("fc 24 glu" if exporter == "dynamo" else "| fc 12 sigmoid") in spec, spec
