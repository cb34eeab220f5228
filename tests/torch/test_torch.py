"""The spec as a PyTorch module, and the torch trainer, against the NumPy trainer.

The NumPy kernels are checked against numerical gradients and onnxruntime (test_kernels_*); here
PyTorch's own layers, driven by the generated file, must compute what they compute: every zoo spec
and every docs/language.md example generates, compiles and counts `dlc params`; the outputs agree to 1e-5
(float64 on both) wherever the NumPy forward is quick enough; a training step gives the same loss.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from test_dsl_examples import ALEXNET, INCEPTION, LENET5, LSTM_TEXT, MOBILENET, RESNET50, UNET, VGG16, XOR  # noqa: E402

from dlc.analysis import analyse  # noqa: E402
from zoo_weights import WEIGHTS_MAX  # noqa: E402
from dlc.cli import main  # noqa: E402
from dlc.compile import compile_spec  # noqa: E402
from dlc.engine.params import init_params, load_checkpoint, save_checkpoint  # noqa: E402
from dlc.engine.run import predict  # noqa: E402
from dlc.graph import Network  # noqa: E402
from dlc.layers import KINDS, param_count  # noqa: E402
from dlc.layers.dense import token_vocab  # noqa: E402
from dlc.torch.trainer import network, torch_trainer  # noqa: E402
from dlc.train import optim  # noqa: E402
from dlc.train.builtin import BUILTIN_SIZES  # noqa: E402
from dlc.train.config import TrainConfig  # noqa: E402
from dlc.train.dataset import Data, Split, take  # noqa: E402
from dlc.train.trainer import NumpyTrainer, Running  # noqa: E402
from dlc.zoo import zoo_names, zoo_path  # noqa: E402

# Kinds the zoo and docs/language.md leave out or use one way only: every option path of the mapping.
EVERY_KIND = """\
input 3@11x11
conv 8@4x4/2 pad=same elu -> bn -> lrn 4          # pad=same, stride 2 on odd input: asymmetric pads
dwconv 3x3 mult=2 pad=1 selu -> maxpool 2 pad=same ceil as a  # 16@3x3
upconv 4@3x3/2 pad=1 gelu -> upsample 2 -> leaky -> relu6 -> noise 0.1 -> dropout 0.2 as b
avgpool 3/2 pad=same ceil -> identity -> sigmoid as c
gmp -> fc 6 bias=off -> tanh -> softmax
"""
MERGES = """\
input 4@6x6
conv 4@3x3 pad=1 relu as a
conv 4@1x1 -> add(identity | conv 4@1x1) -> concat(identity | conv 2@3x3 pad=1)
avgpool 2 pad=same -> gap -> fc 3
"""
RECURRENT = """\
input seq 5 of 7
gru 4 bidirectional sequences -> rnn 3 sequences -> lstm 6 bidirectional -> fc 2 sigmoid
"""
TOKENS = "input seq 9 -> embed 5 vocab=20 -> lstm 4 sequences -> gru 3 bidirectional -> fc 4 softmax"
# The transformer kinds: a causal LM whose output layer reuses the token table, a ViT in miniature
# (patches as tokens, a class token, attention dropout), and the options the zoo leaves out.
SMALL_LM = "input seq 8 -> embed 16 vocab=11 as tok -> posembed -> ln -> attention 2 causal -> fc 11 tied=tok softmax"
SMALL_VIT = """\
input 3@8x8
conv 16@4x4/4 -> tokens                # 16@2x2 -> 4x16
clstoken -> posembed                   # 5x16
add( layernorm eps=1e-6 -> attention 4 dropout=0.1 | identity )
add( layernorm -> fc 32 gelu -> fc 16 | identity )
layernorm -> seqpool first -> fc 10 softmax
"""
# rmsnorm, silu and mul: Llama's norm and SwiGLU feed-forward, squeeze-and-excite's channel scale
LLAMA_PARTS = ("input seq 6 of 8 -> rmsnorm -> add( mul( fc 12 silu bias=off | fc 12 bias=off ) -> fc 8 bias=off "
               "| identity ) -> rmsnorm eps=1e-6 -> mul( seqpool -> fc 8 swish | identity ) -> fc 3")
SQUEEZE_EXCITE = ("input 3@6x6 -> conv 4@3x3 pad=1 silu as feat -> gap -> fc 2 relu -> fc 4 sigmoid -> mul feat "
                  "-> gap -> rmsnorm -> fc 3")
SEQUENCE_OPTIONS = ("input seq 6 of 8 -> attention 2 bias=off -> concat(seqpool mean | seqpool last) -> layernorm "
                    "-> fc 3 bias=off -> fc 3 sigmoid")
# a mixture on a sequence and on a vector; the router ties of the third are broken as the engine breaks them
MIXTURE = ("input seq 5 of 6\nexperts 4 top=2 { fc 8 relu -> fc 6 }\nseqpool\n"
           "experts 3 top=1 balance=0.1 { fc 6 tanh }\nfc 3")
# Llama's and Mistral's attention options: grouped kv heads, rope, a sliding window, no biases
LLAMA_ATTENTION = """\
input seq 8 -> embed 16 vocab=11
add( layernorm -> attention 4 kv=2 rope=500000 causal window=3 bias=off | identity )
add( layernorm -> attention 2 kv=1 rope causal | identity )
fc 11 softmax
"""
# the math kinds of issue 28, every option path of their mappings (sqrt after softplus: positive inputs)
MATH = """\
input 4@6x6
conv 8@3x3 prelu channels -> glu -> softplus -> sqrt -> clip min=-1 max=1.2 -> softsign -> neg -> abs
exp -> clip max=2 -> prelu -> shift channels -> softmax axis=-1 -> reduce sum axis=1 keep -> reduce axis=1   # 4x4
logsoftmax axis=0 -> glu axis=1 -> prelu channels -> shift -> reduce axis=0 -> fc 3 logsoftmax
"""
# padding and resampling (issue 28): a CycleGAN generator's reflect-padded ends, every pad mode
RESAMPLING = ("input 3@8x8 -> pad 3 mode=reflect -> conv 4@7x7 instancenorm relu -> pad 0 bottom=1 right=2 value=1.5 "
              "-> pad 1 mode=replicate -> conv 2@3x3 -> upconv 3@3x3/2 pad=1 outpad=1 -> conv 8@1x1 -> pixelshuffle 2 -> maxpool 3/2 pad=1x0 dil=2 -> tile 2@2x1 -> slice 2 start=1 -> slice 3 start=-3 axis=height -> reshape 6@3x6 -> gap -> fc 3")
# issue 28: nn.Conv1d/3d, the pools, BatchNorm1d/3d, asymmetric pads and ceil windows on every axis
SIGNAL = ("input 2@20 -> conv 4@5/2 pad=same bn relu -> maxpool 3/2 pad=1 -> dwconv 3 mult=2 -> avgpool 2 ceil "
          "-> conv 3@2 pad=same as a -> maxpool 2/1 pad=same -> concat a -> softmax -> gmp -> fc 3")
VOLUME = ("input 2@5x9x9 -> conv 4@3x5x5/1x2x2 pad=1x2x2 bn relu -> maxpool 2 ceil -> add( conv 6@3/2 pad=1 bn "
          "| shortcut ) -> avgpool 3/2 pad=same -> dwconv 2 pad=same -> gap -> fc 3")
# the kinds of today's vision networks (issue 21): hard activations, squeeze-and-excite with 1x1 convs,
# ConvNeXt's channel layernorm, layer scale and stochastic depth
VISION = "input 4@8x8 -> conv 8@3x3 pad=1 hardswish -> mul( identity | gap keep -> conv 2@1x1 relu -> conv 8@1x1 hardsigmoid ) -> layernorm channels eps=1e-6 -> add( dwconv 3x3 pad=1 -> scale init=0.5 -> droppath 0.1 | identity ) -> gmp keep -> conv 3@1x1 -> gap -> layernorm -> fc 3"
# Swin: patches on a token grid, shifted windows, patchmerge, the grid pooled
SMALL_SWIN = """\
input 3@16x16
conv 8@2x2/2 -> tokens -> layernorm                    # an 8x8 grid of 8
add( layernorm -> attention 2 window=4x4 | identity )
add( layernorm -> attention 2 window=4x4 shift=2 dropout=0.1 | identity )
patchmerge -> layernorm -> fc 16 bias=off             # 4x4 of 16
add( layernorm -> attention 4 window=2x2 shift=1 bias=off | identity )
layernorm -> seqpool -> fc 3
"""
# Whisper's key projection without a bias, on plain and windowed attention
KEYBIAS = "input 4@4x4 -> tokens -> fc 8 -> attention 2 keybias=off -> attention 2 window=2x2 keybias=off -> seqpool -> fc 3"
# issue 22: BERT's table read at fewer steps, Whisper's sinusoids
POSITIONS = "input seq 6 of 8 -> posembed 10 -> posembed fixed -> attention 2 -> seqpool -> fc 3"
# issue 21: tokens and back to an image (Stable Diffusion's spatial transformer), a grid written too
IMAGE = "input 4@4x6 -> tokens -> fc 6 -> attention 2 -> image -> conv 3@3x3 -> tokens -> image 4x2 -> gap -> fc 3"
GROUPNORM = "input 6@5x5 -> conv 8@3x3 pad=1 -> groupnorm 4 eps=1e-6 silu -> conv 4@3 -> groupnorm 2 -> gap -> fc 3"
EXTRA = {"vision": VISION, "positions": POSITIONS, "groupnorm": GROUPNORM, "image": IMAGE, "signal": SIGNAL, "small_swin": SMALL_SWIN, "volume": VOLUME, "every_kind": EVERY_KIND, "merges": MERGES, "recurrent": RECURRENT, "tokens": TOKENS, "small_lm": SMALL_LM,
         "small_vit": SMALL_VIT, "sequence_options": SEQUENCE_OPTIONS,
         "llama_parts": LLAMA_PARTS, "squeeze_excite": SQUEEZE_EXCITE, "mixture": MIXTURE,
         "llama_attention": LLAMA_ATTENTION, "math": MATH, "resampling": RESAMPLING, "keybias": KEYBIAS}
EXAMPLES = {"lenet5_example": LENET5, "alexnet_example": ALEXNET, "vgg16_example": VGG16, "resnet50_example": RESNET50,
            "inception_example": INCEPTION, "mobilenet_example": MOBILENET, "unet_example": UNET,
            "lstm_text_example": LSTM_TEXT, "xor_example": XOR}
SPECS = {**{name: zoo_path(name).read_text() for name in zoo_names()}, **EXAMPLES, **EXTRA}
FORWARD_MACS = 0.8e9  # per sample: the NumPy engine's float64 forward of bigger specs takes too long here
COUNT_MACS = 15e9  # and above this even torch's forward takes seconds (ViT-B/16, GPT-2 small): generate and count


def graph_of(name: str):
    return compile_spec(SPECS[name], f"{name}.dlc")


def net_of(graph):
    return network(graph)["Net"]()


def random_weights(graph, seed=0):
    """Weights and bn statistics away from their initial constants, so every tensor's place matters."""
    params, state = init_params(graph, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for d in (params, state):
        for k, v in d.items():
            v[...] = rng.uniform(0.5, 1.5, v.shape) if k.endswith(".var") else v + 0.1 * rng.standard_normal(v.shape)
    return params, state


def sample(graph, n=2, seed=1):
    """A batch of the input, or a dict of one per input by name (BERT's ids, token types and mask)."""
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.integers(0, token_vocab(graph, i.name), (n, *i.out_shape)) if i.dtype.startswith("int")
             else rng.standard_normal((n, *i.out_shape)) for i in graph.inputs}
    return feeds if len(feeds) > 1 else feeds[graph.input.name]


