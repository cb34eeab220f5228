"""rnn, lstm, gru with the ONNX RNN/LSTM/GRU operator semantics, and backpropagation through time.

Weights per direction d: W[d] (G*H, D), R[d] (G*H, H), B[d] = [Wb, Rb] (2*G*H); gate blocks in ONNX
order (LSTM i, o, f, c; GRU z, r, h); initial states zero; no peepholes. The GRU applies the reset
gate after the hidden product (linear_before_reset=1). The backward direction runs the same cell on
the time-reversed input; its output at step t is its state after reading x[t], so its last state
(the one returned without `sequences`) is the one after reading x[0], as ONNX's Y_h.

A cell is a pair of functions on one time step, batch-vectorised:
  step(zx, h, c, R, Rb) -> (h, c, cache): zx is the input projection W x + Wb of this step;
  back(dh, dc, cache, R) -> (dzx, dzh, dh_prev, dc_prev): dzx is the gradient of zx, dzh that of
  the hidden-side pre-activation h_prev R^T + Rb (they differ only in the GRU's candidate block).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dlc.engine.kernels import Arrays, Ctx, Forward, Kernel, kernel
from dlc.engine.kernels.elementwise import logistic

Step = tuple[np.ndarray, np.ndarray | None, object]  # (h, c, cache); c is None but for the LSTM
Back = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]  # (dzx, dzh, dh_prev, dc_prev)


def rnn_step(zx: np.ndarray, h: np.ndarray, c: np.ndarray | None, R: np.ndarray, Rb: np.ndarray) -> Step:
    h = np.tanh(zx + h @ R.T + Rb)
    return h, None, h


def rnn_back(dh: np.ndarray, dc: np.ndarray | None, h: np.ndarray, R: np.ndarray) -> Back:
    dz = dh * (1 - h * h)
    return dz, dz, dz @ R, None


def lstm_step(zx: np.ndarray, h: np.ndarray, c: np.ndarray, R: np.ndarray, Rb: np.ndarray) -> Step:
    H = h.shape[1]
    z = zx + h @ R.T + Rb
    sig = logistic(z[:, :3 * H])  # i, o, f
    g = np.tanh(z[:, 3 * H:])
    i, o, f = sig[:, :H], sig[:, H:2 * H], sig[:, 2 * H:]
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    return o * tc, c_new, (sig, g, c, tc)


def lstm_back(dh: np.ndarray, dc: np.ndarray, cache: tuple, R: np.ndarray) -> Back:
    sig, g, c, tc = cache
    H = g.shape[1]
    i, o, f = sig[:, :H], sig[:, H:2 * H], sig[:, 2 * H:]
    dc = dc + dh * o * (1 - tc * tc)
    dz = np.empty((g.shape[0], 4 * H), dtype=g.dtype)
    dz[:, :H] = dc * g
    dz[:, H:2 * H] = dh * tc
    dz[:, 2 * H:3 * H] = dc * c
    dz[:, :3 * H] *= sig * (1 - sig)
    dz[:, 3 * H:] = dc * i * (1 - g * g)
    return dz, dz, dz @ R, dc * f


def gru_step(zx: np.ndarray, h: np.ndarray, c: np.ndarray | None, R: np.ndarray, Rb: np.ndarray) -> Step:
    H = h.shape[1]
    zh = h @ R.T + Rb
    zr = logistic(zx[:, :2 * H] + zh[:, :2 * H])
    u, r = zr[:, :H], zr[:, H:]  # u is ONNX's update gate z
    hh = zh[:, 2 * H:]
    n = np.tanh(zx[:, 2 * H:] + r * hh)
    return (1 - u) * n + u * h, None, (zr, n, hh, h)


def gru_back(dh: np.ndarray, dc: np.ndarray | None, cache: tuple, R: np.ndarray) -> Back:
    zr, n, hh, h = cache
    H = n.shape[1]
    u, r = zr[:, :H], zr[:, H:]
    dn = dh * (1 - u) * (1 - n * n)
    dzx = np.empty((n.shape[0], 3 * H), dtype=n.dtype)
    dzx[:, :H] = dh * (h - n)
    dzx[:, H:2 * H] = dn * hh
    dzx[:, :2 * H] *= zr * (1 - zr)
    dzx[:, 2 * H:] = dn
    dzh = dzx.copy()
    dzh[:, 2 * H:] *= r  # linear_before_reset: the reset gate scales the hidden product and Rbh
    return dzx, dzh, dzh @ R + dh * u, None


CELLS: dict[str, tuple[Callable[..., Step], Callable[..., Back]]] = {
    "rnn": (rnn_step, rnn_back), "lstm": (lstm_step, lstm_back), "gru": (gru_step, gru_back)}


def run_direction(step: Callable[..., Step], x_tm: np.ndarray, W: np.ndarray, R: np.ndarray,
                  B: np.ndarray) -> tuple[np.ndarray, list]:
    """One direction over time-major x (T, N, D): states (T, N, H) and what backward needs."""
    T, N = x_tm.shape[:2]
    G, H = W.shape[0], R.shape[1]
    zx = np.matmul(x_tm, W.T)
    zx += B[:G]
    Rb = B[G:]
    h = np.zeros((N, H), dtype=x_tm.dtype)
    c = h
    hs = np.empty((T, N, H), dtype=x_tm.dtype)
    caches = []
    for t in range(T):
        h, c, cache = step(zx[t], h, c, R, Rb)
        hs[t] = h
        caches.append(cache)
    return hs, caches


def back_direction(back: Callable[..., Back], dhs: np.ndarray, hs: np.ndarray, caches: list,
                   x_tm: np.ndarray, W: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, ...]:
    """Backpropagation through time for one direction: (dx_tm, dW, dR, dB)."""
    T, N, H = hs.shape
    G = W.shape[0]
    dzx = np.empty((T, N, G), dtype=hs.dtype)
    dzh = np.empty((T, N, G), dtype=hs.dtype)
    dh = np.zeros((N, H), dtype=hs.dtype)
    dc = dh
    for t in range(T - 1, -1, -1):
        dzx[t], dzh[t], dh_prev, dc = back(dhs[t] + dh, dc, caches[t], R)
        dh = dh_prev
    # the hidden-side products read the previous state: zeros at t = 0
    h_prev = np.concatenate([np.zeros((1, N, H), dtype=hs.dtype), hs[:-1]]).reshape(-1, H)
    dzx2, dzh2 = dzx.reshape(-1, G), dzh.reshape(-1, G)
    dW = dzx2.T @ x_tm.reshape(-1, x_tm.shape[2])
    dR = dzh2.T @ h_prev
    dB = np.concatenate([dzx2.sum(axis=0), dzh2.sum(axis=0)])
    return np.matmul(dzx, W), dW, dR, dB


def recurrent(kind: str) -> Kernel:
    step, back = CELLS[kind]

    def forward(attrs: dict, params: Arrays, state: Arrays, xs: list[np.ndarray], ctx: Ctx) -> Forward:
        x = xs[0]
        W, R, B = params["W"], params["R"], params["B"]
        dirs, H = W.shape[0], R.shape[2]
        sequences = bool(attrs["sequences"])
        # time-major inside, so each step reads a contiguous (N, G*H) block; direction 1 reversed
        x_dirs = [x.transpose(1, 0, 2), x[:, ::-1].transpose(1, 0, 2)][:dirs]
        runs = [run_direction(step, x_dirs[d], W[d], R[d], B[d]) for d in range(dirs)]
        if sequences:
            y = np.concatenate([hs if d == 0 else hs[::-1] for d, (hs, _) in enumerate(runs)], axis=2)
            y = y.transpose(1, 0, 2)
        else:
            y = np.concatenate([hs[-1] for hs, _ in runs], axis=1)

        def backward(dy):
            dx = np.zeros_like(x)
            grads = {"W": np.empty_like(W), "R": np.empty_like(R), "B": np.empty_like(B)}
            for d, (hs, caches) in enumerate(runs):
                if sequences:
                    dhs = dy[:, :, d * H:(d + 1) * H].transpose(1, 0, 2)
                    dhs = dhs if d == 0 else dhs[::-1]
                else:
                    dhs = np.zeros_like(hs)
                    dhs[-1] = dy[:, d * H:(d + 1) * H]
                dx_tm, grads["W"][d], grads["R"][d], grads["B"][d] = back_direction(
                    back, dhs, hs, caches, x_dirs[d], W[d], R[d])
                dx_tm = dx_tm.transpose(1, 0, 2)
                dx += dx_tm if d == 0 else dx_tm[:, ::-1]
            return [dx], grads
        return y, backward
    return forward


for _kind in CELLS:
    kernel(_kind)(recurrent(_kind))
