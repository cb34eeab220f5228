"""The references dlc's training speed is measured against, written as a practitioner writes them.

PyTorch: an nn.Sequential (or a small nn.Module where the network branches), SGD(momentum=0.9) or Adam,
shuffled mini-batches indexed from tensors in memory (a DataLoader over a TensorDataset collates
sample by sample and is slower), no per-step accuracy or top-5 read back to the host, and after each
epoch the validation and test splits scored in batches of 1,000 under no_grad, as `dlc train` scores
them every epoch. torch.set_num_threads(2), as the issue asks (this machine has 2 cores).

network.py: Nielsen's per-sample loop (bench_engine.nielsen_sgd), with his `evaluate` on each split.

bench_epoch.py runs this file as a process, one run of one target:
    python bench/reference_train.py TARGET --data PATH --epochs N
and times the whole process, as it times `dlc train`. bench_train.py builds the same models in its
own process (torch_model, torch_step).
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# target -> (batch, optimizer, learning rate) as the dlc side trains it
SETTINGS = {"lenet_relu": (64, "momentum", 0.01), "lenet_tanh": (64, "momentum", 0.01),
            "efficientnet": (64, "momentum", 0.05), "transformer": (64, "adam", 3e-3),
            "llama_char": (32, "adam", 3e-3), "mlp10": (10, "sgd", 3.0)}


# --- data, read as dlc reads it ------------------------------------------------------------------

def mnist(path: Path, pad: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """mnist.pkl.gz's train, valid and test splits (or an .npz's x, y, x_val, y_val, x_test, y_test, as
    bench_epoch's --images writes a part of them) as (N, 1, 28, 28) float32 images (32x32,
    centre-padded, with `pad`, as dlc's --reshape fits them to the zoo's LeNet-5) and int64 labels."""
    if path.suffix == ".npz":
        splits = npz_splits(path)
    else:
        with gzip.open(path, "rb") as f:
            splits = pickle.load(f, encoding="latin1")
    out = []
    for x, y in splits:
        images = x.reshape(-1, 1, 28, 28).astype(np.float32)
        if pad:
            images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
        out.append((images, y.astype(np.int64)))
    return out


def text_windows(path: Path, steps: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """A text file as dlc.train.text cuts it: characters in code-point order, windows of steps + 1,
    the first 90% training, the next 5% validation, the last 5% test."""
    text = path.read_text(encoding="utf-8")
    _, ids = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_inverse=True)
    ends = [round(f * len(ids)) for f in (0.90, 0.95, 1.0)]
    out = []
    for lo, hi in zip([0, *ends[:-1]], ends):
        part = ids[lo:hi].astype(np.int64)
        n = (len(part) - 1) // steps
        out.append((part[:n * steps].reshape(n, steps), part[1:n * steps + 1].reshape(n, steps)))
    return out


def npz_splits(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as f:
        return [(f["x"], f["y"]), (f["x_val"], f["y_val"]), (f["x_test"], f["y_test"])]


def load(target: str, data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    if target == "llama_char":
        return text_windows(data)
    if target == "transformer":
        return npz_splits(data)
    return mnist(data, pad=target == "lenet_tanh")


# --- PyTorch models ------------------------------------------------------------------------------

def torch_model(torch, target: str):
    """The PyTorch network of a target: the same layers, widths and parameter count as its dlc spec."""
    nn = torch.nn
    if target == "lenet_relu":  # the LeNet-5: conv 6@5x5 pad=2 relu -> maxpool 2 -> ...
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10))
    if target == "lenet_tanh":  # the zoo's lenet5.dlc on 32x32
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    if target == "efficientnet":
        return efficientnet(torch)
    if target == "transformer":
        return encoder(torch)
    if target == "llama_char":
        return llama(torch)
    raise ValueError(target)


def efficientnet(torch):
    """bench/efficientnet_small.dlc: MBConv blocks with squeeze-and-excitation, silu."""
    nn = torch.nn

    class SqueezeExcite(nn.Module):
        def __init__(self, e: int, r: int):
            super().__init__()
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(e, r), nn.SiLU(),
                                      nn.Linear(r, e), nn.Sigmoid())

        def forward(self, x):
            return x * self.gate(x)[:, :, None, None]

    class Residual(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return x + self.body(x)

    def mbconv(c_in: int, e: int, c: int, r: int, s: int = 1):
        return nn.Sequential(
            nn.Conv2d(c_in, e, 1, bias=False), nn.BatchNorm2d(e), nn.SiLU(),
            nn.Conv2d(e, e, 3, s, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.SiLU(),
            SqueezeExcite(e, r), nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
        mbconv(16, 64, 24, 4, 2), Residual(mbconv(24, 96, 24, 6)), mbconv(24, 96, 40, 6, 2),
        nn.Conv2d(40, 128, 1, bias=False), nn.BatchNorm2d(128), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def encoder(torch):
    """specs/transformer_reverse.dlc: 2 pre-layernorm encoder blocks, D=64, 4 heads, exact GELU."""
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 64)
            self.pos = nn.Parameter(torch.zeros(12, 64))
            self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, activation="gelu",
                                                                     batch_first=True, norm_first=True)
                                          for _ in range(2)])
            self.norm, self.out = nn.LayerNorm(64), nn.Linear(64, 16)

        def forward(self, ids):
            return self.out(self.norm(self.blocks(self.embed(ids) + self.pos)))

    return Encoder()


def llama(torch, d: int = 64, heads: int = 4, kv: int = 2, hidden: int = 192, layers: int = 4,
          vocab: int = 128, steps: int = 64):
    """specs/llama_char.dlc: rmsnorm, causal attention with grouped kv heads and rope, SwiGLU, no biases."""
    nn, F = torch.nn, torch.nn.functional
    dh = d // heads
    inv = 1.0 / 10000 ** (torch.arange(0, dh, 2).float() / dh)
    angles = torch.outer(torch.arange(steps).float(), inv)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # Hugging Face Llama's rotate-half
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
            self.q, self.k, self.v = (nn.Linear(d, n * dh, bias=False) for n in (heads, kv, kv))
            self.o = nn.Linear(d, d, bias=False)
            self.gate, self.up, self.down = (nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False),
                                             nn.Linear(hidden, d, bias=False))

        def forward(self, x):
            b, t, _ = x.shape
            h = self.norm1(x)
            q = rope(self.q(h).view(b, t, heads, dh).transpose(1, 2))
            k = rope(self.k(h).view(b, t, kv, dh).transpose(1, 2))
            v = self.v(h).view(b, t, kv, dh).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            h = self.norm2(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    return nn.Sequential(nn.Embedding(vocab, d), *[Block() for _ in range(layers)], nn.RMSNorm(d),
                         nn.Linear(d, vocab, bias=False))


def torch_optimizer(torch, target: str, model):
    _, kind, lr = SETTINGS[target]
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def torch_loss(torch, logits, y):
    """Cross-entropy over the last axis: one class per sample, or per step of a sequence."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def torch_epoch(torch, model, opt, x, y, batch: int, loss=None) -> None:
    """One epoch of shuffled mini-batches: forward, loss (cross-entropy unless given), backward, step;
    nothing read back."""
    model.train()
    for idx in torch.randperm(len(x)).split(batch):
        opt.zero_grad()
        out = model(x[idx])
        (loss(out, y[idx]) if loss else torch_loss(torch, out, y[idx])).backward()
        opt.step()