def run_torch(net, graph, x, rows=None, dtype=None):
    """net's output on x (an array or a dict by input name): the first input positionally, the others by
    name; the first `rows` samples, floats cast to `dtype`."""
    def tensor(a):
        t = torch.from_numpy(a[:rows])
        return t.to(dtype) if dtype is not None and a.dtype.kind == "f" else t
    if not isinstance(x, dict):
        return net(tensor(x))
    first = graph.input.name
    return net(tensor(x[first]), **{k: tensor(v) for k, v in x.items() if k != first})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_file_compiles_counts_params_and_matches_numpy(name):
    graph = graph_of(name)
    trainable = sum(param_count(KINDS[n.kind], n.attrs, [graph.node(i).out_shape for i in n.inputs])[0]
                    for n in graph.nodes)
    if trainable > WEIGHTS_MAX:  # a language model's weights: counted on the meta device, which allocates nothing
        with torch.device("meta"):
            assert sum(p.numel() for p in net_of(graph).parameters()) == trainable
        return
    net = net_of(graph)
    assert sum(p.numel() for p in net.parameters()) == trainable  # what `dlc params` counts
    macs = analyse(graph).totals.macs
    if macs > COUNT_MACS:
        return
    x = sample(graph, n=1 if macs > 1e8 else 2)
    if macs > FORWARD_MACS:
        with torch.no_grad():
            y = run_torch(net.float().eval(), graph, x, rows=1, dtype=torch.float32)
        ys = y if isinstance(y, tuple) else (y,)  # forward returns several outputs as a tuple, in order
        assert [tuple(t.shape[1:]) for t in ys] == [node.out_shape for node in graph.outputs]
        return
    params, state = random_weights(graph)
    net.double().from_dlc({k: torch.from_numpy(v) for k, v in {**params, **state}.items()})
    with torch.no_grad():
        y = run_torch(net.eval(), graph, x).numpy()
    expected = predict(Network(graph, params, state), x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["recurrent", "tokens", "every_kind"])
