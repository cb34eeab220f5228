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
    torch_models.export(net, tmp_path / "resblock.onnx", tuple(torch.from_numpy(v) for v in feeds.values()),
                        dynamo=EXPORTERS[exporter], input_names=list(feeds), output_names=["y"])
    spec = reproduces(tmp_path, tmp_path / "resblock.onnx", feeds)
    assert "input 12 as temb -> silu -> fc 8 -> reshape 8@1x1 as temb_out" in spec and spec.count("groupnorm 4") == 2


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_diffusers_cross_attention_to_text(tmp_path, exporter):
    # to_q, to_k and to_v without bias (zeros in dlc's), keys and values from 5 text steps of 12 features
    torch.manual_seed(0)
    net = torch_models.Attention(16, 2, context=12)
    rng = np.random.default_rng(3)
    feeds = {"hidden": rng.standard_normal((1, 9, 16)).astype(np.float32),
             "text": rng.standard_normal((1, 5, 12)).astype(np.float32)}
    torch_models.export(net, tmp_path / "xattn.onnx", tuple(torch.from_numpy(v) for v in feeds.values()),
                        dynamo=EXPORTERS[exporter], input_names=list(feeds), output_names=["y"])
    spec = reproduces(tmp_path, tmp_path / "xattn.onnx", feeds)
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
    torch_models.export(net, tmp_path / "spatial.onnx", tuple(torch.from_numpy(v) for v in feeds.values()),
                        dynamo=EXPORTERS[exporter], input_names=list(feeds), output_names=["y"])
    spec = reproduces(tmp_path, tmp_path / "spatial.onnx", feeds)
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
