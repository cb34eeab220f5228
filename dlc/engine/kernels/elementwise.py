"""Activations, softmax, dropout and noise: kinds that keep their input's shape, one array in, one out.

Every kernel computes in its input's dtype: constants are Python floats, which NumPy treats as weak
scalars, so float32 stays float32. Backward closures keep only what the derivative needs.
"""

from __future__ import annotations

import math

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, kernel
from dlc.engine.kernels.dense import row_max, row_sums
from dlc.layers import feature_axis

# Klambauer et al., "Self-Normalizing Neural Networks" (2017): the fixed point of mean 0, variance 1.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@kernel("identity")
def identity(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    return xs[0], lambda dy: ([dy], {})


@kernel("relu")
def relu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    y = np.maximum(x, 0)
    return y, lambda dy: ([dy * (x > 0)], {})


@kernel("relu6")
def relu6(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    y = np.clip(x, 0, 6)  # ONNX Clip(0, 6)
    return y, lambda dy: ([dy * ((x > 0) & (x < 6))], {})


@kernel("leaky")
def leaky(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, alpha = xs[0], float(attrs["alpha"])
    slope = np.where(x > 0, 1, alpha).astype(x.dtype, copy=False)
    return x * slope, lambda dy: ([dy * slope], {})


def logistic(z: np.ndarray) -> np.ndarray:
    """The logistic sigmoid of an array, as a new array in z's dtype."""
    # (1 + tanh(z/2)) / 2 cannot overflow for any z, and costs half of the exp-and-select forms
    # at the MLP's small batches
    y = np.multiply(z, 0.5)
    np.tanh(y, out=y)
    y *= 0.5
    y += 0.5
    return y


@kernel("sigmoid")
def sigmoid(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    y = logistic(xs[0])
    return y, lambda dy: ([dy * y * (1 - y)], {})


@kernel("silu")
def silu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    sig = logistic(x)
    y = x * sig

    def backward(dy):
        # d(x·s)/dx = s + x·s·(1 - s) = s + y·(1 - s)
        g = 1 - sig
        g *= y
        g += sig
        g *= dy
        return [g], {}
    return y, backward


# ---- the kinds of today's vision networks (issue 21) ----
@kernel("hardsigmoid")
def hardsigmoid(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    y = np.clip(x / 6 + 0.5, 0, 1)  # PyTorch's relu6(x + 3) / 6, ONNX's HardSigmoid(alpha=1/6, beta=0.5)
    slope = np.where((x > -3) & (x < 3), 1 / 6, 0).astype(x.dtype, copy=False)
    return y, lambda dy: ([dy * slope], {})


@kernel("hardswish")
def hardswish(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    gate = np.clip(x / 6 + 0.5, 0, 1)
    # d(x·g)/dx = g + x·g', g' = 1/6 inside (-3, 3): (2x + 3)/6 there, 0 below, 1 above
    slope = np.where(x <= -3, 0, np.where(x >= 3, 1, (2 * x + 3) / 6)).astype(x.dtype, copy=False)
    return x * gate, lambda dy: ([dy * slope], {})


@kernel("scale")
def scale(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, gamma = xs[0], params["gamma"]  # gamma in ONNX's broadcast layout: (C, 1, 1) for an image
    return x * gamma, lambda dy: ([dy * gamma], {"gamma": sum_to(dy * x, gamma.shape)})


@kernel("droppath")
def droppath(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, p = xs[0], float(attrs["p"])
    if not ctx.training or p == 0:
        return identity(attrs, params, state, xs, ctx)
    # one draw per sample: the whole branch is kept (scaled by 1/(1-p)) or dropped
    keep = training_rng(ctx, "droppath").random((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype) >= p
    mask = np.multiply(keep, 1 / (1 - p), dtype=x.dtype)
    return x * mask, lambda dy: ([dy * mask], {})


@kernel("tanh")
def tanh(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    y = np.tanh(xs[0])

    def backward(dy):
        # dy * (1 - y*y) in one new buffer, not three: a LeNet-5 step's four tanh layers 0.13 against
        # 0.16 ms (one thread, alternating repetitions), same bits
        g = np.multiply(y, y)
        np.subtract(1, g, out=g)
        g *= dy
        return [g], {}
    return y, backward


def scaled_elu(x: np.ndarray, alpha: float, scale: float) -> Forward:
    """scale * (x if x > 0 else alpha * (exp(x) - 1)), and its backward."""
    pos = x > 0
    # expm1 of the clipped input: accurate near 0 and no overflow warning for large positive x
    neg = alpha * np.expm1(np.minimum(x, 0))
    y = np.where(pos, x, neg)
    if scale != 1:
        y *= scale
    return y, lambda dy: ([dy * (scale * np.where(pos, 1, neg + alpha))], {})


@kernel("elu")
def elu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    return scaled_elu(xs[0], float(attrs["alpha"]), 1.0)


@kernel("selu")
def selu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    return scaled_elu(xs[0], SELU_ALPHA, SELU_SCALE)


# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# 631-638: near-minimax rational functions good to about 18 significant digits on three intervals,
# so the exact GELU passes float64 gradient checks. NumPy has no erf and scipy is not a dependency.
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERFC_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
           2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
           2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERFC_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
           1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
           3.43936767414372164e03, 1.23033935480374942e03)
_ERFC_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
           1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERFC_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
           6.05183413124413191e-2, 2.33520497626869185e-3)
_ERF_SMALL = 0.46875  # below: erf directly; above: erfc, to keep relative accuracy in the tail
_INV_SQRT_PI = 0.56418958354775628695


def _ratio(t, num, den):
    """Cody's Horner form: (((num[-1]*t + num[0])*t + ...) + num[n-1]) / ((t + den[0])*t ... + den[n-1])."""
    p, q = num[-1] * t, t
    for a, b in zip(num[:-2], den[:-1]):
        p = (p + a) * t
        q = (q + b) * t
    return (p + num[-2]) / (q + den[-1])


def _exp_neg_square(y):
    """exp(-y*y) without the cancellation of squaring a large y: split y at a multiple of 1/16."""
    y16 = np.trunc(y * 16) / 16
    return np.exp(-y16 * y16) * np.exp(-(y - y16) * (y + y16))


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function, elementwise, accurate to float64 rounding (Cody 1969)."""
    y = np.abs(x)
    out = np.empty_like(x)
    small = y <= _ERF_SMALL
    xs = x[small]
    out[small] = 1 - xs * _ratio(xs * xs, _ERF_A, _ERF_B)
    mid = ~small & (y <= 4)
    ym = y[mid]
    out[mid] = _exp_neg_square(ym) * _ratio(ym, _ERFC_C, _ERFC_D)
    big = y > 4
    yb = np.minimum(y[big], 27.0)  # erfc underflows to 0 long before 27; inf would give nan below
    inv2 = 1 / (yb * yb)
    tail = (_INV_SQRT_PI - inv2 * _ratio(inv2, _ERFC_P, _ERFC_Q)) / yb
    out[big] = _exp_neg_square(yb) * tail
    flip = ~small & (x < 0)
    out[flip] = 2 - out[flip]
    return out


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

# Abramowitz & Stegun, "Handbook of Mathematical Functions" (1964), 7.1.26: erfc(a) for a >= 0 as
# t (a1 + t (a2 + ... a5 t)) exp(-a^2) with t = 1 / (1 + p a), within 1.5e-7 of it, about float32's
# rounding (eps 1.2e-7).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def normal_cdf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Phi(x), exp(-x²/2)), the standard normal CDF and its density times sqrt(2 pi), in x's dtype:
    float64 through Cody's erfc, float32 through A&S 7.1.26 in whole-array passes (Cody's masked pieces
    took half of a transformer step). A&S computes the exponential anyway, and gelu's backward needs it."""
    if x.dtype != np.float32:
        return 0.5 * erfc(-_SQRT_HALF * x), np.exp(-0.5 * x * x)
    a = np.abs(x)
    a *= _SQRT_HALF
    t = np.multiply(a, _AS_P)
    t += 1
    np.reciprocal(t, out=t)
    q = np.multiply(t, _AS_A[-1])
    for c in reversed(_AS_A[:-1]):
        q += c
        q *= t
    gauss = np.multiply(a, -a)
    np.exp(gauss, out=gauss)
    q *= gauss  # erfc(|x| / sqrt 2), and Phi(-|x|) is half of it
    # Phi(x) = 1 - Phi(-|x|) where x > 0, else Phi(-|x|): q (0.5 - s) + s with s = [x > 0] gives exactly
    # those roundings (scaling by 0.5 and the sign are exact). np.where on the random signs of a
    # layer's inputs mispredicts its branches: 0.7 ms against 0.1 ms here.
    s = np.greater(x, 0, out=t)
    q *= np.subtract(0.5, s, out=a)
    q += s
    return q, gauss


@kernel("gelu")
def gelu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    # exact GELU, x * Phi(x) (ONNX Gelu approximate="none", PyTorch's default); Phi through erfc
    # keeps its relative accuracy for very negative x
    x = xs[0]
    cdf, gauss = normal_cdf(x)
    y = x * cdf

    def backward(dy):
        # dy * (cdf + x * pdf(x)), pdf(x) = exp(-x²/2) / sqrt(2 pi): the forward's exponential, kept
        # rather than computed again (3 of backward's 7 passes, the exp among them)
        g = np.multiply(gauss, _INV_SQRT_2PI)
        g *= x
        g += cdf
        g *= dy
        return [g], {}
    return y, backward


def softmax_axis(x: np.ndarray) -> int:
    """The axis of a batch-first array that a class target runs over: its features (softmax's default)."""
    return feature_axis(x.shape[1:]) + 1


@kernel("softmax")
def softmax(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    axis = attrs["axis"] + 1  # the resolved axis: a signal's (N, C, L) is not a sequence's (N, T, D)
    if axis == x.ndim - 1:  # vectors, or each step of a sequence
        y = x - row_max(x)
        np.exp(y, out=y)
        y /= row_sums(y)
    else:
        y = np.exp(x - x.max(axis=axis, keepdims=True))
        y /= y.sum(axis=axis, keepdims=True)

    def backward(dy):
        return [y * (dy - (dy * y).sum(axis=axis, keepdims=True))], {}
    return y, backward


# ---- the math kinds of issue 28 ----

@kernel("logsoftmax")
def logsoftmax(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, axis = xs[0], attrs["axis"] + 1
    shifted = x - x.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(dy):
        # d/dx_i of x_i - log sum exp x: dy_i - softmax_i * sum(dy)
        return [dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)], {}
    return y, backward


@kernel("softplus")
def softplus(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large x, exact for small
    y = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    return y, lambda dy: ([dy * logistic(x)], {})


@kernel("softsign")
def softsign(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    d = 1 + np.abs(x)
    return x / d, lambda dy: ([dy / (d * d)], {})


@kernel("exp")
def exp(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    y = np.exp(xs[0])
    return y, lambda dy: ([dy * y], {})


@kernel("sqrt")
def sqrt(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    with np.errstate(invalid="ignore"):  # nan below 0, as ONNX's Sqrt and torch.sqrt give, without a warning
        y = np.sqrt(xs[0])
    return y, lambda dy: ([dy / (2 * y)], {})


@kernel("abs")
def absolute(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x = xs[0]
    return np.abs(x), lambda dy: ([dy * np.sign(x)], {})


@kernel("neg")
def neg(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    return -xs[0], lambda dy: ([-dy], {})


@kernel("clip")
def clip(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, lo, hi = xs[0], attrs["min"], attrs["max"]
    inside = (x > lo) & (x < hi)  # the gradient stops at the bounds, as torch.clamp's
    return np.clip(x, lo, hi), lambda dy: ([dy * inside], {})


def sum_to(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """g summed over the axes a tensor of `shape` was broadcast along (the batch, and its axes of size 1)."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


@kernel("prelu")
def prelu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, alpha = xs[0], params["alpha"]  # alpha in ONNX's broadcast layout: (1,), or (C, 1, 1) for an image
    negative = np.minimum(x, 0)
    y = np.maximum(x, 0) + alpha * negative

    def backward(dy):
        dx = dy * np.where(x > 0, 1, alpha).astype(x.dtype, copy=False)
        return [dx], {"alpha": sum_to(dy * negative, alpha.shape)}  # each slope sums what it scaled
    return y, backward


@kernel("shift")
def shift(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    b = params["b"]
    return xs[0] + b, lambda dy: ([dy], {"b": sum_to(dy, b.shape)})


@kernel("glu")
def glu(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    axis = attrs["axis"] + 1
    a, b = np.split(xs[0], 2, axis=axis)
    gate = logistic(b)
    y = a * gate

    def backward(dy):
        return [np.concatenate([dy * gate, dy * y * (1 - gate)], axis=axis)], {}
    return y, backward


@kernel("reduce")
def reduce(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, axis, keep = xs[0], attrs["axis"] + 1, attrs["keep"]
    scale = 1.0 if attrs["sum"] else 1 / x.shape[axis]
    y = x.sum(axis=axis, keepdims=keep)
    if scale != 1:
        y *= scale

    def backward(dy):
        g = dy if keep else np.expand_dims(dy, axis)
        return [np.broadcast_to(g * scale, x.shape).copy()], {}
    return y, backward


def training_rng(ctx, kind: str) -> np.random.Generator:
    if ctx.rng is None:
        raise ValueError(f"{kind} in training mode needs ctx.rng (a seeded numpy Generator)")
    return ctx.rng


@kernel("dropout")
def dropout(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, p = xs[0], float(attrs["p"])
    if not ctx.training or p == 0:
        return identity(attrs, params, state, xs, ctx)
    # inverted dropout: scale the kept units at training time so inference is the identity
    keep = training_rng(ctx, "dropout").random(x.shape, dtype=x.dtype) >= p
    mask = np.multiply(keep, 1 / (1 - p), dtype=x.dtype)
    return x * mask, lambda dy: ([dy * mask], {})


@kernel("noise")
def noise(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
    x, sigma = xs[0], float(attrs["sigma"])
    if not ctx.training or sigma == 0:
        return identity(attrs, params, state, xs, ctx)
    eps = training_rng(ctx, "noise").standard_normal(x.shape, dtype=x.dtype)
    return x + sigma * eps, lambda dy: ([dy], {})