def test_load_dlc_and_save_dlc_convert_checkpoints_both_ways(name, tmp_path):
    graph = graph_of(name)
    params, state = random_weights(graph)
    save_checkpoint(tmp_path / "in.npz", params, state)
    net = network(graph)["Net"].load_dlc(tmp_path / "in.npz")  # float32 module: values rounded once
    net.save_dlc(tmp_path / "out.npz")
    p2, s2, _ = load_checkpoint(tmp_path / "out.npz", graph)
    for mine, theirs in ((params, p2), (state, s2)):
        assert set(mine) == set(theirs)
        for k in mine:
            np.testing.assert_array_equal(theirs[k], mine[k].astype(np.float32), err_msg=k)


def test_export_command_writes_a_standalone_file(tmp_path):
    out = tmp_path / "net.py"
    r = CliRunner().invoke(main, ["export", "lenet5", "--format", "pytorch", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "61,706 params" in r.output  # conventions.md's LeNet-5
    imported = set()
    for node in ast.walk(ast.parse(out.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"ast", "ctypes", "json", "math", "zipfile", "torch"}  # torch and the standard library
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import net\n"
            "print(tuple(net.Net()(torch.zeros(2, 1, 32, 32)).shape))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.stdout.strip() == "(2, 10)", done.stderr[-2000:]
    r = CliRunner().invoke(main, ["export", "lenet5", "--format", "pytorch", "-o", str(out), "--seed", "1"])
    assert r.exit_code == 2 and "Net.load_dlc" in r.output


# ------------------------------------------------------------------------------ transformers

def test_gpt2_and_vit_generate_with_their_published_parameter_counts():
    # GPT2LMHeadModel("gpt2"): 124,439,808 with the output layer reusing the token table; torchvision's
    # ViT_B_16: 86,567,656 (the zoo specs' headers cite both)
    for name, published in (("gpt2_small", 124_439_808), ("vit_b16", 86_567_656)):
        net = net_of(graph_of(name))
        assert sum(p.numel() for p in net.parameters()) == published, name
    net = net_of(graph_of("small_lm"))  # the tied output layer holds the table's Parameter, not a copy
    assert net.fc1.weight is net.embed1.weight and "fc1.W" not in {row[0] for row in net.DLC_TENSORS}


def test_tied_weights_receive_the_sum_of_both_uses_gradients():
    graph = graph_of("small_lm")
    params, state = random_weights(graph)
    net = net_of(graph).double()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    x = torch.from_numpy(sample(graph, n=3))
    net(x, logits=True).square().sum().backward()
    shared = net.embed1.weight.grad.clone()
    # the same network with the two uses apart: the table's gradient is the sum of theirs
    apart = net_of(graph).double()
    apart.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    apart.fc1.weight = torch.nn.Parameter(apart.embed1.weight.detach().clone())
    apart(x, logits=True).square().sum().backward()
    torch.testing.assert_close(shared, apart.embed1.weight.grad + apart.fc1.weight.grad, rtol=1e-12, atol=1e-12)


def test_a_causal_step_does_not_see_later_tokens():
    graph = graph_of("small_lm")
    params, _ = random_weights(graph)
    net = net_of(graph).double().eval()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    x = torch.from_numpy(sample(graph, n=1))
    changed = x.clone()
    changed[0, 5] = (x[0, 5] + 1) % 11
    with torch.no_grad():
        a, b = net(x), net(changed)
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=0)  # steps 0-4 read tokens 0..their own
    assert not torch.allclose(a[0, 5:], b[0, 5:])


def test_attention_options_give_the_numpy_kernels_gradients():
    # torch's autograd through SelfAttention (repeat_interleave, rope, the window mask) against the NumPy
    # kernel's backward, float64, every tensor
    from dlc.engine.kernels import KERNELS, Ctx

    graph = compile_spec("input seq 7 of 16 -> attention 4 kv=2 rope=500000 causal window=3", "attn.dlc")
    node = graph.nodes[1]
    params, _ = random_weights(graph)
    mine = {k.split(".", 1)[1]: v for k, v in params.items()}
    x, dy = np.random.default_rng(3).standard_normal((2, 2, 7, 16))
    y, backward = KERNELS["attention"](node.attrs, mine, {}, [x], Ctx())
    (dx,), grads = backward(dy)
    net = net_of(graph).double()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    tx = torch.from_numpy(x).requires_grad_()
    ty = net(tx)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(ty.detach().numpy(), y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tx.grad.numpy(), dx, rtol=1e-10, atol=1e-12)
    module = getattr(net, node.name)
    for name, g in grads.items():
        np.testing.assert_allclose(getattr(module, name).grad.numpy(), g, rtol=1e-10, atol=1e-12, err_msg=name)


def test_swin_windows_and_patchmerge_give_the_numpy_engines_outputs_and_gradients():
    # the generated WindowAttention (gathered windows, bias table, shifted mask) and patchmerge
    grads, theirs = assert_same_outputs_and_gradients("small_swin")
    assert {"attention1.B", "attention2.B", "attention3.B"} <= set(grads) <= set(theirs)


def test_attention_without_the_keys_bias_gives_the_numpy_engines_outputs_and_gradients():
    # keybias=off: SelfAttention and WindowAttention hold no bk, as the NumPy engine and `dlc params`
    grads, theirs = assert_same_outputs_and_gradients("keybias")
    assert {"attention1.bq", "attention2.bv"} <= set(grads) <= set(theirs)
    assert not any(name.endswith(".bk") for name in theirs)


def assert_same_outputs_and_gradients(name: str) -> tuple[dict, dict]:
    """The generated network against the NumPy engine, float64: the network's output and every
    parameter's gradient; the engine's gradients and the torch network's DLC_TENSORS by dlc name."""
    from dlc.engine.run import backward, forward

    graph = graph_of(name)
    params, state = random_weights(graph)
    x = sample(graph, n=2)
    out, tape = forward(Network(graph, params, state), x, keep=True)
    dy = np.random.default_rng(4).standard_normal(out.shape)
    grads, _ = backward(tape, dy)
    net = net_of(graph).double()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    y = net.eval()(torch.from_numpy(x))
    (y * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), out, rtol=1e-10, atol=1e-12)
    theirs = {row[0]: row for row in net.DLC_TENSORS}
    for full, g in grads.items():
        node, tensor = full.rsplit(".", 1)
        module = getattr(net, node.replace(".", "_"))
        torch_name = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}.get(tensor, tensor)
        np.testing.assert_allclose(getattr(module, torch_name).grad.numpy(), g, rtol=1e-8, atol=1e-10,
                                   err_msg=full)
    return grads, theirs


