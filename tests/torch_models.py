"""torchvision's ResNet-18, ResNet-50, MobileNet v2, GoogLeNet, EfficientNet-B0, MobileNetV3-Large, ConvNeXt-T
and Swin-T, and Hugging Face's BERT and Whisper encoder and diffusers' blocks, written in plain torch.nn.

torchvision cannot be installed beside the CPU torch of the test extra, so the architectures are
restated here, layer for layer as torchvision builds them (ResNet v1.5: the stride on the 3x3 conv of a
bottleneck; GoogLeNet without its auxiliary heads; stochastic depth left out, the identity at inference).
Their published parameter counts (11,689,512 / 25,557,032 / 3,504,872 / 6,624,904 / 5,288,548 / 5,483,032 /
28,589,128 / Swin-T 28,288,354) are asserted in the tests, which checks this file against outside truth before any figure is
compared with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
            relu: str | None = "relu") -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if relu == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif relu == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, width, 3, stride), conv_bn(width, width, 3, relu=None))
        self.shortcut = (conv_bn(c_in, width, 1, stride, relu=None)
                         if stride != 1 or c_in != width else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * 4
        self.body = nn.Sequential(conv_bn(c_in, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, c_out, 1, relu=None))
        self.shortcut = (conv_bn(c_in, c_out, 1, stride, relu=None)
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, depths: list[int], classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], 64
        for i, depth in enumerate(depths):
            width = 64 * 2 ** i
            for j in range(depth):
                stages.append(block(c_in, width, 2 if j == 0 and i > 0 else 1))
                c_in = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn(c_in, hidden, 1, relu="relu6")] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, relu="relu6"),
                   conv_bn(hidden, c_out, 1, relu=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s) of the paper's table 2
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, c_in = [conv_bn(3, 32, 3, 2, relu="relu6")], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(conv_bn(c_in, 1280, 1, relu="relu6"))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def basic_conv(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """torchvision's BasicConv2d: conv without bias, bn with eps 0.001, relu."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out, eps=0.001),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """torchvision's module: four branches concatenated; its "5x5" branch has a 3x3 kernel, as
    torchvision's weights were trained (a known slip there, kept so the parameter count is theirs)."""

    def __init__(self, c_in: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int):
        super().__init__()
        self.branches = nn.ModuleList([
            basic_conv(c_in, c1, 1),
            nn.Sequential(basic_conv(c_in, c3_reduce, 1), basic_conv(c3_reduce, c3, 3, padding=1)),
            nn.Sequential(basic_conv(c_in, c5_reduce, 1), basic_conv(c5_reduce, c5, 3, padding=1)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(c_in, pool_proj, 1)),
        ])

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


class GoogLeNet(nn.Module):
    # (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) of inception 3a ... 5b
    MODULES = {"3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
               "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
               "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
               "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
               "5b": (832, 384, 192, 384, 48, 128, 128)}

    def __init__(self, classes: int = 1000):
        super().__init__()
        m = {name: Inception(*sizes) for name, sizes in self.MODULES.items()}
        self.features = nn.Sequential(
            basic_conv(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
            basic_conv(64, 64, 1), basic_conv(64, 192, 3, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
            m["3a"], m["3b"], nn.MaxPool2d(3, 2, ceil_mode=True),
            m["4a"], m["4b"], m["4c"], m["4d"], m["4e"], nn.MaxPool2d(2, 2, ceil_mode=True),
            m["5a"], m["5b"])
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(self.dropout(torch.flatten(x, 1)))


def resnet18() -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3])


def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


