"""`dlc import` of transformers: PyTorch's nn.TransformerEncoderLayer (multi-head self-attention, causal or
not, pre- or post-norm) from both exporters, with torchvision's class token and GPT-2's tied output layer,
LayerNorm's decomposed form below opset 17, and dlc's own exports of attention, each reproducing
onnxruntime on the original file; attention that dlc's kind does not compute (another mask,
cross-attention, its weights read outside) is refused naming its first operator.

The expectation is onnxruntime's output on the file PyTorch wrote, and PyTorch's own parameter count.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import torch_models  # noqa: E402
from dlc.graph import Network  # noqa: E402
from test_onnx_import import assert_reproduces, imported, onnxruntime_output, refusal  # noqa: E402
from test_onnx_torch import EXPORTERS  # noqa: E402

D, HEADS, FF, STEPS, VOCAB = 16, 2, 32, 6, 11
ROOT = Path(__file__).parent.parent.parent


def encoder_layer(norm_first: bool) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True,
                                      norm_first=norm_first)


class ViT(nn.Module):
    """3@8x8 cut into four 4x4 patches, a class token, positions, two encoder layers, the class token's
    final state classified."""

    def __init__(self, norm_first: bool = True):
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = nn.Parameter(torch.zeros(1, 5, D))
        self.blocks = nn.ModuleList(encoder_layer(norm_first) for _ in range(2))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        # torchvision's form: TorchScript writes this expand's target with ConstantOfShape, Equal and Where,
        # which ONNX shape inference alone does not follow
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class GPT(nn.Module):
    """Token and position tables, two causal pre-norm layers, a final LayerNorm, scores over the vocabulary.
    `is_causal` marks the mask as causal (TorchScript then writes it with Trilu and Where); without it the
    mask is PyTorch's additive -inf table, which both exporters store as a constant."""

    def __init__(self, is_causal: bool = True):
        super().__init__()
        self.is_causal = is_causal
        self.emb = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.zeros(STEPS, D))
        self.blocks = nn.ModuleList(encoder_layer(True) for _ in range(2))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.emb(ids) + self.pos
        mask = nn.Transformer.generate_square_subsequent_mask(STEPS)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=self.is_causal)
        return self.head(self.norm(x))


