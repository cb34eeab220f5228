"""What the kernel tests share: nodes resolved through the registry, central-difference gradient
checks of a kernel's backward, and one-node ONNX models run by onnxruntime as the forward reference.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
from onnx import helper

from dlc.engine.kernels import KERNELS, Ctx
from dlc.layers import KINDS

TOLERANCE = 1e-6


def resolve(kind: str, in_shapes, **written):
    """(attrs, param shapes, state shapes) of a node as the compiler would resolve it."""
    k = KINDS[kind]
    attrs = {**k.default_attrs(), **written}
    if k.size_attr and k.size_attr not in attrs:
        attrs[k.size_attr] = k.size_default
    _, attrs = k.resolve(attrs, list(in_shapes))
    return attrs, k.params(attrs, list(in_shapes)), k.state(attrs, list(in_shapes))


def random_arrays(shapes: dict, rng, dtype=np.float64, scale=0.5) -> dict:
    return {name: (scale * rng.standard_normal(s)).astype(dtype) for name, s in shapes.items()}


def numerical_grad(f, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of a (perturbed in place)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        flat[i] = v + h
        up = f()
        flat[i] = v - h
        down = f()
        flat[i] = v
        gflat[i] = (up - down) / (2 * h)
    return g


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Norm-wise: entries whose true gradient is 0 (a dead relu) do not divide by nothing."""
    scale = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return float(np.linalg.norm(analytic - numeric) / scale) if scale > 0 else 0.0


def gradient_errors(kind, attrs, params, xs, state=None, ctx=lambda: Ctx(),
                    seed=12345) -> dict[str, float]:
    """Relative error of backward against central differences for every float input and parameter.

    The scalar checked is sum(y * r) for a fixed random r. `ctx` makes a fresh context per evaluation,
    so dropout and noise draw the same numbers each time; the state is copied per evaluation so bn's
    running averages move in a copy only.
    """
    fwd = KERNELS[kind]
    state = state or {}

    def run():
        return fwd(attrs, params, copy.deepcopy(state), xs, ctx())

    y, backward = run()
    r = np.random.default_rng(seed).standard_normal(y.shape)
    dxs, dparams = backward(r.copy())
    assert len(dxs) == len(xs)
    assert set(dparams) == set(params), f"{kind}: gradients for {sorted(dparams)}, params {sorted(params)}"

    def scalar():
        return float((run()[0] * r).sum())

    errors = {}
    for i, (x, dx) in enumerate(zip(xs, dxs)):
        if np.issubdtype(x.dtype, np.integer):
            assert dx is None, f"{kind}: token ids get no gradient"
            continue
        assert dx.shape == x.shape
        errors[f"x{i}"] = relative_error(dx, numerical_grad(scalar, x))
    for name, p in params.items():
        assert dparams[name].shape == p.shape
        errors[name] = relative_error(dparams[name], numerical_grad(scalar, p))
    return errors


def assert_gradients(kind, attrs, params, xs, **kw):
    errors = gradient_errors(kind, attrs, params, xs, **kw)
    bad = {k: e for k, e in errors.items() if not e < TOLERANCE}
    assert not bad, f"{kind}: relative errors above {TOLERANCE}: {bad}"
    return errors


def onnx_run(op: str, inputs: list, n_outputs: int = 1, opset: int = 17, **attributes) -> list[np.ndarray]:
    """Run one ONNX operator on `inputs` (arrays, or None for an omitted optional input)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **attributes)
    first = next(a for a in inputs if a is not None and a.dtype.kind == "f")
    elem = helper.np_dtype_to_tensor_dtype(first.dtype)
    graph = helper.make_graph(
        [node], f"one_{op}",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs) if a is not None],
        [helper.make_tensor_value_info(o, elem, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, inputs) if a is not None})