def googlenet() -> nn.Module:
    return GoogLeNet()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face Llama's rotate_half: (x1, x2) -> (-x2, x1) over the last axis's halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    """Hugging Face's LlamaAttention (and Mistral's, with `window`), as its modeling code writes it: q, k, v
    and o projections without bias, kv key/value heads, rope by rotate_half with cos/sin tables computed
    from an inv_freq buffer and the positions, the kv heads repeated to the query heads (repeat_kv's
    expand and reshape, or `repeat_interleave`), an additive causal (or sliding-window) mask, softmax."""

    def __init__(self, d: int, heads: int, kv: int, theta: float = 10000.0, window: int | None = None,
                 interleave: bool = False):
        super().__init__()
        self.heads, self.kv, self.dh, self.window, self.interleave = heads, kv, d // heads, window, interleave
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv * self.dh, bias=False)
        self.v_proj = nn.Linear(d, kv * self.dh, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        inv_freq = 1.0 / theta ** (torch.arange(0, self.dh, 2, dtype=torch.int64).float() / self.dh)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        group = self.heads // self.kv
        if self.interleave:
            return x.repeat_interleave(group, dim=1)
        n, kv, t, dh = x.shape
        return x[:, :, None].expand(n, kv, group, t, dh).reshape(n, kv * group, t, dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q = self.q_proj(x).view(n, t, self.heads, self.dh).transpose(1, 2)
        k = self.k_proj(x).view(n, t, self.kv, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.kv, self.dh).transpose(1, 2)
        freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.dh)
        hidden = torch.ones(t, t, dtype=torch.bool).triu(1)
        if self.window is not None:
            hidden = hidden | torch.ones(t, t, dtype=torch.bool).tril(-self.window)
        weights = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class LlamaBlock(nn.Module):
    """Two residual attentions and a head: Llama-3's theta and kv groups, Mistral's window."""

    def __init__(self, d: int = 16, interleave: bool = False):
        super().__init__()
        self.first = LlamaAttention(d, 4, 2, theta=500000.0, interleave=interleave)
        self.second = LlamaAttention(d, 4, 1, window=3, interleave=interleave)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.first(x)
        return self.head(x + self.second(x))


def signal_net() -> nn.Module:
    """A 1-D net on 2@40 (issue 28): Conv1d with stride and same-style pads, a bn after the relu (so no
    exporter folds it into the conv), both 1-D pools, a depthwise Conv1d, the adaptive pool to 1."""
    return nn.Sequential(nn.Conv1d(2, 6, 5, stride=2, padding=2), nn.ReLU(), nn.BatchNorm1d(6),
                         nn.MaxPool1d(3, 2, padding=1), nn.AvgPool1d(2, ceil_mode=True),
                         nn.Conv1d(6, 6, 3, groups=6, padding=1, dilation=1), nn.Conv1d(6, 4, 3, dilation=2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))


def volume_net() -> nn.Module:
    """A 3-D net on 2@5x17x17 (issue 28): r3d's stem, a bn after the relu, MaxPool3d 1x2x2, AvgPool3d
    with ceil, a grouped Conv3d, the adaptive pool to 1."""
    return nn.Sequential(nn.Conv3d(2, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False), nn.ReLU(),
                         nn.BatchNorm3d(4), nn.MaxPool3d((1, 2, 2)), nn.AvgPool3d(2, ceil_mode=True),
                         nn.Conv3d(4, 6, 2, groups=2, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(6, 3))


class CausalAttention(nn.Module):
    """Tokens through nn.MultiheadAttention with a causal float mask (-inf above the diagonal), as PyTorch
    code writes a decoder's attention, then a head over the vocabulary."""

    def __init__(self, vocab: int = 256, d: int = 64, heads: int = 4, t: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.att = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((t, t), float("-inf")), 1))

    def forward(self, x):
        h = self.emb(x)
        a, _ = self.att(h, h, h, attn_mask=self.mask, need_weights=False)
        return self.out(a + h)


def export(model: nn.Module, path, args: tuple, *, dynamo: bool, **kwargs) -> None:
    """torch.onnx.export in eval mode, quietly, with either exporter."""
    import warnings

    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, args, str(path), dynamo=True, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, args, str(path), dynamo=False, **kwargs)


