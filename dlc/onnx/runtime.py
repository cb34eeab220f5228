"""onnxruntime sessions on the device that really runs them, and the inference helpers around them.

`onnxruntime.get_device()` says "GPU" for the GPU wheel even on a machine without a GPU or without the
CUDA libraries, so the device is read back from `session.get_providers()` after the session exists.
onnxruntime's C++ logger writes to file descriptor 2 directly, bypassing sys.stderr: while a session
is created that descriptor points at a temporary file, whose text says why CUDA did not load.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from dlc.errors import DlcError

DEVICES = ("auto", "cpu", "cuda")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
QUIET = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
ORT_DEFAULT_SEVERITY = 2  # the process-wide logger's level until someone sets it (onnxruntime has no getter)
NUMPY_DTYPE = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


@dataclass
class Session:
    session: ort.InferenceSession
    provider: str  # the execution provider that really runs the model
    notice: str | None  # why `auto` fell back to the CPU, one line
    input_name: str
    input_shape: list  # batch first; a str (e.g. "N") for a dynamic axis
    input_dtype: type
    output_name: str


@contextmanager
def captured_fd2():
    """Point file descriptor 2 at a temporary file; the list yielded receives its text on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


@contextmanager
def quiet_default_logger():
    """onnxruntime's process-wide logger at QUIET inside the block, back at its default level after.

    onnxruntime offers no way to read the level, so it is restored to the library's default: a caller
    that set another level itself sets it again.
    """
    ort.set_default_logger_severity(QUIET)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)


def cuda_failure(log: str) -> str:
    """Why onnxruntime did not create its CUDA provider, in a few words, from what it logged."""
    missing = re.search(r"([\w.+-]+\.(?:so[\w.]*|dll)): cannot open shared object file", log)
    if missing:
        return f"{missing.group(1)}, a CUDA library onnxruntime needs, cannot be found"
    for pattern in (r"no CUDA-capable device is detected", r"CUDA driver version is insufficient[^\n]*",
                    r"LoadLibrary failed with error \d+[^\n]*"):
        m = re.search(pattern, log)
        if m:
            return m.group(0).strip()
    return "onnxruntime could not create its CUDA provider"


def create_session(model, device: str = "auto") -> Session:
    """A session for an onnx.ModelProto, serialized bytes or a path, on `device` (auto, cpu, cuda).

    auto takes CUDA where the session really got it, else the CPU with a notice; cuda where CUDA
    cannot run is a DlcError.
    """
    if device not in DEVICES:
        raise DlcError(f"device must be one of {', '.join(DEVICES)} (received {device})")
    payload = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    reason = None
    if device != "cpu" and CUDA not in ort.get_available_providers():
        reason = f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
    providers = [CUDA, CPU] if device != "cpu" and reason is None else [CPU]
    with quiet_default_logger(), captured_fd2() as log, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(payload, opts, providers=providers)
        except Exception as e:  # onnxruntime's pybind errors share no useful base class
            raise DlcError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}")
    if CUDA in providers and CUDA not in session.get_providers():
        reason = cuda_failure(log[0] + "\n".join(str(w.message) for w in warned))
    if device == "cuda" and reason:
        raise DlcError(f"--device cuda: CUDA cannot run here: {reason}")
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if inp.type not in NUMPY_DTYPE:
        raise DlcError(f"the model's input {inp.name} is a {inp.type}; dlc feeds float32 or int64 tensors")
    return Session(session, session.get_providers()[0], f"CUDA unavailable: {reason}; running on the CPU"
                   if device == "auto" and reason else None, inp.name, list(inp.shape), NUMPY_DTYPE[inp.type],
                   out.name)


def show_shape(shape) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "N" for d in shape) + ")"


def prepare_input(x: np.ndarray, shape: list, dtype: type, what: str = "input") -> np.ndarray:
    """Check a batch against the model's input (shape batch first, a str where the axis is free) and
    cast it to the model's dtype; a single sample gains its batch axis."""
    x = np.asarray(x)
    if list(x.shape) == [d for d in shape[1:]]:
        x = x[None]
    fits = x.ndim == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(shape, x.shape))
    if not fits:
        raise DlcError(f"{what} has shape {show_shape(x.shape)}; the model expects {show_shape(shape)} "
                       f"(a batch of {show_shape(shape[1:])} samples)")
    if dtype is np.int64:
        if x.dtype.kind not in "iu":
            raise DlcError(f"{what} is {x.dtype}; the model reads token ids (integers), shape {show_shape(shape)}")
    elif x.dtype.kind != "f":
        raise DlcError(f"{what} is {x.dtype}; the model expects floating-point values, shape "
                       f"{show_shape(shape)}")
    return x.astype(dtype, copy=False)


def check_tokens(x: np.ndarray, vocab: int) -> None:
    if x.size and (x.min() < 0 or x.max() >= vocab):
        raise DlcError(f"token ids must lie in 0..{vocab - 1} (the embedding's vocab={vocab}); "
                       f"the input holds {x.min()}..{x.max()}")


def random_input(shape: tuple[int, ...], dtype, n: int, vocab: int | None = None, seed: int = 0) -> np.ndarray:
    """A batch of n samples: standard normal features, or token ids below vocab."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.int64:
        return rng.integers(0, vocab or 2, size=(n, *shape), dtype=np.int64)
    return rng.standard_normal((n, *shape)).astype(dtype)


def infer(s: Session, x: np.ndarray) -> np.ndarray:
    x = prepare_input(x, s.input_shape, s.input_dtype)
    try:
        return s.session.run([s.output_name], {s.input_name: x})[0]
    except Exception as e:  # onnxruntime's run-time errors (e.g. an id outside Gather's table)
        raise DlcError(f"onnxruntime failed: {str(e).strip().splitlines()[0]}")


def time_runs(fn, warmup: int, runs: int) -> np.ndarray:
    """Seconds per call of fn after warmup calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def runner(s: Session, x: np.ndarray):
    """A no-argument callable running one batch; on CUDA, input and output stay on the device (IO
    binding), so the timing measures the model, not host-device copies."""
    x = prepare_input(x, s.input_shape, s.input_dtype)
    if s.provider != CUDA:
        return lambda: s.session.run([s.output_name], {s.input_name: x})
    binding = s.session.io_binding()
    binding.bind_ortvalue_input(s.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output(s.output_name, "cuda")

    def run():
        s.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


@dataclass
class Latency:
    batch: int
    p50: float  # seconds
    p90: float
    p99: float
    runs: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch / self.p50


def latency(batch: int, times: np.ndarray) -> Latency:
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return Latency(batch, float(p50), float(p90), float(p99), len(times))


def bench(s: Session, batch: int, warmup: int, runs: int, vocab: int | None = None) -> Latency:
    """Latency of one batch of random input after warm-up: the code path of `dlc bench`."""
    shape = [d if isinstance(d, int) else None for d in s.input_shape]
    if shape[0] is not None and shape[0] != batch:
        raise DlcError(f"the model was exported for batch {shape[0]}; it cannot run batch {batch}")
    x = random_input(tuple(shape[1:]), s.input_dtype, batch, vocab)
    return latency(batch, time_runs(runner(s, x), warmup, runs))
