"""A small Llama-style character model (rmsnorm, rope, kv=2, SwiGLU, tied or untied head) trained with
`dlc train FILE.txt` on each engine, against the same model written by hand in PyTorch
(tests/torch_models.py's LlamaLM, which tests/onnx exports and imports), started from dlc's initial
weights and fed the same windows in the same order with the same adam."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine.params import init_params
from dlc.train.order import epoch_order

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import torch_models  # noqa: E402  the model by hand: RMSNorm, rotate-half rope, repeat_interleave, SwiGLU

T, D, H, KV, FF, LAYERS = 16, 32, 4, 2, 64, 2
BATCH, EPOCHS, LR, SEED = 16, 4, 0.003, 0


def llama_spec(tied: bool) -> str:
    head = "fc 64 tied=tok bias=off softmax" if tied else "fc 64 bias=off softmax"
    return f"""input seq {T}
embed {D} vocab=64 as tok
block llama(d, h, kv, f) {{
    add( rmsnorm -> attention h causal kv=kv rope bias=off | identity )
    add( rmsnorm -> mul( fc f silu bias=off | fc f bias=off ) -> fc d bias=off | identity )
}}
llama({D}, {H}, {KV}, {FF}) x{LAYERS}
rmsnorm
{head}
train loss=xent optimizer=adam lr={LR} batch={BATCH} epochs={EPOCHS} seed={SEED}
"""


def book() -> str:
    """Words drawn from a small list: enough structure to learn in a few dozen steps."""
    words = "the cat sat on a mat and the dog ran to the red log while a bird sang in the tall tree".split()
    rng = np.random.default_rng(7)
    return " ".join(words[i] for i in rng.integers(0, len(words), 900)) + "\n"


def from_dlc(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    """dlc's weights into the PyTorch model: both keep a linear map as (out, in)."""
    names = {"embed1.W": "embed.weight", "rmsnorm1.gamma": "norm.weight"}
    if "fc1.W" in params:
        names["fc1.W"] = "head.weight"
    for i in range(LAYERS):
        a, t = f"llama{i + 1}.", f"layers.{i}."
        names.update({a + "rmsnorm1.gamma": t + "norm.weight", a + "rmsnorm2.gamma": t + "mlp.norm.weight",
                      a + "fc1.W": t + "mlp.gate.weight", a + "fc2.W": t + "mlp.up.weight",
                      a + "fc3.W": t + "mlp.down.weight",
                      **{a + f"attention1.W{p}": t + f"attn.{p}_proj.weight" for p in "qkvo"}})
    assert sorted(names) == sorted(params)  # every dlc tensor has its place, and nothing is left at PyTorch's init
    state = model.state_dict()
    for k, v in params.items():
        state[names[k]].copy_(torch.from_numpy(v))


def windows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = (len(ids) - 1) // T
    return ids[:n * T].reshape(n, T), ids[1:n * T + 1].reshape(n, T)


def pytorch_run(text: str, tied: bool) -> tuple[list[float], float, nn.Module]:
    """The epochs' mean training losses, the validation loss after the last, and the trained model, by
    hand in PyTorch."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int64)
    train_end, val_end = round(0.90 * len(ids)), round(0.95 * len(ids))  # the text's splits (dlc.train.text)
    x, y = (torch.from_numpy(a) for a in windows(ids[:train_end]))
    vx, vy = (torch.from_numpy(a) for a in windows(ids[train_end:val_end]))
    model = torch_models.LlamaLM(64, D, H, KV, FF, LAYERS, tied)
    from_dlc(model, init_params(compile_spec(llama_spec(tied)), seed=SEED)[0])
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    means = []
    for epoch in range(EPOCHS):
        order = torch.from_numpy(epoch_order(len(x), SEED, epoch))  # the loop's order for (seed, epoch)
        total = 0.0
        for b in range(0, len(order), BATCH):
            idx = order[b:b + BATCH]
            loss = F.cross_entropy(model(x[idx]).reshape(-1, 64), y[idx].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        means.append(total / len(x))
    with torch.no_grad():
        val = F.cross_entropy(model(vx).reshape(-1, 64), vy.reshape(-1)).item()
    return means, val, model


@pytest.mark.parametrize("engine,tied", [("numpy", True), ("numpy", False), ("torch", True)])
def test_a_llama_char_model_trains_as_the_same_model_written_in_pytorch(tmp_path, engine, tied):
    text = tmp_path / "book.txt"
    text.write_text(book(), encoding="utf-8")
    run = tmp_path / "run"
    extra = ["--engine", "torch", "--device", "cpu"] if engine == "torch" else []
    r = CliRunner().invoke(main, ["train", "-e", llama_spec(tied), "--data", str(text), "--out", str(run),
                                  "--quiet", *extra])
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    means, val, _ = pytorch_run(book(), tied)
    steps = log[-1]["step"]
    assert steps >= 50
    dlc_losses = [e["train_loss"] for e in log] + [log[-1]["val_loss"]]
    ref = means + [val]
    assert ref[-1] < 0.6 * ref[0]  # the model learns: the comparison is of a falling curve, not of noise
    # the issue asks for 5%; both run the same float32 arithmetic in the same order, so the curves agree to
    # about 1e-7 (a kv grouping tiled instead of interleaved, or rope pairing neighbours, is 2-10% off)
    np.testing.assert_allclose(dlc_losses, ref, rtol=1e-4)


def test_a_trained_llama_char_model_samples_greedily_as_the_pytorch_model_does(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text(book(), encoding="utf-8")
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["train", "-e", llama_spec(True), "--data", str(text), "--out", str(run),
                                     "--quiet"]).exit_code == 0
    prompt, tokens = "the ", T - 4  # the whole text fits one window: positions count from the prompt's start
    # last.npz: the weights after the last step, as the PyTorch model's (the run directory samples best.npz)
    r = CliRunner().invoke(main, ["sample", str(run / "last.npz"), "--prompt", prompt, "--tokens", str(tokens),
                                  "--temperature", "0"])
    assert r.exit_code == 0, r.output
    chars = sorted(set(book()))
    model = pytorch_run(book(), True)[2]
    ids = [chars.index(c) for c in prompt]
    with torch.no_grad():
        for _ in range(tokens):  # greedy: the most likely next character, given all so far
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert r.stdout == "".join(chars[i] for i in ids) + "\n"
