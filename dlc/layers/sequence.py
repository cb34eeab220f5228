"""layernorm, attention, posembed, clstoken, tokens, seqpool: the kinds of transformers (docs/language.md,
"Sequences and transformers").

Resolved attributes and tensors (batch left out):
- layernorm: eps, features (the last axis of a vector or a sequence; with the flag `channels` the channels of
  each position of a signal, image or volume); gamma, beta (features), as ONNX LayerNormalization over the
  last axis (channels: between Transposes to channels-last and back, as PyTorch writes ConvNeXt's LayerNorm2d).
- rmsnorm: eps, features (the last axis); gamma (features), as ONNX RMSNormalization over the last axis:
  x / sqrt(mean(x²) + eps) * gamma, no centring and no shift (Zhang & Sennrich 2019; Llama).
- attention: heads, steps (T), dim (D), head_dim (D/heads), causal, bias, dropout (on the attention
  weights, training only), kv (key/value heads, = heads unless grouped), rope (False, or the rotary base
  theta), window (None, or how many steps a causal step sees, itself included). Wq, Wo (D, D) and Wk, Wv
  (kv·head_dim, D) laid out as fc's W (out, in); bq, bo (D) and bk, bv (kv·head_dim) with `bias`.
  Multi-head self-attention: softmax(Q Kᵀ / sqrt(head_dim)) V per head, query head i reading key/value
  head i // (heads/kv), heads joined, then Wo.
- posembed: steps, dim; P (T, D) added to the sequence.
- clstoken: dim; cls (D) put before the first step.
- tokens: an image C@HxW read as H·W steps of C features, row by row (ViT's patch sequence).
- seqpool: steps, mode ("first", "last" or "mean", from the flags; mean when none is given).
"""

from __future__ import annotations

from dlc.errors import ShapeError
from dlc.layers import BIAS, COUNT, GLOBAL, SCALE, is_sequence, SHIFT, LayerKind, Role, Shape, ShapeRule, elements, register, weight
from dlc.layers.spatial import image, is_spatial, show


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
    if attrs["window"] is not None and not attrs["causal"]:
        # Mistral's window looks back only; a two-sided band (Longformer) is another layer
        raise ShapeError(f"attention window={attrs['window']} is a sliding window over earlier steps: "
                         f"write it with `causal`", "window")
    return (t, d), dict(attrs, steps=t, dim=d, head_dim=d // h, kv=kv, rope=rope)


def attention_params(a, ins):
    d, kd = a["dim"], a["kv"] * a["head_dim"]
    p = {"Wq": (d, d), "Wk": (kd, d), "Wv": (kd, d), "Wo": (d, d)}
    if a["bias"]:
        p.update({"bq": (d,), "bk": (kd,), "bv": (kd,), "bo": (d,)})
    return p


def projection_fans(a: dict, shape: Shape) -> tuple[float, float]:
    # each of the four projections is an fc, stored (out, in) like fc's W
    return shape[1], shape[0]


def attention_work(a: dict, queries: int, keys: int) -> tuple[int, int]:
    """(MACs, FLOPs) of `queries` steps each attending over `keys` steps: the whole layer (queries = keys =
    T) or one decode step at a context (queries = 1, dlc.serving)."""
    # the four projections (D² per query for queries and output, D·kv·head_dim for keys and values; a
    # decode step projects its new step alone), then Q·Kᵀ and the weighted sum of V (queries·keys·D each,
    # over all query heads: grouped heads share keys and values, not the products). A causal mask or a
    # window does not shrink a whole layer's: the dense kernels compute the whole square; rotary
    # positions are elementwise, no MACs.
    q, d, h, kd = queries, a["dim"], a["heads"], a["kv"] * a["head_dim"]
    macs = 2 * q * d * d + 2 * q * d * kd + 2 * q * keys * d
    # 2·MACs, the bias adds (one per projected feature), the 1/sqrt(head_dim) scaling (1 per score),
    # softmax (3 per score) and rope's rotation (q·cos + swap(q)·sin: 3 per query and key feature)
    rope = 3 * q * (d + kd) if a["rope"] else 0
    return macs, 2 * macs + (2 * q * (d + kd) if a["bias"] else 0) + 4 * h * q * keys + rope


def attention_macs(a, ins, out):
    return attention_work(a, a["steps"], a["steps"])[0]


def attention_flops(a, ins, out):
    return attention_work(a, a["steps"], a["steps"])[1]


# Every step sees every step (a causal step sees itself and the earlier ones; the last sees them all;
# with a window of W a step sees W steps, and stacked layers reach further back: still the whole input).
register(LayerKind(
    "attention", resolve_attention, aliases=("mha",), size="int", size_required=True, size_attr="heads",
    options={"bias": True, "dropout": 0.0, "kv": COUNT, "rope": ROPE_THETA, "window": COUNT},
    flags=("causal", "rope"), params=attention_params,
    tensors={**{w: weight(projection_fans) for w in ("Wq", "Wk", "Wv", "Wo")},
             **{b: BIAS for b in ("bq", "bk", "bv", "bo")}},
    macs=attention_macs, flops=attention_flops, window=lambda a: GLOBAL,
))


def resolve_posembed(attrs, ins):
    t, d = _sequence(ins[0], "posembed")
    return (t, d), dict(attrs, steps=t, dim=d)


register(LayerKind(
    "posembed", resolve_posembed, params=lambda a, ins: {"P": (a["steps"], a["dim"])},
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
    c, h, w = image(ins[0], "tokens")
    return (h * w, c), dict(attrs)


register(LayerKind("tokens", resolve_tokens))

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