def torch_accuracy(torch, model, x, y) -> float:
    """Top-1 accuracy of a split, scored in batches of 1,000 under no_grad."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(1000), y.split(1000)):
            hits += int((model(xb).argmax(-1) == yb).sum())
    return hits / y.numel()


def run_torch(target: str, splits, epochs: int) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torch_model(torch, target)
    opt = torch_optimizer(torch, target, model)
    (x, y), *scored = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in splits]
    result = {}
    for _ in range(epochs):
        torch_epoch(torch, model, opt, x, y, SETTINGS[target][0])
        result = {name: torch_accuracy(torch, model, *split) for name, split in zip(("val", "test"), scored)}
    return result


# --- network.py ----------------------------------------------------------------------------------

def run_network_py(splits, epochs: int) -> dict:
    from bench_engine import nielsen_sgd

    (x, y), *scored = [(a.reshape(len(a), -1), b) for a, b in splits]
    epoch, accuracy = nielsen_sgd([784, 30, 10], x, np.eye(10)[y], 10, 3.0, np.float64)
    result = {}
    for _ in range(epochs):
        epoch()
        result = {name: accuracy(*split) for name, split in zip(("val", "test"), scored)}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=SETTINGS)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    splits = load(args.target, args.data)
    result = run_network_py(splits, args.epochs) if args.target == "mlp10" else run_torch(args.target, splits,
                                                                                          args.epochs)
    print(json.dumps({"target": args.target, "epochs": args.epochs, **result,
                      "seconds": round(time.perf_counter() - t0, 3)}))


if __name__ == "__main__":
    main()