def test_attention_dropout_drops_weights_in_training_only_and_keeps_the_mean():
    graph = compile_spec("input seq 4 of 6 -> attention 2 dropout=0.5", "drop.dlc")
    params, _ = random_weights(graph)
    net = net_of(graph).double()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    x = torch.from_numpy(sample(graph, n=1)).expand(20000, -1, -1)
    torch.manual_seed(0)
    with torch.no_grad():
        dropped = net.train()(x)
        kept = net.eval()(x[:1])
    torch.testing.assert_close(kept, torch.from_numpy(predict(Network(graph, params, {}), x[:1].numpy())))
    assert dropped.std(0).min() > 0.01  # each draw its own
    # inverted dropout: the output is linear in the weights, E[keep / (1 - p)] = 1, so the mean is eval's
    error = (dropped.mean(0) - kept[0]).abs().max() / (dropped.std(0).max() / 20000 ** 0.5)
    assert error < 5, error


# ------------------------------------------------------------------------------ the trainer

STEP_NET = "input 3@8x8 -> conv 6@3x3 pad=1 bn relu -> maxpool 2 -> fc 10 relu -> fc 4 softmax"
STEP_CONFIGS = [
    TrainConfig(loss="xent", optimizer="adam", lr=0.01, weight_decay=1e-3, maxnorm=1.5),
    TrainConfig(loss="mse", optimizer="nesterov", lr=0.05, l1=1e-3),
    TrainConfig(loss="hinge", optimizer="rmsprop", lr=0.01),
    # decoupled decay, large enough that a slip in its factor or its tensors shows in the losses
    TrainConfig(loss="xent", optimizer="adamw", lr=0.01, weight_decay=0.5, maxnorm=1.5),
    # the loss gradient's norm is above 1 at the start (asserted below): every step is clipped
    TrainConfig(loss="xent", optimizer="momentum", lr=0.05, clip=0.05, weight_decay=1e-2),
]


def step_loss(engine, x, y, lr):
    """One step through the loop's seam on the batch (x, y): its loss, as the engine's sums count it."""
    engine.bind(Split(x, y))
    engine.start_tallies(Running())
    engine.train_step(engine.feed(np.arange(len(x))), np.random.default_rng(1))
    engine.update(lr)
    return engine.tallies().loss / len(x)


def run_both(graph, cfg, params, state, rng):
    """The NumPy and torch engines from the same weights over the same five batches: (losses, engines)."""
    fresh = optim.state_to_json(optim.make_optimizer(cfg.optimizer, weight_decay=cfg.weight_decay))
    engines = [NumpyTrainer.resume(Network(graph, {k: v.copy() for k, v in params.items()},
                                          {k: v.copy() for k, v in state.items()}), cfg, fresh),
               torch_trainer("cpu").resume(Network(graph, params, state), cfg, fresh)]
    losses = []
    for _ in range(5):
        x, y = rng.standard_normal((16, 3, 8, 8)), rng.integers(0, 4, 16)
        losses.append([step_loss(e, x, y, cfg.lr) for e in engines])
    return losses, engines