class RMSNorm(nn.Module):
    """Llama's RMSNorm as its reference code writes it (torch 2.1, dlc's floor, has no nn.RMSNorm)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLUBlock(nn.Module):
    """A Llama feed-forward with its norm and residual: x + W2(silu(W1 n(x)) * W3 n(x)), no biases; SiLU as
    nn.SiLU or written out as x * sigmoid(x). `norm` is RMSNorm above or torch's nn.RMSNorm."""

    def __init__(self, d: int, f: int, written_out: bool = False, norm: nn.Module | None = None):
        super().__init__()
        self.norm = norm or RMSNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)
        self.silu = (lambda g: g * torch.sigmoid(g)) if written_out else nn.SiLU()

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(self.silu(self.gate(h)) * self.up(h))


class LlamaLayer(nn.Module):
    """A Llama decoder layer: x + attention(RMSNorm(x)), then the SwiGLU block with its own norm and residual."""

    def __init__(self, d: int, heads: int, kv: int, f: int):
        super().__init__()
        self.norm = RMSNorm(d)
        self.attn = LlamaAttention(d, heads, kv, interleave=True)
        self.mlp = SwiGLUBlock(d, f)

    def forward(self, x):
        return self.mlp(x + self.attn(self.norm(x)))


class LlamaLM(nn.Module):
    """A small LlamaForCausalLM: token table, decoder layers, a final RMSNorm and the scores over the
    vocabulary (logits), from a head of its own or the token table's (`tied`)."""

    def __init__(self, vocab: int, d: int, heads: int, kv: int, f: int, layers: int, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaLayer(d, heads, kv, f) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class Repeat(nn.Module):
    """x.repeat(...): ONNX Tile."""

    def __init__(self, repeats: tuple[int, ...]):
        super().__init__()
        self.repeats = repeats

    def forward(self, x):
        return x.repeat(*self.repeats)


class Narrow(nn.Module):
    """x.narrow(dim, start, length): ONNX Slice of one axis."""

    def __init__(self, dim: int, start: int, length: int):
        super().__init__()
        self.dim, self.start, self.length = dim, start, length

    def forward(self, x):
        return x.narrow(self.dim, self.start, self.length)


class Reshape(nn.Module):
    """x.reshape(len(x), *shape) (with a check that x's own shape per sample is `given`): ONNX Reshape."""

    def __init__(self, given: tuple[int, ...], shape: tuple[int, ...]):
        super().__init__()
        self.given, self.shape = given, shape

    def forward(self, x):
        assert tuple(x.shape[1:]) == self.given
        return x.reshape(len(x), *self.shape)


# ---- Swin-T (torchvision's swin_transformer.py, v1): the tokens kept (N, H, W, C) as torchvision does ----

def swin_window_attention(x: torch.Tensor, m: "SwinAttention") -> torch.Tensor:
    """torchvision's shifted_window_attention without its padding (the windows tile the grid): the
    grid rolled by -shift, cut into windows, attention within each with the relative position bias and,
    when shifted, -100 between tokens of different regions of the rolled grid; then back."""
    n, h, w, c = x.shape
    (wh, ww), heads = m.window, m.heads
    sh, sw = (0 if wh >= h else m.shift, 0 if ww >= w else m.shift)
    if sh or sw:
        x = torch.roll(x, (-sh, -sw), (1, 2))
    windows = (h // wh) * (w // ww)
    x = x.view(n, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n * windows, wh * ww, c)
    q, k, v = m.qkv(x).reshape(len(x), wh * ww, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = m.relative_position_bias_table[m.relative_position_index].view(wh * ww, wh * ww, -1)
    scores = scores + bias.permute(2, 0, 1).unsqueeze(0)
    if sh or sw:
        region = x.new_zeros((h, w))
        for i, (r0, r1) in enumerate(((0, -wh), (-wh, -sh), (-sh, None))):
            for j, (c0, c1) in enumerate(((0, -ww), (-ww, -sw), (-sw, None))):
                region[r0:r1, c0:c1] = 3 * i + j
        region = region.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(windows, wh * ww)
        mask = (region.unsqueeze(1) - region.unsqueeze(2)) != 0
        mask = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask, -100.0)
        scores = (scores.view(n, windows, heads, wh * ww, wh * ww) + mask.unsqueeze(1).unsqueeze(0)).view(
            -1, heads, wh * ww, wh * ww)
    x = (scores.softmax(-1) @ v).transpose(1, 2).reshape(len(x), wh * ww, c)
    x = m.proj(x).view(n, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    return torch.roll(x, (sh, sw), (1, 2)) if sh or sw else x


class SwinAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.heads, self.window, self.shift = heads, (window, window), shift
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        y, x = y.flatten(), x.flatten()
        index = (y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + x[:, None] - x[None, :] + window - 1
        self.register_buffer("relative_position_index", index.flatten())

    def forward(self, x):
        return swin_window_attention(x, self)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SwinAttention(dim, heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):  # stochastic depth is the identity at inference
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):  # x0 (even rows, even columns), x1 (odd, even), x2 (even, odd), x3 (odd, odd)
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    def __init__(self, dim: int = 96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window: int = 7,
                 patch: int = 4, classes: int = 1000, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(channels, dim, patch, patch), Permute(0, 2, 3, 1),
                                                 nn.LayerNorm(dim))]
        for i, (depth, h) in enumerate(zip(depths, heads)):
            width = dim * 2 ** i
            layers.append(nn.Sequential(*(SwinBlock(width, h, window, 0 if j % 2 == 0 else window // 2)
                                          for j in range(depth))))
            if i < len(depths) - 1:
                layers.append(PatchMerging(width))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim * 2 ** (len(depths) - 1))
        self.head = nn.Linear(dim * 2 ** (len(depths) - 1), classes)

    def forward(self, x):  # norm, permute, avgpool, flatten, head
        x = self.norm(self.features(x)).permute(0, 3, 1, 2)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def swin_t() -> nn.Module:
    return SwinTransformer()
# ---- issue 22: BERT, Whisper's encoder and a Stable Diffusion block, as Hugging Face writes them ----------------
# (transformers' modeling_bert.py, eager attention; modeling_whisper.py's WhisperEncoder; diffusers'
# ResnetBlock2D, Transformer2DModel and BasicTransformerBlock with the eager AttnProcessor), with the
# submodule names of those files so that a reader can set one beside the other.

class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

    def split(self, x):
        n, t, _ = x.shape
        return x.view(n, t, self.heads, self.head).permute(0, 2, 1, 3)

    def forward(self, x, extended_mask):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head) + extended_mask
        context = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3)
        return context.reshape(x.shape)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output_dense, self.attention_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.intermediate, self.output = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, extended_mask):
        a = self.attention_norm(self.output_dense(self.self(x, extended_mask)) + x)
        return self.output_norm(self.output(nn.functional.gelu(self.intermediate(a))) + a)


