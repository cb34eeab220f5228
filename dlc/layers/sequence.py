"""layernorm, attention, posembed, clstoken, tokens, seqpool: the kinds of transformers (docs/language.md,
"Sequences and transformers").

Resolved attributes and tensors (batch left out):
- layernorm: eps, features (the last axis of a vector or a sequence; with the flag `channels` the channels of
  each position of a signal, image or volume); gamma, beta (features), as ONNX LayerNormalization over the
  last axis (channels: between Transposes to channels-last and back, as PyTorch writes ConvNeXt's LayerNorm2d).
- rmsnorm: eps, features (the last axis); gamma (features), as ONNX RMSNormalization over the last axis:
  x / sqrt(mean(x²) + eps) * gamma, no centring and no shift (Zhang & Sennrich 2019; Llama).
- attention: heads, steps (T), dim (D), head_dim (D/heads), causal, bias, keybias (off: no bk, as
  Whisper's key projection), dropout (on the attention weights, training only), kv (key/value heads,
  = heads unless grouped), rope (False, or the rotary base theta), window (None, or how many steps a causal step sees, itself included). Wq, Wo (D, D) and Wk, Wv
  (kv·head_dim, D) laid out as fc's W (out, in); bq, bo (D) and bk, bv (kv·head_dim) with `bias`, bk
  only with `keybias` too (attention_biases).
  Multi-head self-attention: softmax(Q Kᵀ / sqrt(head_dim)) V per head, query head i reading key/value
  head i // (heads/kv), heads joined, then Wo.
  With window=HxW (a tuple) on a token grid (Swin's W-MSA and SW-MSA, torchvision's order): grid (the
  tokens' H, W), window (wh, ww), shift (sh, sw) as applied: the written shift, 0 on an axis the window
  spans whole (torchvision's rule); B ((2wh-1)(2ww-1), heads), the relative position bias table.
  Each window of wh·ww tokens attends within itself, its scores plus B read at relative_index; the grid
  is first rolled up and left by the shift and windows of tokens from different regions of the rolled
  grid are kept apart by -100 added to their scores (torchvision's mask), then rolled back.
- posembed: steps, dim, positions (the table's rows, >= steps), fixed; P (positions, D), its first T rows
  added to the sequence; with `fixed` no P: sinusoids(T, D) of dlc.engine.kernels.sequence instead.
- clstoken: dim; cls (D) put before the first step.
- tokens: an image C@HxW read as H·W steps of C features, row by row (ViT's patch sequence); a signal
  C@L as L steps of C features (Whisper's encoder after its conv stem).
- seqpool: steps, mode ("first", "last" or "mean", from the flags; mean when none is given).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import (BIAS, COUNT, GLOBAL, READ, SCALE, SHIFT, SIZES, Grid, LayerKind, Role, Shape, ShapeRule, Signal,
                        elements, is_sequence, register, weight)
from dlc.layers.spatial import is_spatial, show


def _sequence(shape, what: str) -> tuple[int, int]:
    if not is_sequence(shape):
        raise ShapeError(f"{what} expects a sequence TxD, got {show(shape)}")
    return shape


def per_step_norm(kind: str, hint: str = "") -> ShapeRule:
    """The shape rule of layernorm and rmsnorm: the features of a vector or of each step, eps > 0."""
    def resolve(attrs, ins):
        if len(ins[0]) != 1 and not is_sequence(ins[0]):
            raise ShapeError(f"{kind} normalises the features of a vector or of each step of a sequence, got "
                             f"{show(ins[0])}{hint}")
        if attrs["eps"] <= 0:  # it keeps the division away from zero
            raise ShapeError(f"{kind} eps must be > 0 (received eps={attrs['eps']})", "eps")
        return ins[0], dict(attrs, features=ins[0][-1])
    return resolve


# FLOPs per element: the mean (1 add), the centring (1), the variance (square and add, 2), the scaling
# by 1/std (1), gamma and beta (2); per normalised vector the eps add and the square root (2), so that
# ONNX's LayerNormalization and its ReduceMean/Sub/Pow/Sqrt/Div form count the same (dlc/onnx/count.py).
# Statistics are per sample, so unlike bn nothing folds at inference.
def resolve_layernorm(attrs, ins):
    """layernorm's rule: per_step_norm's, or with `channels` each position's channels of a signal, image or
    volume (ConvNeXt's LayerNorm2d): the axis is written, never guessed from the shape."""
    if not attrs["channels"]:
        return per_step_norm("layernorm", " (`layernorm channels` normalises each pixel's channels)")(attrs, ins)
    if not is_spatial(ins[0]):
        raise ShapeError(f"layernorm channels normalises each position's channels of a signal C@L, an image C@HxW "
                         f"or a volume C@DxHxW, got {show(ins[0])} (without `channels` it normalises the features "
                         f"of a vector or of each step)", "channels")
    if attrs["eps"] <= 0:
        raise ShapeError(f"layernorm eps must be > 0 (received eps={attrs['eps']})", "eps")
    return ins[0], dict(attrs, features=ins[0][0])


register(LayerKind(
    "layernorm", resolve_layernorm, aliases=("ln",), options={"eps": 1e-5}, flags=("channels",),
    params=lambda a, ins: {"gamma": (a["features"],), "beta": (a["features"],)},
    tensors={"gamma": SCALE, "beta": SHIFT},
    flops=lambda a, ins, out: 7 * elements(out) + 2 * elements(out) // a["features"],
))


# FLOPs by layernorm's rule without the mean, the centring and the shift: per element the square, the
# sum for the mean square, the scaling by 1/rms and gamma (4); per normalised vector the eps add and the
# square root (2). RMSNormalization and its Mul/ReduceMean/Add/Sqrt/Div/Mul form count the same.
register(LayerKind(
    "rmsnorm", per_step_norm("rmsnorm"), options={"eps": 1e-5},  # Llama's eps
    params=lambda a, ins: {"gamma": (a["features"],)}, tensors={"gamma": SCALE},
    flops=lambda a, ins, out: 4 * elements(out) + 2 * elements(out) // a["features"],
))
ROPE_THETA = 10000.0  # RoFormer's and Llama 1-2's base; Llama 3 writes rope=500000


def resolve_attention(attrs, ins):
    t, d = _sequence(ins[0], "attention")
    h = attrs["heads"]
    if h < 1 or d % h:
        raise ShapeError(f"attention splits the {d} features into heads: {h} heads must divide {d}")
    if not 0 <= attrs["dropout"] < 1:
        raise ShapeError(f"attention dropout must satisfy 0 <= P < 1 (received dropout={attrs['dropout']})",
                         "dropout")
    kv = attrs["kv"] or h
    if h % kv:
        raise ShapeError(f"attention kv={kv} groups the {h} query heads: {kv} key/value heads must divide {h}",
                         "kv")
    rope = attrs["rope"]
    if rope is True:
        rope = ROPE_THETA
    elif rope is not False and not rope > 0:
        raise ShapeError(f"attention rope=THETA takes a base above 0, 10000 without a value (received rope={rope})",
                         "rope")
    if rope and (d // h) % 2:
        raise ShapeError(f"rope turns pairs of a head's features: the head size {d}/{h} = {d // h} must be even")
    window = attrs["window"]
    if isinstance(window, tuple):
        if attrs["causal"] or rope or kv != h or attrs["from"] is not None or attrs["mask"] is not None:
            raise ShapeError("attention window=HxW (Swin's windows on a token grid) takes neither causal, rope, "
                             "kv=, from= nor mask=", "window")
        return ins[0], dict(attrs, steps=t, dim=d, head_dim=d // h, kv=kv, rope=rope, source_steps=t, source_dim=d,
                            **grid_windows(ins[0], window, attrs["shift"]))
    if attrs["shift"]:
        raise ShapeError(f"attention shift={attrs['shift']} moves the windows of window=HxW on a token grid; "
                         f"write both", "shift")
    if window is not None and not attrs["causal"]:
        # Mistral's window looks back only; a two-sided band (Longformer) is another layer
        grid = f", or window={window}x{window} for windows of the token grid" if isinstance(ins[0], Grid) else ""
        raise ShapeError(f"attention window={window} is a sliding window over earlier steps: "
                         f"write it with `causal`{grid}", "window")
    # the labelled inputs follow the current tensor in the order of the options: from=, then mask=
    read = iter(ins[1:])
    s, e = (t, d)
    if attrs["from"] is not None:
        s, e = _sequence(next(read), "attention from=")
        for option in ("causal", "rope"):  # both compare query and key positions, which cross-attention has not
            if attrs[option]:
                raise ShapeError(f"attention from={attrs['from']} reads keys from another sequence: `{option}` "
                                 f"compares positions within one, write it without", option)
    if attrs["mask"] is not None:
        mask = next(read)
        if mask != (s,):
            raise ShapeError(f"attention mask={attrs['mask']} holds one value per key step, {s} of them "
                             f"(`input seq {s} as {attrs['mask']}`), got {show(mask)}")
    return ins[0], dict(attrs, steps=t, dim=d, head_dim=d // h, kv=kv, rope=rope, source_steps=s, source_dim=e)


def grid_windows(shape: Shape, window: tuple[int, ...], shift: int) -> dict:
    """The grid, window and shift of Swin's windowed attention (torchvision's shifted_window_attention,
    without its padding: the windows must tile the grid)."""
    shown = "x".join(map(str, window))
    if not isinstance(shape, Grid):
        raise ShapeError(f"attention window={shown} attends within windows of a token grid, and {show(shape)} "
                         f"is a sequence without one: `tokens` of an image gives one", "window")
    if len(window) != 2:
        raise ShapeError(f"attention window=HxW takes a height and a width (received window={shown})", "window")
    (h, w), (wh, ww) = shape.hw, window
    if h % wh or w % ww:
        raise ShapeError(f"attention window={shown} must tile the {h}x{w} token grid: {wh} must divide {h} and "
                         f"{ww} divide {w}", "window")
    if not 0 <= shift < min(wh, ww):
        raise ShapeError(f"attention shift=N rolls the grid by fewer steps than the window's sides, 0 <= N < "
                         f"{min(wh, ww)} (received shift={shift})", "shift")
    # torchvision: a window as large as the grid's side does not shift along it
    return {"grid": (h, w), "window": (wh, ww), "shift": (0 if wh == h else shift, 0 if ww == w else shift)}


def windowed(a: dict) -> bool:
    """The attention is Swin's, within windows of a token grid."""
    return isinstance(a["window"], tuple)


def window_tokens(a: dict) -> int:
    return a["window"][0] * a["window"][1]


def attention_biases(a: dict) -> tuple[str, ...]:
    """The projections' biases the attention has: none with bias=off, all four but the key's with
    keybias=off (Whisper: a key bias adds q·bk to every score of a query alike, which softmax ignores)."""
    if not a["bias"]:
        return ()
    return ("bq", "bk", "bv", "bo") if a["keybias"] else ("bq", "bv", "bo")


def attention_params(a, ins):
    d, e, kd = a["dim"], a["source_dim"], a["kv"] * a["head_dim"]
    p = {"Wq": (d, d), "Wk": (kd, e), "Wv": (kd, e), "Wo": (d, d)}
    widths = {"bq": d, "bk": kd, "bv": kd, "bo": d}
    p.update({b: (widths[b],) for b in attention_biases(a)})
    if windowed(a):
        (wh, ww) = a["window"]
        p["B"] = ((2 * wh - 1) * (2 * ww - 1), a["heads"])
    return p


def projection_fans(a: dict, shape: Shape) -> tuple[float, float]:
    # each of the four projections is an fc, stored (out, in) like fc's W
    return shape[1], shape[0]


def attention_work(a: dict, queries: int, keys: int) -> tuple[int, int]:
    """(MACs, FLOPs) of `queries` steps each attending over `keys` steps: the whole layer (queries = T,
    keys = T or the source's steps) or one decode step at a context (queries = 1, dlc.serving)."""
    # the four projections (D² per query for queries and output; D·kv·head_dim for keys and values per
    # projected step: each new step of self-attention, a decode step's alone, every step of the source of
    # cross-attention, from its width E), then Q·Kᵀ and the weighted sum of V (queries·keys·D each, over
    # all query heads: grouped heads share keys and values, not the products). A causal mask, a window
    # or a padding mask does not shrink a whole layer's: the dense kernels compute the whole matrix;
    # rotary positions are elementwise, no MACs.
    q, d, h, kd = queries, a["dim"], a["heads"], a["kv"] * a["head_dim"]
    projected = keys if a["from"] is not None else q
    macs = 2 * q * d * d + 2 * projected * a["source_dim"] * kd + 2 * q * keys * d
    # 2·MACs, the bias adds (one per projected feature), the 1/sqrt(head_dim) scaling (1 per score),
    # softmax (3 per score) and rope's rotation (q·cos + swap(q)·sin: 3 per query and key feature)
    rope = 3 * q * (d + kd) if a["rope"] else 0
    adds = {"bq": q * d, "bk": projected * kd, "bv": projected * kd, "bo": q * d}
    return macs, 2 * macs + sum(adds[b] for b in attention_biases(a)) + 4 * h * q * keys + rope


def attention_macs(a, ins, out):
    # within windows each step attends over its window's tokens, not over the whole grid
    return attention_work(a, a["steps"], window_tokens(a) if windowed(a) else a["source_steps"])[0]


def attention_flops(a, ins, out):
    if not windowed(a):
        return attention_work(a, a["steps"], a["source_steps"])[1]
    scores = a["heads"] * a["steps"] * window_tokens(a)
    # the relative position bias added to every score, and the shifted windows' mask too
    return attention_work(a, a["steps"], window_tokens(a))[1] + scores * (2 if any(a["shift"]) else 1)


# Every step sees every step (a causal step sees itself and the earlier ones; the last sees them all;
# with a window of W a step sees W steps, and stacked layers reach further back: still the whole input).
# Swin's windows are counted so too: shifted windows reach the whole grid after a few blocks, and an
# ONNX export's gathers and products of activations say no more.
register(LayerKind(
    "attention", resolve_attention, aliases=("mha",), size="int", size_required=True, size_attr="heads",
    options={"bias": True, "keybias": True, "dropout": 0.0, "kv": COUNT, "rope": ROPE_THETA, "window": SIZES,
             "shift": 0, "from": READ, "mask": READ},
    flags=("causal", "rope"), params=attention_params,
    # Glorot-uniform projections under he too, as Keras's MultiHeadAttention and PyTorch's (xavier on
    # its stacked Wq, Wk, Wv): with He's √2 larger start the reversal transformer (specs/) reached 100%
    # in 2 epochs on 1 of 5 seeds (4 with Glorot's), and PyTorch's model given those projections stalled too
    tensors={**{w: weight(projection_fans, glorot=True) for w in ("Wq", "Wk", "Wv", "Wo")},
             **{b: BIAS for b in ("bq", "bk", "bv", "bo")},
             # Swin's relative position bias table: torchvision's trunc_normal_(std=0.02), not decayed
             "B": Role("table", std=0.02)},
    macs=attention_macs, flops=attention_flops, window=lambda a: GLOBAL,
))


def resolve_posembed(attrs, ins):
    t, d = _sequence(ins[0], "posembed")
    positions = attrs["positions"]
    if attrs["fixed"]:
        if positions is not None:
            raise ShapeError(f"posembed fixed computes its positions, it has no table of {positions} rows to size: "
                             f"write `posembed fixed`", "positions")
        if d % 2 or d < 4:
            raise ShapeError(f"posembed fixed pairs a sine and a cosine per frequency: the {d} features must be "
                             f"even and at least 4")
        positions = t
    positions = t if positions is None else positions
    if positions < t:
        raise ShapeError(f"posembed {positions} has a table of {positions} positions, fewer than the {t} steps")
    return ins[0], dict(attrs, steps=t, dim=d, positions=positions)


# A learned table of `positions` rows (T unless written: BERT's 512 used at 128 tokens), of which a
# sequence of T steps reads the first T; `fixed` is tensor2tensor's and Whisper's sinusoids, no parameters.
register(LayerKind(
    "posembed", resolve_posembed, size="int", size_attr="positions", flags=("fixed",),
    params=lambda a, ins: {} if a["fixed"] else {"P": (a["positions"], a["dim"])},
    # GPT-2's and ViT's start, N(0, 0.02^2): small beside the token embeddings; not decayed, as in
    # both recipes
    tensors={"P": Role("table", std=0.02)},
    flops=lambda a, ins, out: elements(out),  # one add per element
))


def resolve_clstoken(attrs, ins):
    t, d = _sequence(ins[0], "clstoken")
    return (t + 1, d), dict(attrs, dim=d)


# The class token starts at zero, as torchvision's ViT's does.
register(LayerKind("clstoken", resolve_clstoken, params=lambda a, ins: {"cls": (a["dim"],)},
                   tensors={"cls": Role("table", constant=0.0)}))


def resolve_tokens(attrs, ins):
    if isinstance(ins[0], Signal):  # C@L: its L positions, as Whisper's encoder turns its conv stem's output
        c, steps = ins[0]
        return (steps, c), dict(attrs)
    if len(ins[0]) != 3:
        raise ShapeError(f"tokens expects a signal C@L or an image C@HxW, got {show(ins[0])}")
    c, h, w = ins[0]
    return Grid((h, w), c), dict(attrs)


register(LayerKind("tokens", resolve_tokens))


def resolve_image(attrs, ins):
    shape = _sequence(ins[0], "image")
    steps, c = shape
    hw = attrs["grid"]
    if hw is None:
        if not isinstance(shape, Grid):
            raise ShapeError(f"image lays the steps of a token grid back out as an image, and {show(shape)} is a "
                             f"sequence without one: write its grid as `image HxW`")
        hw = shape.hw
    if len(hw) != 2:
        raise ShapeError(f"image takes the grid of the steps as HxW, like 4x6 (received {'x'.join(map(str, hw))})",
                         "grid")
    if hw[0] * hw[1] != steps:
        raise ShapeError(f"image {'x'.join(map(str, hw))} lays out {hw[0] * hw[1]:,} steps; {show(shape)} has "
                         f"{steps:,}", "grid")
    return (c, hw[0], hw[1]), dict(attrs, grid=tuple(hw))


# The way back from `tokens`: a copy, no parameters and no FLOPs; each pixel is one step, so the field is kept.
register(LayerKind("image", resolve_image, size="shape", size_attr="grid"))


def resolve_patchmerge(attrs, ins):
    shape = _sequence(ins[0], "patchmerge")
    if not isinstance(shape, Grid):
        raise ShapeError(f"patchmerge joins 2x2 neighbours of a token grid, and {show(shape)} is a sequence "
                         f"without one: `tokens` of an image gives one")
    (h, w), c = shape.hw, shape[1]
    if h % 2 or w % 2:
        raise ShapeError(f"patchmerge joins 2x2 neighbours: the token grid {h}x{w} must have even sides")
    return Grid((h // 2, w // 2), 4 * c), dict(attrs, grid=(h, w), features=c)


# Swin's PatchMerging is `patchmerge -> layernorm -> fc 2C bias=off`; this is its data movement alone.
# Its receptive field is left as a pointwise kind's, as its ONNX Reshape and Transpose give it: in Swin it
# follows an attention, which has seen the whole image already.
register(LayerKind("patchmerge", resolve_patchmerge))

POOL_MODES = ("first", "last", "mean")


def resolve_seqpool(attrs, ins):
    t, d = _sequence(ins[0], "seqpool")
    modes = [m for m in POOL_MODES if attrs[m]]
    if len(modes) > 1:
        raise ShapeError(f"seqpool takes one of the flags first, last or mean (received {' and '.join(modes)})")
    return (d,), dict(attrs, steps=t, mode=modes[0] if modes else "mean")


register(LayerKind(
    "seqpool", resolve_seqpool, flags=POOL_MODES,
    flops=lambda a, ins, out: elements(ins[0]) if a["mode"] == "mean" else 0,  # the mean's adds
    window=lambda a: None if a["mode"] != "mean" else GLOBAL,
))
