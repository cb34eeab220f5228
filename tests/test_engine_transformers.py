"""Whole transformers in the NumPy engine: a small causal language model and a small ViT checked against
central differences (float64, every entry, dropout masks fixed by the seed), tied weights receiving the
sum of both gradients, and `dlc gradcheck` on the same specs.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.gradcheck import check_gradients
from dlc.engine.params import init_params, tensors
from dlc.engine.run import backward, forward, loss_and_grads
from dlc.graph import Network

TOL = 1e-6

CAUSAL_LM = """\
input seq 5
embed 6 vocab=7 as tok
posembed -> dropout 0.1
block decoder(d, h, f) {
    add( layernorm -> attention h causal dropout=0.2 -> dropout 0.1 | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
decoder(6, 2, 8) x2
layernorm
fc 7 tied=tok softmax
"""

VIT = """\
input 2@4x4
conv 6@2x2/2 -> tokens
clstoken -> posembed
default layernorm eps=1e-6
block encoder(d, h, f) {
    add( layernorm -> attention h | identity )
    add( layernorm -> fc f gelu -> fc d | identity )
}
encoder(6, 3, 8) x2
layernorm -> seqpool first
fc 3 softmax
"""

# Llama's layer as far as the norm and the feed-forward go: rmsnorm before each branch, the SwiGLU
# product, no biases
LLAMA_LIKE = """\
input seq 5
embed 6 vocab=7
block decoder(d, h, f) {
    add( rmsnorm -> attention h causal bias=off | identity )
    add( rmsnorm -> mul( fc f silu bias=off | fc f bias=off ) -> fc d bias=off | identity )
}
decoder(6, 2, 8) x2
rmsnorm eps=1e-6
fc 7 bias=off softmax
"""

# squeeze-and-excite (Hu et al. 2018): a per-channel scale from the pooled image, times the image
SQUEEZE_EXCITE = """\
input 3@4x4
conv 4@3x3 pad=1 swish as feat
gap -> fc 2 relu -> fc 4 sigmoid
mul feat
gap -> fc 3 softmax
"""


def assert_every_gradient_matches(spec: str, **kw) -> set[str]:
    graph = compile_spec(spec, "test.dlc")
    layers = check_gradients(graph, every_entry=True, **kw)
    worst = {t.tensor: t.worst for r in layers for t in r.tensors}
    assert all(e < TOL for e in worst.values()), {k: e for k, e in worst.items() if e >= TOL}
    return set(worst)


def test_small_causal_language_model_gradients():
    checked = assert_every_gradient_matches(CAUSAL_LM)
    # every parameter, the shared table once (token ids have no gradient)
    graph = compile_spec(CAUSAL_LM)
    assert checked == {t.full_name for t in tensors(graph) if t.trainable}
    assert "fc1.W" not in checked and "embed1.W" in checked and "fc1.b" in checked


def test_small_vit_gradients():
    checked = assert_every_gradient_matches(VIT)
    assert {"input", "clstoken1.cls", "posembed1.P", "encoder1.attention1.Wq", "encoder2.attention1.bo"} <= checked


@pytest.mark.parametrize("spec", [LLAMA_LIKE, SQUEEZE_EXCITE], ids=["llama-like", "squeeze-excite"])
def test_rmsnorm_silu_and_mul_gradients(spec):
    checked = assert_every_gradient_matches(spec)
    # every parameter: the norms' gammas, the gate, up and down projections, the excitation's layers
    assert checked >= {t.full_name for t in tensors(compile_spec(spec)) if t.trainable}


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_sequence_classifier_gradients(pool):
    assert_every_gradient_matches(f"input seq 4 of 6\nattention 2 bias=off\nln -> seqpool {pool}\nfc 2 softmax")


def test_attention_without_the_keys_bias_gradients():
    # keybias=off (Whisper): self-, windowed and cross-attention, every gradient but bk's, which is none
    checked = assert_every_gradient_matches(
        "input seq 4 of 6 as src\ninput 6@2x2 as image\ntokens -> attention 2 keybias=off\n"
        "attention 2 window=2x1 keybias=off\nattention 3 from=src keybias=off\nln -> seqpool\nfc 2 softmax")
    assert {"attention1.bq", "attention2.bv", "attention3.bo", "attention3.Wk"} <= checked
    assert not any(name.endswith(".bk") for name in checked)


def test_tied_weights_receive_the_sum_of_both_gradients():
    # the tied network against its untied twin with the same values in both tables: the shared table's
    # gradient is the embedding's plus the output layer's
    tied = compile_spec("input seq 3\nembed 4 vocab=5 as tok\nfc 5 tied=tok bias=off softmax")
    twin = compile_spec("input seq 3\nembed 4 vocab=5\nfc 5 bias=off softmax")
    params, state = init_params(tied, seed=1, dtype=np.float64)
    assert set(params) == {"embed1.W"}
    twin_params = {"embed1.W": params["embed1.W"], "fc1.W": params["embed1.W"].copy()}
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (4, 3)), rng.integers(0, 5, (4, 3))
    value, _, grads = loss_and_grads(Network(tied, params, state), x, y, "xent")
    twin_value, _, twin_grads = loss_and_grads(Network(twin, twin_params, {}), x, y, "xent")
    assert value == pytest.approx(twin_value, rel=1e-12)
    np.testing.assert_allclose(grads["embed1.W"], twin_grads["embed1.W"] + twin_grads["fc1.W"], rtol=1e-12)
    assert not np.allclose(twin_grads["embed1.W"], 0) and not np.allclose(twin_grads["fc1.W"], 0)


def test_inference_keeps_nothing_for_backward():
    graph = compile_spec(CAUSAL_LM)
    params, state = init_params(graph)
    x = np.random.default_rng(3).integers(0, 7, (2, 5))
    y, tape = forward(Network(graph, params, state), x)
    assert tape is None and y.shape == (2, 5, 7)
    np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=1e-5)  # a distribution over the vocabulary per step
    _, tape = forward(Network(graph, params, state), x, keep=True)
    grads, dx = backward(tape, np.ones_like(y))
    assert dx is None and set(grads) == set(params)


@pytest.mark.parametrize("spec", [CAUSAL_LM, VIT, LLAMA_LIKE, SQUEEZE_EXCITE])
def test_gradcheck_command_on_transformers(spec):
    r = CliRunner().invoke(main, ["gradcheck", "-e", spec, "--all"])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "FAIL" not in r.output