class Bert(nn.Module):
    """BertModel's pooled output: word, position (a table of `positions` read at T) and token type
    embeddings, LayerNorm; post-norm layers reading the extended mask (1 - mask) * the lowest float added
    to the scores; the pooler (the first step, Linear, tanh)."""

    def __init__(self, vocab=30522, hidden=768, layers=12, heads=12, intermediate=3072, positions=512, types=2):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(positions)[None], persistent=False)
        self.layer = nn.ModuleList(BertLayer(hidden, heads, intermediate) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, input_ids, token_type_ids, attention_mask):
        t = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = self.norm(x + self.position_embeddings(self.position_ids[:, :t]))
        extended = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layer:
            x = layer(x, extended)
        return torch.tanh(self.pooler(x[:, 0]))


def whisper_sinusoids(length: int, channels: int) -> torch.Tensor:
    """openai/whisper's `sinusoids` (model.py)."""
    increment = math.log(10000) / (channels // 2 - 1)
    scaled = torch.arange(length)[:, None] * torch.exp(-increment * torch.arange(channels // 2))[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class WhisperAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(d, d, bias=False)  # Whisper's keys have no bias
        self.v_proj, self.q_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        n, t, d = x.shape
        split = lambda z: z.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x) * (d // self.heads) ** -0.5), split(self.k_proj(x)), split(self.v_proj(x))
        o = torch.matmul(torch.matmul(q, k.transpose(-1, -2)).softmax(-1), v)
        return self.out_proj(o.transpose(1, 2).reshape(n, t, d))


class WhisperEncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn, self.self_attn_layer_norm = WhisperAttention(d, heads), nn.LayerNorm(d)
        self.fc1, self.fc2, self.final_layer_norm = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    """WhisperEncoder: two Conv1d with gelu (the second of stride 2), positions added from a stored table of
    Whisper's sinusoids, pre-norm layers, a final LayerNorm."""

    def __init__(self, mels=80, d=384, heads=6, layers=4, ffn=1536, frames=3000):
        super().__init__()
        self.conv1 = nn.Conv1d(mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(frames // 2, d)
        self.embed_positions.weight.data.copy_(whisper_sinusoids(frames // 2, d))
        self.layers = nn.ModuleList(WhisperEncoderLayer(d, heads, ffn) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, features):
        x = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(features))))
        x = x.permute(0, 2, 1) + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class ResnetBlock2D(nn.Module):
    def __init__(self, channels: int = 320, temb: int = 1280, groups: int = 32):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, channels)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, temb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time_emb_proj(nn.functional.silu(temb))[:, :, None, None]
        return x + self.conv2(nn.functional.silu(self.norm2(h)))


class Attention(nn.Module):
    """diffusers' Attention with the eager AttnProcessor: to_q, to_k, to_v without bias, to_out with one."""

    def __init__(self, dim: int, heads: int, context: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k, self.to_v = (nn.Linear(context or dim, dim, bias=False) for _ in range(2))
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        context = x if context is None else context
        n, t, d = x.shape
        split = lambda z: z.view(n, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d // self.heads) ** -0.5
        return self.to_out(torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(n, t, d))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * nn.functional.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context)
        self.norm3, self.ff = nn.LayerNorm(dim), nn.Sequential(GEGLU(dim, 4 * dim), nn.Linear(4 * dim, dim))

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    def __init__(self, channels: int = 320, heads: int = 8, context: int = 768, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        n, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, c)
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        hidden = hidden.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(hidden) + x


class SDBlock(nn.Module):
    """down_blocks.0's first ResnetBlock2D and Transformer2DModel of Stable Diffusion 1.5 at 320 channels."""

    def __init__(self, channels: int = 320, temb: int = 1280, heads: int = 8, context: int = 768, groups: int = 32):
        super().__init__()
        self.resnet = ResnetBlock2D(channels, temb, groups)
        self.attention = Transformer2DModel(channels, heads, context, groups)

    def forward(self, latent, temb, text):
        return self.attention(self.resnet(latent, temb), text)

# ---- today's vision networks (issue 21): EfficientNet-B0, MobileNetV3-Large, ConvNeXt-T, as torchvision builds
# them (torchvision/models/efficientnet.py, mobilenetv3.py, convnext.py and ops/misc.py); stochastic depth is
# the identity at inference, so the eval-mode twins leave it out.

def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: v rounded to a multiple of 8, never below 90% of v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_norm_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: type | None = None,
                  eps: float = 1e-5, momentum: float = 0.1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv without bias, BatchNorm2d, the activation if any."""
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, eps=eps, momentum=momentum)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: AdaptiveAvgPool2d(1), two 1x1 convs with biases, the gate."""

    def __init__(self, channels: int, squeeze: int, act: type = nn.ReLU, gate: type = nn.Sigmoid):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MBConv(nn.Module):
    """EfficientNet's block: expand (unless t = 1), depthwise, squeeze-and-excite of c_in // 4, project."""

    def __init__(self, t: int, k: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        e = c_in * t
        layers = [conv_norm_act(c_in, e, 1, act=nn.SiLU)] if e != c_in else []
        layers += [conv_norm_act(e, e, k, stride, groups=e, act=nn.SiLU),
                   SqueezeExcitation(e, max(1, c_in // 4), act=nn.SiLU),
                   conv_norm_act(e, c_out, 1)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNet(nn.Module):
    # (expansion t, kernel k, stride s, c_in, c_out, repeats n): the paper's Table 1 as torchvision writes it
    B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]

    def __init__(self, settings=B0, last: int = 1280, classes: int = 1000):
        super().__init__()
        layers = [conv_norm_act(3, settings[0][3], 3, 2, act=nn.SiLU)]
        for t, k, s, c_in, c_out, n in settings:
            for i in range(n):
                layers.append(MBConv(t, k, s if i == 0 else 1, c_in if i == 0 else c_out, c_out))
        layers.append(conv_norm_act(settings[-1][4], last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class InvertedResidualV3(nn.Module):
    """MobileNetV3's block: expand (unless the width stays), depthwise, squeeze-and-excite of
    make_divisible(e // 4) with a hard-sigmoid gate, project; bn eps 0.001, momentum 0.01."""

    def __init__(self, c_in: int, k: int, e: int, c_out: int, se: bool, act: type, stride: int):
        super().__init__()
        bn = {"eps": 0.001, "momentum": 0.01}
        layers = [conv_norm_act(c_in, e, 1, act=act, **bn)] if e != c_in else []
        layers.append(conv_norm_act(e, e, k, stride, groups=e, act=act, **bn))
        if se:
            layers.append(SqueezeExcitation(e, make_divisible(e // 4), gate=nn.Hardsigmoid))
        layers.append(conv_norm_act(e, c_out, 1, **bn))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV3(nn.Module):
    RE, HS = nn.ReLU, nn.Hardswish
    # (c_in, kernel, expanded, c_out, SE, activation, stride): the paper's Table 1, torchvision's bneck_conf
    LARGE = [(16, 3, 16, 16, False, RE, 1), (16, 3, 64, 24, False, RE, 2), (24, 3, 72, 24, False, RE, 1),
             (24, 5, 72, 40, True, RE, 2), (40, 5, 120, 40, True, RE, 1), (40, 5, 120, 40, True, RE, 1),
             (40, 3, 240, 80, False, HS, 2), (80, 3, 200, 80, False, HS, 1), (80, 3, 184, 80, False, HS, 1),
             (80, 3, 184, 80, False, HS, 1), (80, 3, 480, 112, True, HS, 1), (112, 3, 672, 112, True, HS, 1),
             (112, 5, 672, 160, True, HS, 2), (160, 5, 960, 160, True, HS, 1), (160, 5, 960, 160, True, HS, 1)]

    def __init__(self, settings=LARGE, last: int = 1280, classes: int = 1000):
        super().__init__()
        bn = {"eps": 0.001, "momentum": 0.01}
        layers = [conv_norm_act(3, settings[0][0], 3, 2, act=nn.Hardswish, **bn)]
        layers += [InvertedResidualV3(*row) for row in settings]
        c = settings[-1][3]
        layers.append(conv_norm_act(c, 6 * c, 1, act=nn.Hardswish, **bn))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(6 * c, last), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(last, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: the channels-last view's LayerNorm, and back."""

    def forward(self, x):
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt's block: 7x7 depthwise, then on the channels-last image LayerNorm, Linear 4d, GELU, Linear d,
    back to channels first, times the layer scale, plus the input."""

    def __init__(self, d: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.layer_scale = nn.Parameter(torch.ones(d, 1, 1) * layer_scale)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXt(nn.Module):
    TINY = [(96, 3), (192, 3), (384, 9), (768, 3)]  # (channels, blocks) of each stage

    def __init__(self, stages=TINY, classes: int = 1000, layer_scale: float = 1e-6):
        super().__init__()
        layers = [nn.Conv2d(3, stages[0][0], 4, 4), LayerNorm2d(stages[0][0], eps=1e-6)]
        for i, (d, n) in enumerate(stages):
            if i:
                layers += [LayerNorm2d(stages[i - 1][0], eps=1e-6), nn.Conv2d(stages[i - 1][0], d, 2, 2)]
            layers += [CNBlock(d, layer_scale) for _ in range(n)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(LayerNorm2d(stages[-1][0], eps=1e-6), nn.Flatten(1),
                                        nn.Linear(stages[-1][0], classes))

    def forward(self, x):
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1))


def efficientnet_b0() -> nn.Module:
    return EfficientNet()


def mobilenet_v3_large() -> nn.Module:
    return MobileNetV3()


def convnext_tiny() -> nn.Module:
    return ConvNeXt()
