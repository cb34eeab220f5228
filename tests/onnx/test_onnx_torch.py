"""dlc's figures for models PyTorch exported, with both of its exporters, against published and
hand-computed figures.

torchvision's GFLOPS (MACs): ResNet-18 1,814,073,344; ResNet-50 4,089,184,256; MobileNet v2 300,774,272.
Both exporters fold BatchNormalization into the convolutions, so the file holds each conv's weights
plus one bias per channel: the published parameter count less one value per bn channel.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from click.testing import CliRunner

from dlc.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it

from torch import nn  # noqa: E402

import torch_models  # noqa: E402

EXPORTERS = {"torchscript": False, "dynamo": True}
PUBLISHED = {  # name: (params, MACs)
    "resnet18": (11_689_512, 1_814_073_344),
    "resnet50": (25_557_032, 4_089_184_256),
    "mobilenet_v2": (3_504_872, 300_774_272),
}
# issue 21's networks (tests/test_zoo.py): torchvision's counts and MACs, MobileNetV3-Large's MACs its twin's
VISION = {
    "efficientnet_b0": (5_288_548, 385_814_752),
    "mobilenet_v3_large": (5_483_032, 216_589_760),
    "convnext_tiny": (28_589_128, 4_455_531_264),
}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def figures(path, *args) -> dict:
    r = run("summary", path, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def with_distinct_bn(model: nn.Module) -> nn.Module:
    """Random bn statistics, LayerNorm scales and shifts and layer scales: with the fresh ones (mean 0, var 1,
    shift 0; ConvNeXt's 1e-6) every folded bias is zero, norms are alike, and the TorchScript exporter stores
    those identical tensors once."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            for t in (m.weight.data, m.bias.data, m.running_mean, m.running_var):
                t.uniform_(0.5, 1.5)
        if isinstance(m, nn.LayerNorm):
            for t in (m.weight.data, m.bias.data):
                t.uniform_(0.5, 1.5)
        if isinstance(m, torch_models.CNBlock):
            m.layer_scale.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=[(n, e) for n in PUBLISHED for e in EXPORTERS], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    name, exporter = request.param
    net = with_distinct_bn(getattr(torch_models, name)())
    path = tmp_path_factory.mktemp(f"{name}_{exporter}") / f"{name}.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 224, 224),), dynamo=EXPORTERS[exporter])
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    yield name, path, sum(p.numel() for p in net.parameters()), bn_channels
    shutil.rmtree(path.parent)  # ResNet-50's file and its exporter's data: 98 MB


def test_the_torch_fixtures_have_torchvisions_parameter_counts(exported):
    name, _, params, _ = exported
    assert params == PUBLISHED[name][0]


def test_torchvision_macs_and_parameters_from_both_exporters(exported):
    name, path, _, bn_channels = exported
    doc = figures(path)
    assert doc["totals"]["macs"] == PUBLISHED[name][1]
    assert doc["totals"]["params"] == PUBLISHED[name][0] - bn_channels
    assert doc["totals"]["not_counted"] == 0
    assert doc["layers"][0]["out_shape"] == [3, 224, 224] and doc["layers"][-1]["out_shape"] in ([1000], [1, 1000])


def hooked_macs(model: nn.Module, x) -> int:
    """The multiply-accumulates of every Conv2d and Linear in one forward pass, counted by forward hooks as
    torchvision's `_ops` counts them: each output element times the inputs its weights read."""
    total = 0

    def count(m, inputs, y):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += y.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += y.numel() * m.in_features
    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("name", VISION)
def test_the_vision_twins_have_torchvisions_figures_and_the_zoos(name):
    from dlc.analysis import analyse
    from dlc.compile import compile_spec
    from dlc.zoo import zoo_path

    net = getattr(torch_models, name)()
    assert (sum(p.numel() for p in net.parameters()), hooked_macs(net, torch.randn(1, 3, 224, 224))) == VISION[name]
    t = analyse(compile_spec(zoo_path(name).read_text())).totals
    assert (t.params, t.macs) == VISION[name]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", VISION)
def test_the_vision_networks_from_both_exporters_count_as_torchvisions_and_say_what_was_folded(tmp_path, name,
                                                                                             exporter):
    net = with_distinct_bn(getattr(torch_models, name)())
    path = tmp_path / f"{name}.onnx"
    torch_models.export(net, path, (torch.randn(1, 3, 224, 224),), dynamo=EXPORTERS[exporter])
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    doc = figures(path)
    # a folded bn leaves one bias per channel of its gamma and beta (ConvNeXt has none: its norms are LayerNorms)
    assert (doc["totals"]["params"], doc["totals"]["macs"]) == (VISION[name][0] - bn_channels, VISION[name][1])
    assert doc["totals"]["not_counted"] == 0
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert doc["onnx"]["folded_batchnorms"] == bns
    r = run("summary", path)
    assert (f"folded: {bns} convs carry the BatchNorm" in r.output) == (bns > 0), r.output


def export_small(tmp_path, module: nn.Module, example, dynamo: bool, **kwargs):
    path = tmp_path / f"{type(module).__name__}_{int(dynamo)}.onnx"
    torch_models.export(module, path, example, dynamo=dynamo, **kwargs)
    return path


class BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(10, 20, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.lstm(x)[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_lstm_counts_every_step_and_direction(tmp_path, dynamo):
    doc = figures(export_small(tmp_path, BiLSTM(), (torch.randn(1, 7, 10),), dynamo))
    t, d, h, dirs = 7, 10, 20, 2
    assert doc["totals"]["macs"] == t * dirs * 4 * h * (d + h)  # 33,600
    assert doc["totals"]["params"] == dirs * (4 * h * (d + h) + 8 * h)  # ONNX's two bias vectors: 5,120
    # 2 per MAC, and per step and direction: Wx + Rh joined and two bias adds (3 per gate unit), and
    # the gates' elementwise work (9 per hidden unit)
    assert doc["totals"]["flops"] == 2 * 33_600 + t * dirs * (3 * 4 * h + 9 * h)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_transposed_conv_is_counted_by_its_input_channels(tmp_path, dynamo):
    doc = figures(export_small(tmp_path, nn.ConvTranspose2d(8, 4, 3, stride=2), (torch.randn(1, 8, 5, 5),), dynamo))
    assert doc["layers"][-1]["out_shape"] == [4, 11, 11]
    assert doc["totals"]["macs"] == 8 * 5 * 5 * 4 * 3 * 3  # C_in * H_in * W_in * C_out * k * k
    assert doc["totals"]["flops"] == 2 * 7_200 + 4 * 11 * 11
    assert doc["totals"]["params"] == 8 * 4 * 9 + 4


class Block(nn.Module):
    """Token embedding, single-head self-attention with a residual and LayerNorm, a ReLU MLP."""

    def __init__(self, vocab=100, d=16, ff=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln = nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, ids):
        x = self.emb(ids)
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        x = self.ln(x + self.o(torch.softmax(scores, dim=-1) @ self.v(x)))
        return x + self.ff2(torch.relu(self.ff1(x)))


@pytest.mark.parametrize("dynamo,opset", [(False, 16), (False, 17), (True, 18)],
                         ids=["torchscript-decomposed-layernorm", "torchscript", "dynamo"])
def test_transformer_block(tmp_path, dynamo, opset):
    t, d, ff, vocab = 8, 16, 32, 100
    doc = figures(export_small(tmp_path, Block(vocab, d, ff), (torch.randint(0, vocab, (1, t)),), dynamo,
                               opset_version=opset))
    assert doc["layers"][0]["out_shape"] == [t]
    assert doc["totals"]["params"] == vocab * d + 4 * (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d)
    # four projections, QK^T and the weighted sum of values, the MLP
    assert doc["totals"]["macs"] == 4 * t * d * d + 2 * t * t * d + 2 * t * d * ff
    biases = 4 * t * d + t * ff + t * d
    layernorm = 7 * t * d + 2 * t  # fused or decomposed alike
    elementwise = t * t + 3 * t * t + t * ff + 2 * t * d  # scale, softmax, relu, two residual adds
    assert doc["totals"]["flops"] == 2 * doc["totals"]["macs"] + biases + layernorm + elementwise


class RotaryLM(nn.Module):
    """A small causal LM as dynamo meets it in Llama-like code: RMSNorm, rotary positions from stored cos
    and sin tables (registered buffers, rotate-half), an additive causal mask (a registered buffer),
    a SwiGLU feed-forward, a learned position table (a Parameter added to the embeddings, which stays a
    parameter) and biases on the queries and keys (vectors added on attention's way: parameters)."""

    def __init__(self, vocab: int, t: int, d: int, heads: int):
        super().__init__()
        self.t, self.heads = t, heads
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(t, d))
        self.norm = torch_models.RMSNorm(d)
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.v, self.o = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.ff = torch_models.SwiGLUBlock(d, 2 * d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((t, t), -math.inf), 1))
        dh = d // heads
        angles = torch.arange(t)[:, None] * 10000 ** (-torch.arange(0, dh, 2) / dh)
        self.register_buffer("cos", torch.cat([angles, angles], -1).cos())
        self.register_buffer("sin", torch.cat([angles, angles], -1).sin())

    def rotary(self, x):
        half = x.shape[-1] // 2
        return x * self.cos + torch.cat([-x[..., half:], x[..., :half]], -1) * self.sin

    def forward(self, ids):
        x = self.emb(ids) + self.pos
        n, (t, d) = x.shape[0], x.shape[1:]
        h = self.norm(x)
        q, k, v = (p(h).view(n, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = self.rotary(q) @ self.rotary(k).transpose(-2, -1) / math.sqrt(d // self.heads) + self.mask
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        return self.head(self.ff(x + self.o(y)))


def test_stored_rotary_tables_and_masks_are_constants_not_parameters(tmp_path):
    # dynamo stores the registered buffers (the mask, the cos and sin tables) as initializers beside the
    # weights: they count apart, as constants, and params are PyTorch's own count
    t, d, vocab = 6, 16, 11
    net = RotaryLM(vocab, t, d, heads=2)
    path = export_small(tmp_path, net, (torch.randint(0, vocab, (1, t)),), True)
    doc = figures(path)
    assert doc["totals"]["params"] == sum(p.numel() for p in net.parameters())
    constants = sum(b.numel() for b in net.buffers())
    assert constants == t * t + 2 * t * (d // 2)
    assert doc["totals"]["constants"] == {"values": constants, "bytes": 4 * constants}
    assert "constants" in doc["conventions"]
    r = run("params", path)
    assert r.exit_code == 0, r.output
    assert f"constants: {constants:,} values" in r.output
    assert f"params: {sum(p.numel() for p in net.parameters()):,} trainable" in r.output


def randomised(model: nn.Module) -> nn.Module:
    """Every parameter drawn at random: fresh norms (ones, zeros) are identical tensors, which the
    TorchScript exporter stores once."""
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def small_swin() -> nn.Module:
    # tests/torch_models.py's Swin on a 1@16x16 image: 2x2 patches of 16, an 8x8 grid and 4x4 windows
    # (one block plain, one shifted), a merge, a 4x4 grid whose 4x4 windows span it
    return randomised(torch_models.SwinTransformer(dim=16, depths=(2, 2), heads=(2, 4), window=4, patch=2,
                                                   classes=10, channels=1))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_swin_bias_tables_expanded_by_the_exporter_are_named_with_their_learned_count(tmp_path, dynamo):
    # Both exporters fold each table[relative_position_index] lookup into a stored (1, heads, 16, 16)
    # tensor: 2*256 + 2*256 + 4*256 + 4*256 = 3,072 values for tables of (2*4-1)^2 = 49 offsets per head,
    # 2*49 + 2*49 + 4*49 + 4*49 = 588 learned values. The file's params leave them out; the report says
    # how many values are learned behind them, and params + those is PyTorch's own count.
    net = small_swin()
    doc = figures(export_small(tmp_path, net, (torch.randn(1, 1, 16, 16),), dynamo))
    assert doc["totals"]["expanded_biases"] == {"tables": 4, "values": 3_072, "learned": 588}
    assert doc["totals"]["params"] + 588 == sum(p.numel() for p in net.parameters()) == 35_238
    r = run("params", tmp_path / f"SwinTransformer_{int(dynamo)}.onnx")
    assert "3,072 of them are 4 relative position bias tables (Swin's)" in r.output
    assert "the model's own count is 35,238 params" in r.output