@pytest.mark.parametrize("cfg", STEP_CONFIGS, ids=lambda c: f"{c.loss}-{c.optimizer}")
def test_numpy_and_torch_engines_give_the_same_losses_from_the_same_weights(cfg):
    graph = compile_spec(STEP_NET, "step.dlc")
    params, state = init_params(graph, seed=3, dtype=np.float64)
    if cfg.clip:  # the first batch's loss gradient, unclipped, is well above the clip
        x, y = np.random.default_rng(0).standard_normal((16, 3, 8, 8)), np.random.default_rng(0).integers(0, 4, 16)
        plain = NumpyTrainer.resume(Network(graph, {k: v.copy() for k, v in params.items()},
                                           {k: v.copy() for k, v in state.items()}), TrainConfig(loss=cfg.loss),
                                   optim.state_to_json(optim.make_optimizer("sgd")))
        plain.loss_and_grads(x, y, np.random.default_rng(1))
        assert np.sqrt(sum(np.vdot(g, g) for g in plain.grads.values())) > 20 * cfg.clip
    losses, engines = run_both(graph, cfg, params, state, np.random.default_rng(0))
    print("numpy/torch losses", cfg.loss, cfg.optimizer, losses)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    assert losses[-1][0] < losses[0][0]  # it learns
    (pn, sn), (pt, st) = (e.weights(copy=True) for e in engines)
    for k in pn:
        # atol: conv1.b feeds bn, which cancels it; its gradient is rounding noise that adam scales up
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-9, atol=1e-8, err_msg=k)
    for k in sn:
        np.testing.assert_allclose(st[k], sn[k], rtol=1e-9, atol=1e-8, err_msg=k)


def run_both_on_tokens(graph, cfg):
    """The NumPy and torch engines from the same float64 weights over the same five batches of token
    sequences with a class at every step: (losses, (numpy weights, torch weights), initial params)."""
    params, state = init_params(graph, seed=3, dtype=np.float64)
    fresh = optim.state_to_json(optim.make_optimizer(cfg.optimizer))
    engines = [NumpyTrainer.resume(Network(graph, {k: v.copy() for k, v in params.items()}, {}), cfg, fresh),
               torch_trainer("cpu").resume(Network(graph, params, state), cfg, fresh)]
    rng = np.random.default_rng(0)
    vocab, classes, shape = token_vocab(graph), graph.output.out_shape[-1], (16, *graph.input.out_shape)
    losses = []
    for _ in range(5):
        x, y = rng.integers(0, vocab, shape), rng.integers(0, classes, shape)
        losses.append([step_loss(e, x, y, cfg.lr) for e in engines])
    (pn, _), (pt, _) = (e.weights(copy=True) for e in engines)
    return losses, (pn, pt), params


def test_numpy_and_torch_engines_agree_on_a_causal_lm_with_per_step_targets():
    # weight decay on the shared table, adam's slots for it: one tensor on both engines
    cfg = TrainConfig(loss="xent", optimizer="adam", lr=0.01, weight_decay=1e-3)
    graph = graph_of("small_lm")
    losses, (pn, pt), params = run_both_on_tokens(graph, cfg)
    print("numpy/torch losses, causal LM", losses)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    assert set(pt) == set(pn) == set(params)
    for k in pn:
        # atol: bk adds q·bk to every score of a row, which softmax cancels; its gradient is rounding
        # noise that adam scales up
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-9, atol=1e-8, err_msg=k)


def test_numpy_and_torch_engines_agree_on_several_inputs_batched_together():
    # the small BERT's ids and token types (specs/bert_pairs.dlc) over five batches of the pairs task: each
    # engine takes a batch as an array per input, torch's forward as its arguments in the spec's order
    from dlc.train.builtin import builtin_data
    from dlc.train.sources import spec_inputs

    graph = graph_of("bert_pairs")
    cfg = TrainConfig(loss="xent", optimizer="adam", lr=0.01)
    params, state = init_params(graph, seed=3, dtype=np.float64)
    fresh = optim.state_to_json(optim.make_optimizer(cfg.optimizer))
    engines = [NumpyTrainer.resume(Network(graph, {k: v.copy() for k, v in params.items()}, {}), cfg, fresh),
               torch_trainer("cpu").resume(Network(graph, params, state), cfg, fresh)]
    data = builtin_data("pairs", (8,), 2, (80, 0, 16), inputs=spec_inputs(graph))
    losses = [[step_loss(e, take(data.train.x, slice(i, i + 16)), data.train.y[i:i + 16], cfg.lr) for e in engines]
              for i in range(0, 80, 16)]
    print("numpy/torch losses, two inputs", losses)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    outs = [e.predict(data.test.x[:]) for e in engines]  # a dict by input name, as the loop's evaluation gives it
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-9, atol=1e-12)


def test_a_mixtures_router_ties_go_to_the_lower_expert_in_torch_as_in_the_engine():
    # a zero router: every logit ties; torch.topk would pick any two, the module's stable sort picks 1 and 2
    graph = compile_spec("input seq 3 of 4 -> experts 4 top=2 { fc 4 }", "ties.dlc")
    params, state = random_weights(graph)
    params["experts1.router.W"][...] = 0
    net = net_of(graph).double()
    net.from_dlc({k: torch.from_numpy(v) for k, v in params.items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(x)).numpy()
    experts = [x @ params[f"experts1.expert{e}.fc1.W"].T + params[f"experts1.expert{e}.fc1.b"] for e in (1, 2)]
    np.testing.assert_allclose(got, (experts[0] + experts[1]) / 2, rtol=1e-12)
    np.testing.assert_allclose(got, predict(Network(graph, params, state), x), rtol=1e-12)


def test_numpy_and_torch_engines_agree_on_a_mixture_with_its_balance_loss():
    # the load-balancing loss is in both engines' loss and gradient: with balance=0.5 it moves the router
    cfg = TrainConfig(loss="xent", optimizer="adam", lr=0.01)
    graph = compile_spec("input seq 6 -> embed 8 vocab=7 -> experts 4 top=2 balance=0.5 { fc 12 relu -> fc 8 } "
                         "-> fc 7 softmax", "moe.dlc")
    losses, (pn, pt), _ = run_both_on_tokens(graph, cfg)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    for k in pn:
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-9, atol=1e-10, err_msg=k)