class TiedGPT(GPT):
    """GPT-2's output layer: the scores are the token table (transposed) times the final states, the same
    Parameter as the embedding's, which PyTorch's parameter count takes once."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(D, VOCAB, bias=False)
        self.head.weight = self.emb.weight


def with_random_parameters(net: nn.Module) -> nn.Module:
    """Every parameter drawn afresh (LayerNorm's ones and zeros too), so that no two are equal, which the
    dynamo exporter would store once, and a gamma taken for a beta would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def export(net: nn.Module, path, x, dynamo: bool, **kwargs) -> None:
    """Exported with the fused fast path off. In eval mode without gradients nn.TransformerEncoderLayer
    calls torch._transformer_encoder_layer_fwd, which the TorchScript exporter refuses; with the fast path
    off it runs its plain operators (nn.MultiheadAttention's in-projection, heads, softmax, out-projection),
    the graph any exporter writes for such a model."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch_models.export(net, path, (x,), dynamo=dynamo, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def saved_parameters(weights) -> int:
    from dlc.engine.params import load_checkpoint

    return sum(a.size for a in load_checkpoint(weights)[0].values())


MODELS = {  # name: (the network, its example input, whether its attention is causal)
    "vit": (lambda: ViT(), lambda: torch.randn(1, 3, 8, 8), False),
    "vit-postnorm": (lambda: ViT(norm_first=False), lambda: torch.randn(1, 3, 8, 8), False),
    "gpt": (lambda: GPT(), lambda: torch.randint(0, VOCAB, (1, STEPS)), True),
    "gpt-additive-mask": (lambda: GPT(is_causal=False), lambda: torch.randint(0, VOCAB, (1, STEPS)), True),
    "gpt-tied": (lambda: TiedGPT(), lambda: torch.randint(0, VOCAB, (1, STEPS)), True),
}
# TorchScript at opset 16 writes LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add; the dynamo
# exporter cannot go below opset 18 (its version converter has no LayerNormalization before 17). From opset
# 23 on dynamo writes each attention's core as one ONNX Attention operator.
CASES = [(m, e, None) for m in MODELS for e in EXPORTERS] + [("vit", "torchscript", 16), ("gpt", "torchscript", 16)] \
    + [(m, "dynamo", 23) for m in MODELS]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}" + (f"-opset{c[2]}" if c[2] else ""))
def exported(request, tmp_path_factory):
    name, exporter, opset = request.param
    make, example, causal = MODELS[name]
    torch.manual_seed(0)
    net = with_random_parameters(make())
    folder = tmp_path_factory.mktemp(f"attention_{name}_{exporter}")
    kwargs = {"opset_version": opset} if opset else {}
    export(net, folder / "m.onnx", example(), EXPORTERS[exporter], **kwargs)
    return folder, net, example, causal, opset


def test_pytorch_transformers_import_and_reproduce_onnxruntime(exported):
    folder, net, example, causal, opset = exported
    spec, weights = imported(folder, folder / "m.onnx")
    text = spec.read_text()
    steps = [line.split("#")[0].strip() for line in text.splitlines()]
    assert steps.count("attention 2 causal" if causal else "attention 2") == 2, text
    # two per block and the final one (some as suffixes), from the operator or (opset 16) its decomposition
    assert " ".join(steps).split().count("layernorm") == 5, text
    if opset:
        assert f"opset {opset}" in text
    # a tied output layer reads the embedding's table, which it names, instead of a copy
    tied = isinstance(net, TiedGPT)
    assert ("embed 16 vocab=11 as tok" in text and f"fc {VOCAB} tied=tok bias=off" in text) == tied, text
    assert saved_parameters(weights) == sum(p.numel() for p in net.parameters())
    # and the file's own analysis counts them so: a stored mask or scale is a constant, not a parameter
    # (both exporters store a tied table a second time, transposed, which the analysis counts twice)
    assert onnx_params(folder / "m.onnx") == sum(p.numel() for p in net.parameters()) + tied * D * VOCAB

    x = example().numpy()
    assert_reproduces(folder, spec, weights, x, onnxruntime_output(folder / "m.onnx", x))


def onnx_params(path) -> int:
    import json

    from test_onnx_import import run

    r = run("params", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)["totals"]["params"]


class CausalSelfAttention(nn.Module):
    """A token table and causal self-attention as GPT-like code writes it by hand: one packed projection
    split in three, heads by view and transpose, F.scaled_dot_product_attention told is_causal or given
    an additive mask (a registered buffer), heads joined, the output projection; or nn.MultiheadAttention
    given that mask."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.emb, self.qkv, self.out = nn.Embedding(VOCAB, D), nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(STEPS))

    def forward(self, ids):
        x = self.emb(ids)
        if self.form == "multihead":
            return self.mha(x, x, x, attn_mask=self.mask, need_weights=False)[0]
        n = x.shape[0]
        q, k, v = (t.view(n, STEPS, HEADS, D // HEADS).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True) if self.form == "is-causal" else \
            F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(y.transpose(1, 2).reshape(n, STEPS, D))


# dynamo's forms: below opset 23 Mul/MatMul/Softmax/MatMul; from 23 on one Attention operator; unoptimised
# (the default before torch 2.9) the scale computed from the queries' shape (CastLike, Sqrt, Div) and a
# packed projection split by SplitToSequence and SequenceAt
DYNAMO_FORMS = {"default-opset": {}, "opset23": {"opset_version": 23}, "unoptimised": {"optimize": False}}


@pytest.mark.parametrize("variant", DYNAMO_FORMS)
@pytest.mark.parametrize("form", ["is-causal", "additive-mask", "multihead"])
def test_dynamo_attention_imports_and_analyses_as_its_spec(tmp_path, form, variant):
    # each imports as dlc's causal attention, reproduces onnxruntime, and the file's analysis counts what
    # the spec's does (its mask buffer and its scale constants, not parameters)
    import json

    from test_onnx_import import run

    torch.manual_seed(0)
    net = with_random_parameters(CausalSelfAttention(form))
    export(net, tmp_path / "m.onnx", torch.randint(0, VOCAB, (1, STEPS)), dynamo=True, **DYNAMO_FORMS[variant])
    spec, weights = imported(tmp_path, tmp_path / "m.onnx")
    steps = [line.split("#")[0].strip() for line in spec.read_text().splitlines()]
    assert steps.count("attention 2 causal") == 1, spec.read_text()
    used = sum(p.numel() for name, p in net.named_parameters() if name.startswith(("emb", "mha" if
                                                                                   form == "multihead" else "q")))
    used += 0 if form == "multihead" else sum(p.numel() for p in net.out.parameters())
    assert saved_parameters(weights) == used

    x = torch.randint(0, VOCAB, (1, STEPS)).numpy()
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(tmp_path / "m.onnx", x))
    figures = [json.loads(run("flops", path, "--json").output)["totals"] for path in (tmp_path / "m.onnx", spec)]
    assert figures[0]["macs"] == figures[1]["macs"] == 4 * STEPS * D * D + 2 * STEPS * STEPS * D
    assert figures[0]["not_counted"] == 0
    figures = [json.loads(run("params", path, "--json").output)["totals"] for path in (tmp_path / "m.onnx", spec)]
    assert figures[0]["params"] == figures[1]["params"] == used


DYNAMIC_BATCH = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": {"x": {0: "N"}, "y": {0: "N"}}}


@pytest.mark.parametrize("exporter, kwargs", [("torchscript", {}), ("dynamo", {}), ("torchscript", DYNAMIC_BATCH),
                                             ("dynamo", {"opset_version": 23}), ("dynamo", {"optimize": False})],
                         ids=["torchscript", "dynamo", "torchscript-dynamic-batch", "dynamo-opset23",
                              "dynamo-unoptimised"])
def test_the_vit_analyses_with_every_shape_and_its_macs_by_hand(tmp_path, exporter, kwargs):
    # the class token's expand leaves no node without a shape, and the MACs are the conventions' by hand:
    # patches 16@2x2 from 3x4x4 windows 16*4*48 = 3,072; per layer on T=5, D=16: attention 5*4*16^2 +
    # 2*5^2*16 = 5,920 and the feed-forward 2*5*16*32 = 5,120; the head 16*3 on the class token
    import json

    from test_onnx_import import run

    torch.manual_seed(0)
    export(ViT(), tmp_path / "m.onnx", torch.randn(1, 3, 8, 8), EXPORTERS[exporter], **kwargs)
    r = run("flops", tmp_path / "m.onnx", "--all", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [row["name"] for row in doc["layers"] if not row["out_shape"]] == []
    assert doc["totals"]["macs"] == 3_072 + 2 * (5_920 + 5_120) + 48


# dlc's own exports of attention (every projection its own MatMul, heads by Reshape/Transpose, the causal
# mask by Where): the zoo's small encoder, and causal, bias-free and one-head layers with post-norm, one
# right after an fc (whose MatMul the attention must leave alone) and one right after another
OWN_SPECS = {
    "transformer_reverse": "specs/transformer_reverse.dlc",
    "variants": "input seq 7 of 12\nadd( attention 3 causal | identity ) -> layernorm eps=1e-6 -> fc 12 bias=off\n"
                "attention 4 bias=off causal -> attention 1 -> seqpool last -> fc 5 softmax\n",
    # specs/gpt2_small.dlc's pattern at a small size: the output layer reuses the token table
    "tied": "input seq 6\nembed 16 vocab=11 as tok -> posembed\nadd( layernorm -> attention 2 causal | identity )\n"
            "add( layernorm -> fc 32 gelu -> fc 16 | identity )\nlayernorm -> fc 11 tied=tok bias=off softmax\n",
    # Llama's and Mistral's options: grouped and multi-query kv heads, rope (RotaryEmbedding at the
    # default opset 23), a sliding window, no biases
    "llama": "input seq 7 of 16\nadd( layernorm -> attention 4 kv=2 rope=500000 causal window=3 bias=off | identity )\n"
             "attention 2 kv=1 rope causal -> attention 4 rope=20000 -> seqpool last -> fc 5 softmax\n",
}


@pytest.mark.parametrize("name,opset", [(name, None) for name in OWN_SPECS] + [("llama", 13)],
                         ids=[*OWN_SPECS, "llama at opset 13 (rope's cos/sin tables)"])
def test_dlc_exports_of_attention_import_back(tmp_path, name, opset):
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params
    from dlc.onnx.export import save_model, to_onnx

    source = OWN_SPECS[name]
    text = (ROOT / source).read_text() if source.endswith(".dlc") else source
    graph = compile_spec(text)
    params, state = init_params(graph, seed=1)
    rng = np.random.default_rng(2)
    for k in params:  # biases and betas away from zero, so that a bias put in the wrong place would show
        if k.split(".")[-1] in ("bq", "bk", "bv", "bo", "b", "beta"):
            params[k] = rng.uniform(-0.5, 0.5, params[k].shape).astype(np.float32)
    save_model(to_onnx(Network(graph, params, state), opset=opset), tmp_path / "m.onnx")
    spec, weights = imported(tmp_path, tmp_path / "m.onnx")
    back = compile_spec(spec.read_text())
    assert [n.kind for n in back.nodes] == [n.kind for n in graph.nodes]
    for option in ("causal", "kv", "rope", "window"):
        assert [n.attrs.get(option) for n in back.nodes] == [n.attrs.get(option) for n in graph.nodes], option
    assert [n.attrs.get("tied") is not None for n in back.nodes] == [n.attrs.get("tied") is not None
                                                                      for n in graph.nodes]
    assert saved_parameters(weights) == sum(a.size for a in params.values())
    shape = (2, *graph.input.out_shape)
    vocab = next((n.attrs["vocab"] for n in graph.nodes if n.kind == "embed"), None)
    x = rng.integers(0, vocab, shape) if vocab else rng.standard_normal(shape).astype(np.float32)
    assert_reproduces(tmp_path, spec, weights, x, onnxruntime_output(tmp_path / "m.onnx", x))


def test_the_zoo_encoder_has_its_published_parameter_count():
    # 102,928 by hand in the spec's header; the import test above compares the import with this
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params

    graph = compile_spec((ROOT / "specs/transformer_reverse.dlc").read_text())
    assert sum(a.size for a in init_params(graph, seed=0)[0].values()) == 102_928


class Attention(nn.Module):
    """An embedding and one nn.MultiheadAttention, called as each refusal needs."""

    def __init__(self, call):
        super().__init__()
        self.emb, self.fc, self.attn, self.call = nn.Embedding(VOCAB, D), nn.Linear(D, D), \
            nn.MultiheadAttention(D, HEADS, batch_first=True), call

    def forward(self, ids):
        return self.call(self, self.emb(ids))


def sum_with_weights(y, weights):
    return y + weights.sum()  # the attention weights (need_weights=True) read beside the output


REFUSED = {  # name: (the call, what the refusal says)
    # each step sees itself, the steps before it and one step after it
    "band-mask": (lambda m, x: m.attn(x, x, x, attn_mask=torch.triu(torch.full((STEPS, STEPS), -math.inf), 2),
                                      need_weights=False)[0], "with the causal mask (each step sees itself"),
    "cross-attention": (lambda m, x: m.attn(x, m.fc(x), m.fc(x), need_weights=False)[0], "cross-attention"),
    "weights-read": (lambda m, x: sum_with_weights(*m.attn(x, x, x)), "is read outside it"),
}


@pytest.mark.parametrize("exporter, opset", [("torchscript", None), ("dynamo", None), ("dynamo", 23)],
                         ids=["torchscript", "dynamo", "dynamo-opset23"])
@pytest.mark.parametrize("case", REFUSED)
def test_attention_dlc_does_not_compute_is_refused_at_its_first_operator(tmp_path, case, exporter, opset):
    import onnx

    call, why = REFUSED[case]
    torch.manual_seed(0)
    kwargs = {"opset_version": opset} if opset else {}
    export(Attention(call), tmp_path / "m.onnx", torch.randint(0, VOCAB, (1, STEPS)), EXPORTERS[exporter], **kwargs)
    # its first operator: the first to read the embedding's output on the way to the projections
    nodes = onnx.load(tmp_path / "m.onnx").graph.node
    table = next(n for n in nodes if n.op_type == "Gather").output[0]
    first = next(n for n in nodes if table in n.input and n.op_type == "Transpose")
    out = refusal(tmp_path, tmp_path / "m.onnx")
    assert f"cannot import operator Transpose (node `{first.name}`)" in out and why in out


@pytest.mark.parametrize("interleave", [False, True], ids=["expand", "repeat_interleave"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_llama_style_attention_from_pytorch(tmp_path, exporter, interleave):
    # Hugging Face Llama's rotate-half rope (theta 500000), kv heads repeated, a Mistral window
    torch.manual_seed(0)
    net = with_random_parameters(torch_models.LlamaBlock(interleave=interleave))
    x = torch.randn(1, STEPS, D)
    export(net, tmp_path / "m.onnx", x, EXPORTERS[exporter])
    spec, weights = imported(tmp_path, tmp_path / "m.onnx")
    steps = [line.split("#")[0].strip(" |") for line in spec.read_text().splitlines()]
    assert "attention 4 causal kv=2 rope=500000 bias=off" in steps, steps
    assert "attention 4 causal kv=1 window=3 rope bias=off" in steps, steps
    assert saved_parameters(weights) == sum(p.numel() for p in net.parameters())
    assert_reproduces(tmp_path, spec, weights, x.numpy(), onnxruntime_output(tmp_path / "m.onnx", x.numpy()))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_whole_llama_character_model_from_pytorch(tmp_path, exporter, tied):
    # the model tests/train/test_llama_char.py trains: token table, two layers of RMSNorm, rope attention
    # with kv=2 (repeat_interleave), SwiGLU, a final RMSNorm and the head, end to end from token ids
    torch.manual_seed(0)
    net = with_random_parameters(torch_models.LlamaLM(40, 32, 4, 2, 64, 2, tied))
    x = torch.randint(0, 40, (1, 16))
    export(net, tmp_path / "m.onnx", x, EXPORTERS[exporter])
    spec, weights = imported(tmp_path, tmp_path / "m.onnx")
    steps = [line.split("#")[0].strip(" |") for line in spec.read_text().splitlines()]
    assert steps.count("attention 4 causal kv=2 rope bias=off") == 2, steps
    assert steps.count("rmsnorm") == 5 and steps.count("fc 64 bias=off silu") == 2, steps
    assert ("fc 40 tied=skip1 bias=off" if tied else "fc 40 bias=off") in steps, steps
    assert saved_parameters(weights) == sum(p.numel() for p in net.parameters())  # a tied table once
    assert_reproduces(tmp_path, spec, weights, x.numpy(), onnxruntime_output(tmp_path / "m.onnx", x.numpy()))


def own_export_edited(tmp_path, spec, edit) -> str:
    """dlc's export of a spec with one of its constants changed, then imported."""
    import onnx
    from onnx import numpy_helper

    from dlc.compile import compile_spec
    from dlc.engine.params import init_params
    from dlc.onnx.export import to_onnx

    graph = compile_spec(spec)
    model = to_onnx(Network(graph, *init_params(graph, seed=0)))
    for n in model.graph.node:
        if n.op_type == "Constant" and n.name in edit:
            value = n.attribute[0]
            value.t.CopyFrom(numpy_helper.from_array(edit[n.name](numpy_helper.to_array(value.t)), n.name))
    onnx.save(model, tmp_path / "m.onnx")
    return refusal(tmp_path, tmp_path / "m.onnx")


def test_a_mask_that_is_not_causal_is_refused(tmp_path):
    # the first step's future left unmasked: one row differs from the causal mask
    def unmask_row_zero(future):
        future = future.copy()
        future[0] = False
        return future

    out = own_export_edited(tmp_path, "input seq 5 of 8\nattention 2 causal", {"attention1/future": unmask_row_zero})
    assert "cannot import operator MatMul (node `attention1/q/product`)" in out and "its scores are masked" in out


def test_another_scale_than_one_over_sqrt_head_dim_is_refused(tmp_path):
    out = own_export_edited(tmp_path, "input seq 5 of 8\nattention 2", {"attention1/scale": lambda s: s * s})  # 1/dh
    assert "cannot import operator MatMul (node `attention1/q/product`)" in out and "does not compute softmax" in out


def test_a_rotation_dlc_does_not_compute_is_refused(tmp_path):
    # RotaryEmbedding's sin cache negated: each step turns the other way, which no theta gives
    out = own_export_edited(tmp_path, "input seq 5 of 8\nattention 2 rope", {"attention1/sin_cache": lambda s: -s})
    assert "cannot import operator MatMul (node `attention1/q/product`)" in out and "does not compute softmax" in out


def test_a_band_that_is_no_sliding_window_is_refused(tmp_path):
    # the window's band with one step seen past it in the last row only: no window=N masks so
    def widen_last_row(hidden):
        hidden = hidden.copy()
        hidden[-1, 0] = False
        return hidden

    out = own_export_edited(tmp_path, "input seq 6 of 8\nattention 2 causal window=2",
                            {"attention1/future": widen_last_row})
    assert "cannot import operator MatMul (node `attention1/q/product`)" in out and "a window of them" in out


class OtherScale(CausalSelfAttention):
    """scaled_dot_product_attention given its own scale, not 1/sqrt(head_dim)."""

    def forward(self, ids):
        x = self.emb(ids)
        q, k, v = (t.view(1, STEPS, HEADS, D // HEADS).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v, scale=0.1).transpose(1, 2).reshape(1, STEPS, D))


@pytest.mark.parametrize("opset", [None, 23], ids=["default-opset", "opset23"])
def test_scaled_dot_product_attention_with_another_scale_is_refused_at_its_projection(tmp_path, opset):
    import onnx

    kwargs = {"opset_version": opset} if opset else {}
    export(OtherScale("is-causal"), tmp_path / "m.onnx", torch.randint(0, VOCAB, (1, STEPS)), True, **kwargs)
    nodes = onnx.load(tmp_path / "m.onnx").graph.node
    table = next(n for n in nodes if n.op_type == "Gather").output[0]
    first = next(n for n in nodes if table in n.input)
    out = refusal(tmp_path, tmp_path / "m.onnx")
    assert f"cannot import operator MatMul (node `{first.name}`)" in out and "does not compute softmax" in out, out