FREEZE_NET = "input 3@8x8 -> conv 6@3x3 pad=1 as c -> bn as b -> relu as features -> fc 10 relu -> fc 4 softmax"


def test_numpy_and_torch_engines_freeze_the_same_layers():
    cfg = TrainConfig(loss="xent", optimizer="adam", lr=0.01, weight_decay=1e-3, freeze="features")
    graph = compile_spec(FREEZE_NET, "freeze.dlc")
    params, state = random_weights(graph, seed=3)  # bn statistics away from 0 and 1, so using them shows
    losses, engines = run_both(graph, cfg, params, state, np.random.default_rng(0))
    print("numpy/torch losses, frozen", losses)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    assert losses[-1][0] < losses[0][0]
    (pn, sn), (pt, st) = (e.weights(copy=True) for e in engines)
    frozen = ["conv1.W", "conv1.b", "bn1.gamma", "bn1.beta"]  # the layers up to the label `features`
    for k in frozen:
        assert np.array_equal(pt[k], params[k]) and np.array_equal(pn[k], params[k]), k
    for k in state:  # inference mode: the running statistics are read, never updated
        assert np.array_equal(st[k], state[k]) and np.array_equal(sn[k], state[k]), k
    for k in set(params) - set(frozen):
        assert not np.array_equal(pt[k], params[k]), k
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-9, atol=1e-10, err_msg=k)


FREEZE_DROPOUT_NET = ("input 3@8x8 -> conv 6@3x3 pad=1 -> bn -> relu -> noise 0.5 -> dropout 0.5 as features "
                      "-> fc 10 relu -> fc 4 softmax")


def test_freezing_past_dropout_and_noise_on_torch_runs_them_as_at_inference():
    # Frozen, dropout and noise are the identity, as on the NumPy engine; were either drawing, the
    # losses would differ from the NumPy engine's (and from one run to the next) at once.
    cfg = TrainConfig(loss="xent", optimizer="momentum", lr=0.05, freeze="features")
    graph = compile_spec(FREEZE_DROPOUT_NET, "drop.dlc")
    params, state = random_weights(graph, seed=4)
    losses, engines = run_both(graph, cfg, params, state, np.random.default_rng(2))
    print("numpy/torch losses, frozen past dropout and noise", losses)
    np.testing.assert_allclose([t for _, t in losses], [n for n, _ in losses], rtol=1e-10)
    (pn, _), (pt, st) = (e.weights(copy=True) for e in engines)
    for k in ("conv1.W", "conv1.b", "bn1.gamma", "bn1.beta"):
        assert np.array_equal(pt[k], params[k]), k
    for k in state:
        assert np.array_equal(st[k], state[k]), k
    for k in ("fc1.W", "fc2.W"):
        assert not np.array_equal(pt[k], params[k]), k
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-9, atol=1e-10, err_msg=k)


NEXT_TOKEN = ("input seq 8 -> embed 16 vocab=11 as tok -> posembed -> ln -> attention 2 causal -> seqpool last "
              "-> fc 11 tied=tok softmax")


@pytest.mark.slow
def test_the_torch_engine_trains_a_next_token_model_through_the_loop(tmp_path):
    # random tokens; the class is the first token, which the last step must attend back to
    from dlc.train.dataset import Data, Split
    from dlc.train.loop import train as train_loop

    graph = compile_spec(NEXT_TOKEN, "next.dlc")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (600, 8))
    data = Data(Split(x[:500], x[:500, 0].copy()), Split(x[500:], x[500:, 0].copy()), name="random tokens")
    cfg = TrainConfig(loss="xent", optimizer="adam", lr=0.01, batch=32, epochs=4)
    result = train_loop(graph, data, cfg, tmp_path, meta={}, trainer=torch_trainer("cpu"))
    losses = [r["train_loss"] for r in result.history]
    print("next-token model on torch: train losses", losses, "val accuracy", result.final["val_accuracy"])
    assert losses[-1] < 0.5 * losses[0]
    assert result.final["val_accuracy"] > 0.5  # chance is 1/11
    params, _, _ = load_checkpoint(tmp_path / "last.npz", graph)
    assert sorted(params) == sorted(init_params(graph)[0])  # dlc's names: the table once, no fc1.W


@pytest.mark.slow
@pytest.mark.skipif("reverse" not in BUILTIN_SIZES, reason="the `reverse` data set and per-step targets arrive "
                                                           "with the seqtrain branch")
def test_the_reverse_transformer_trains_on_torch(tmp_path):
    r = train(zoo_path("transformer_reverse"), "--engine", "torch", "--device", "cpu", "--data", "reverse",
              "--n-train", "640", "--n-val", "64", "--n-test", "64", "--epochs", "1", "--out", tmp_path / "run", "-q")
    assert r.exit_code == 0, r.output
    assert final(tmp_path / "run")["epoch"] == 1


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


SMALL = "input 1@12x12 -> conv 8@3x3 relu -> maxpool 2 -> dropout 0.1 -> fc 10 softmax"
GLYPHS = ["--n-train", "400", "--n-val", "100", "--n-test", "100", "--batch", "32", "--optimizer", "momentum"]


def final(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["final"]


@pytest.mark.slow
def test_switching_engines_on_resume_continues_the_run(tmp_path):
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert train("-e", SMALL, *GLYPHS, "--epochs", "2", "--out", whole, "-q").exit_code == 0
    r = train("-e", SMALL, *GLYPHS, "--epochs", "1", "--out", half, "-q", "--engine", "torch", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = train("--resume", half, "--epochs", "2", "-q")  # the NumPy engine continues torch's checkpoint
    assert r.exit_code == 0, r.output
    assert final(half)["step"] == final(whole)["step"] == 2 * 13
    # dropout draws from torch's generator in the first epoch, so the runs differ, but only a little
    assert abs(final(half)["train_loss"] - final(whole)["train_loss"]) < 0.5
    _, _, meta = load_checkpoint(half / "last.npz")
    assert meta["position"]["epoch"] == 2
    r = train("--resume", half, "--epochs", "3", "-q", "--engine", "torch", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert final(half)["epoch"] == 3


def test_a_missing_gpu_or_a_cpu_engine_on_cuda_is_a_message(tmp_path):
    r = train("-e", SMALL, "--engine", "numpy", "--device", "cuda", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "numpy engine runs on the CPU" in r.output
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = train("-e", SMALL, "--engine", "torch", "--device", "cuda", "--out", tmp_path / "b")
    assert r.exit_code == 2, r.output
    assert ("CPU build" if torch.version.cuda is None else "no GPU") in r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_dropout_draws_resume_exactly_on_torch(tmp_path):
    # the torch generator's state goes into the checkpoint: two epochs equal one and a resumed one
    whole, half = tmp_path / "whole", tmp_path / "half"
    torch_args = ["--engine", "torch", "--device", "cpu", "-q"]
    assert train("-e", SMALL, *GLYPHS, "--epochs", "2", "--out", whole, *torch_args).exit_code == 0
    assert train("-e", SMALL, *GLYPHS, "--epochs", "1", "--out", half, *torch_args).exit_code == 0
    assert train("--resume", half, "--epochs", "2", *torch_args).exit_code == 0
    a, b = load_checkpoint(whole / "last.npz")[0], load_checkpoint(half / "last.npz")[0]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_processes_with_gloo_take_the_steps_of_one_with_twice_the_batch(tmp_path):
    # Process r reads every other sample of the padded order, so step k of the two together reads
    # the samples of step k of one process with twice the batch, and the averaged gradient of two
    # half-batch means is the whole batch's mean: the same weights (no dropout or bn, which differ).
    net = "input 1@12x12 -> conv 8@3x3 relu -> maxpool 2 -> fc 10 softmax"
    data = ["--n-train", "400", "--n-val", "100", "--n-test", "100", "--optimizer", "momentum", "--lr", "0.05"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # TMPDIR in the test's folder: torchrun run by hand keeps its log tree in a torchelastic_* folder
    # of the temporary directory and leaves it there (two per suite run were found in /tmp)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    launch = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "dlc", "train"]
    done = subprocess.run(launch + ["-e", net, *data, "--batch", "16", "--epochs", "1", "--engine", "torch",
                                    "--device", "cpu", "--out", str(ddp), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # rank 0 alone prints: one JSON document
    assert doc["epochs"] == 1
    # 400 samples: 200 per process, ceil(200 / 16) = 13 steps
    assert final(ddp)["step"] == 13 and len((ddp / "log.jsonl").read_text().splitlines()) == 1
    # images/s are the job's: both processes' 200 samples in the epoch's seconds
    assert final(ddp)["images_per_second"] * final(ddp)["seconds"] == pytest.approx(400)
    r = train("-e", net, *data, "--batch", "32", "--epochs", "1", "--engine", "torch", "--device", "cpu",
              "--out", single, "-q")
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(ddp / "last.npz")[0], load_checkpoint(single / "last.npz")[0]
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert final(ddp)["val_accuracy"] == final(single)["val_accuracy"]
    # the training sums count both shards: step k's two half-batches are the single run's batch k
    for key in ("train_loss", "train_accuracy", "train_top5"):
        assert final(ddp)[key] == pytest.approx(final(single)[key], rel=1e-5), key
    done = subprocess.run(launch + ["--resume", str(ddp), "--epochs", "2", "--engine", "torch", "--device", "cpu",
                                    "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert final(ddp)["step"] == 26 and len((ddp / "log.jsonl").read_text().splitlines()) == 2
    assert done.stdout == f"{ddp}\n"  # --quiet: the run folder, once (rank 1 prints nothing)


def test_shards_are_distributed_sampler_shards():
    from dlc.train.loop import shard

    from torch.utils.data import DistributedSampler

    order = np.array([5, 3, 0, 4, 1, 2, 6])
    # DistributedSampler pads with the order's start, then takes every world-th: by hand, and as torch does
    assert [shard(order, r, 3).tolist() for r in range(3)] == [[5, 4, 6], [3, 1, 5], [0, 2, 3]]
    for r in range(3):
        sampler = DistributedSampler(list(range(7)), num_replicas=3, rank=r, shuffle=False)
        assert shard(order, r, 3).tolist() == order[list(sampler)].tolist()


# ---------------------------------------------------------------- feeding the device without waiting

HOST_READS = ("item", "__float__", "__int__", "__bool__", "cpu", "numpy", "tolist")  # each waits for the device


def count_host_reads(monkeypatch) -> dict:
    """Count every call of a Tensor method that brings a value to the host (a sync on a GPU)."""
    counts: dict[str, int] = {}
    for name in HOST_READS:
        def counted(self, *args, _name=name, _method=getattr(torch.Tensor, name), **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _method(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_torch_epoch_reads_the_device_a_fixed_number_of_times(tmp_path, monkeypatch, clip):
    # Without a progress display the host reads the device at the epoch's start and end and for
    # checkpoints, never per step: 80 steps take as many reads as 40 (before: 3 a step, 4 with clip).
    from dlc.train.loop import train as train_loop

    graph = compile_spec("input 1@8x8 -> conv 4@3x3 relu -> fc 10 softmax", "small.dlc")
    rng = np.random.default_rng(0)
    reads = []
    for steps in (40, 80):
        x, y = rng.standard_normal((8 * steps, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 8 * steps)
        counts = count_host_reads(monkeypatch)
        train_loop(graph, Data(Split(x, y)), TrainConfig(loss="xent", batch=8, epochs=1, clip=clip),
                   tmp_path / f"{steps}", meta={}, trainer=torch_trainer("cpu"))
        monkeypatch.undo()
        reads.append(sum(counts.values()))
    print("host reads in an epoch of 40 and of 80 steps", reads)
    assert reads[0] == reads[1] < 40


def test_a_split_kept_on_the_device_trains_as_one_gathered_on_the_host(tmp_path, monkeypatch):
    # CUDA keeps a split that fits on the device and gathers batches there; forced here on the CPU,
    # that path must take the very samples the host path takes
    from dlc.torch.trainer import TorchTrainer
    from dlc.train.loop import train as train_loop

    graph = compile_spec("input 1@8x8 -> conv 4@3x3 relu -> fc 10 softmax", "small.dlc")
    rng = np.random.default_rng(0)
    data = Data(Split(rng.standard_normal((100, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 100)))
    cfg = TrainConfig(loss="xent", optimizer="momentum", lr=0.05, batch=8, epochs=2)
    host = train_loop(graph, data, cfg, tmp_path / "host", meta={}, trainer=torch_trainer("cpu"))
    monkeypatch.setattr(TorchTrainer, "fits_on_device", lambda self, nbytes: True)
    kept = train_loop(graph, data, cfg, tmp_path / "kept", meta={}, trainer=torch_trainer("cpu"))
    assert [r["train_loss"] for r in kept.history] == [r["train_loss"] for r in host.history]
    a, b = (load_checkpoint(tmp_path / name / "last.npz")[0] for name in ("host", "kept"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_device_hits_count_what_the_numpy_scoring_counts():
    from dlc.train.scoring import count_correct
    from dlc.torch.trainer import hits

    # by hand: sample 0's best class is 1 (label 1: a hit), sample 1's is 0 (label 2: a miss)
    out = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert [int(t) for t in hits(torch.from_numpy(out), torch.tensor([1, 2]), 3)] == [1, 0]
    rng = np.random.default_rng(0)
    cases = [(rng.random((50, 1)), rng.integers(0, 2, 50), 1),  # one unit: the side of 0.5
             (rng.random((50, 12)), rng.integers(0, 12, 50), 12),  # top-5 too
             (rng.random((20, 7, 11)), rng.integers(0, 11, (20, 7)), 11),  # a class per step
             (rng.random((50, 12)), rng.dirichlet(np.ones(12), 50), 12),  # target rows (mixup)
             (rng.integers(0, 3, (50, 12)).astype(float), rng.integers(0, 12, 50), 12)]  # many ties
    for out, y, classes in cases:
        assert [int(t) for t in hits(torch.from_numpy(out), torch.from_numpy(y), classes)] == \
            list(count_correct(out, y, classes))
    # one unit at each of 3 steps: each step is on its target's side of 0.5 or not (by hand: 2 hits, 1 miss)
    out, y = np.array([[[0.9], [0.2], [0.6]]]), np.array([[1, 0, 0]])
    assert count_correct(out, y, 1) == (2, 0)
    assert [int(t) for t in hits(torch.from_numpy(out), torch.from_numpy(y), 1)] == [2, 0]


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_bad_class_targets_are_one_message_on_either_engine(engine, tmp_path):
    # xent and hinge read XOR's 0/1 targets as class labels of a one-unit output: class 1 does not exist
    for loss in ("xent", "hinge"):
        r = train("-e", XOR, "--data", "xor", "--loss", loss, "--engine", engine, "--out", tmp_path / loss)
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines()[-1] == "error: class label 1 is outside 0..0 for an output of 1 units"
        assert "Traceback" not in r.output
    # a text of one character: a vocabulary of one token, nothing to predict
    (tmp_path / "a.txt").write_text("a" * 500)
    r = train("-e", "input seq 8 -> embed 4 vocab=1 -> lstm 4 sequences -> fc 1 softmax", "--data",
              tmp_path / "a.txt", "--engine", engine, "--out", tmp_path / "b")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {tmp_path / 'a.txt'} holds a single distinct character (a)"), r.output
    assert "Traceback" not in r.output


def test_a_diverging_torch_run_names_the_steps_since_the_last_read(tmp_path):
    # mse on raw scores at lr 1e6 overflows within the first epoch; its end is the first read
    r = train("-e", "input 1@12x12 -> conv 8@3x3 relu -> maxpool 2 -> fc 10", "--loss", "mse", *GLYPHS,
              "--lr", "1e6", "--epochs", "3", "--engine", "torch", "--device", "cpu", "--out", tmp_path / "nan", "-q")
    assert r.exit_code == 1, r.output
    assert "at epoch 1, steps 1-13 (batches 1-13 of 13)" in r.output and "last good checkpoint" in r.output
    params, _, meta = load_checkpoint(tmp_path / "nan" / "last.npz")
    assert meta["position"]["step"] == 0 and all(np.isfinite(p).all() for p in params.values())


def test_a_torch_run_resumed_mid_epoch_counts_the_steps_before_the_stop(tmp_path):
    # SIGINT after step 5 of 13: the checkpoint carries the running sums, and the resumed epoch's
    # training loss and accuracy are those of the run never stopped (no dropout: the same steps)
    import signal

    from dlc.train.loop import train as train_loop

    graph = compile_spec("input 1@8x8 -> conv 4@3x3 relu -> fc 10 softmax", "small.dlc")
    rng = np.random.default_rng(0)
    data = Data(Split(rng.standard_normal((100, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 100)))
    cfg = TrainConfig(loss="xent", optimizer="momentum", lr=0.05, batch=8, epochs=1)
    whole = train_loop(graph, data, cfg, tmp_path / "whole", meta={}, trainer=torch_trainer("cpu"))

    def interrupt(kind, info):
        if kind == "step" and info["batch"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train_loop(graph, data, cfg, tmp_path / "half", meta={}, trainer=torch_trainer("cpu"), on_event=interrupt)
    assert stopped.stopped == "interrupted"
    checkpoint = load_checkpoint(tmp_path / "half" / "last.npz", graph)
    assert checkpoint[2]["position"]["batch"] == 5 and checkpoint[2]["running"]["seen"] == 40
    resumed = train_loop(graph, data, cfg, tmp_path / "half", meta={}, trainer=torch_trainer("cpu"),
                         checkpoint=checkpoint)
    for key in ("train_loss", "train_accuracy", "train_top5"):
        assert resumed.final[key] == pytest.approx(whole.final[key], rel=1e-12), key
