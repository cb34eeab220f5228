"""onnxruntime sessions on the device that really runs them, and the inference helpers around them.

`onnxruntime.get_device()` says "GPU" for the GPU wheel even on a machine without a GPU or without the
CUDA libraries, so the device is read back from `session.get_providers()` after the session exists.
onnxruntime's C++ logger writes to file descriptor 2 directly, bypassing sys.stderr: while a session
is created that descriptor points at a temporary file, whose text says why CUDA did not load.
"""

from __future__ import annotations

import ctypes
import glob
import io
import os
import re
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from dlc.errors import DlcError

DEVICES = ("auto", "cpu", "cuda")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
QUIET = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
ORT_DEFAULT_SEVERITY = 2  # the process-wide logger's level until someone sets it (onnxruntime has no getter)
# What dlc feeds: float16 models get float16 (cast at the boundary), the integer types token ids.
NUMPY_DTYPE = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass
class Port:
    """One input of the model."""

    name: str
    shape: list  # batch first; an int, or a str (e.g. "N") or None for a free axis
    dtype: type
    batched: bool = True  # False for a spec's `shared` input: one tensor, shape without a batch axis


@dataclass
class Session:
    session: ort.InferenceSession
    provider: str  # the execution provider that really runs the model
    notice: str | None  # why `auto` fell back to the CPU, one line
    inputs: list[Port]
    outputs: list[str]

    # The first input and output, for the models dlc exports (one of each).
    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> list:
        return self.inputs[0].shape

    @property
    def input_dtype(self) -> type:
        return self.inputs[0].dtype

    @property
    def output_name(self) -> str:
        return self.outputs[0]


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


def gpu_driver() -> bool:
    """Whether this machine has an NVIDIA GPU with its driver: the kernel driver's files (Linux), or the
    driver's library that every CUDA program loads (libcuda.so.1, nvcuda.dll). Without one CUDA cannot
    run whatever libraries are installed, and falling back to the CPU is no news: a laptop's normal case."""
    if os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*"):
        return True
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def create_session(model, device: str = "auto", spin: bool = True) -> Session:
    """A session for an onnx.ModelProto, serialized bytes or a path, on `device` (auto, cpu, cuda).

    `spin=False` keeps onnxruntime's worker threads from spinning after a run for the next one: where two
    sessions run in turn (alternating_latency), one's spinning threads would take the cores of the other's
    run.

    auto takes CUDA where the session really got it, else the CPU: silently on a machine without a GPU
    driver (CUDA is not even tried), with a notice on one that has a GPU but lacks a library. cuda where
    CUDA cannot run is a DlcError.
    """
    if device not in DEVICES:
        raise DlcError(f"device must be one of {', '.join(DEVICES)} (received {device})")
    if device == "auto" and not gpu_driver():
        device = "cpu"
    payload = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    reason = None
    if device != "cpu" and CUDA not in ort.get_available_providers():
        reason = f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
    providers = [CUDA, CPU] if device != "cpu" and reason is None else [CPU]
    with quiet_default_logger(), captured_fd2() as log, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        printed = io.StringIO()
        if CUDA in providers and hasattr(ort, "preload_dlls"):
            # the CUDA/cuDNN/cuBLAS wheels of `pip install 'dlc[cuda]'` are found only when loaded
            # first (onnxruntime >= 1.21); it prints what it misses, which the reason below reads
            with redirect_stdout(printed):
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(payload, opts, providers=providers)
        except Exception as e:  # onnxruntime's pybind errors share no useful base class
            raise DlcError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}")
    if CUDA in providers and CUDA not in session.get_providers():
        reason = cuda_failure(printed.getvalue() + log[0] + "\n".join(str(w.message) for w in warned))
    if device == "cuda" and reason:
        raise DlcError(f"--device cuda: CUDA cannot run here: {reason}")
    return Session(session, session.get_providers()[0], f"CUDA unavailable: {reason}; running on the CPU"
                   if device == "auto" and reason else None, ports(session), [o.name for o in session.get_outputs()])


def ports(session: ort.InferenceSession) -> list[Port]:
    """The model's inputs; a model dlc cannot feed (no inputs, a scalar, a type it does not draw) is a
    DlcError."""
    inputs = session.get_inputs()
    if not inputs:
        raise DlcError("the model has no inputs: there is nothing to feed it")
    out = []
    for i in inputs:
        if i.type not in NUMPY_DTYPE:
            raise DlcError(f"the model's input {i.name} is a {i.type}; dlc feeds float (32, 16, 64-bit) or integer "
                           f"(int64, int32) tensors")
        # onnxruntime shows an input without a shape as a scalar too (model.check_ranked tells them apart)
        if not i.shape:
            raise DlcError(f"the model's input {i.name} is a scalar (rank 0); dlc feeds batches, whose first "
                           f"axis is the batch")
        out.append(Port(i.name, list(i.shape), NUMPY_DTYPE[i.type]))
    return out


def sample_shapes(inputs: list[Port], given: dict[str | None, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each input's per-sample shape (batch left out): the model's, with free dimensions from `given`
    (--shape, by input name; key None for a model with one input)."""
    from dlc.onnx.model import resolve_shapes

    return resolve_shapes({p.name: p.shape if p.batched else ["N", *p.shape] for p in inputs}, given)


def fixed_batch(s: Session) -> int | None:
    """The batch size every input fixes, if the model was exported for one."""
    sizes = {p.shape[0] for p in s.inputs if p.batched}
    return sizes.pop() if len(sizes) == 1 and isinstance(next(iter(sizes), None), int) else None


def show_shape(shape) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "N" for d in shape) + ")"


def prepare_input(x: np.ndarray, shape: list, dtype: type, what: str = "input", batched: bool = True) -> np.ndarray:
    """Check a batch against the model's input (shape batch first, a str where the axis is free) and
    cast it to the model's dtype; a single sample gains its batch axis. An input without a batch axis
    (`shared`) is the one tensor of that shape."""
    x = np.asarray(x)
    if not batched and list(x.shape) != list(shape):
        raise DlcError(f"{what} has shape {show_shape(x.shape)}; the model expects {show_shape(shape)}, one "
                       f"tensor shared by every sample (no batch axis)")
    if batched and list(x.shape) == [d for d in shape[1:]]:
        x = x[None]
    fits = not batched or x.ndim == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(shape, x.shape))
    if not fits:
        raise DlcError(f"{what} has shape {show_shape(x.shape)}; the model expects {show_shape(shape)} "
                       f"(a batch of {show_shape(shape[1:])} samples)")
    if np.dtype(dtype).kind in "iu":
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
    """A batch of n samples: standard normal features, or integer ids below vocab (0 or 1 without one)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, vocab or 2, size=(n, *shape), dtype=dtype)
    return rng.standard_normal((n, *shape)).astype(dtype)


def random_feeds(inputs: list[Port], shapes: dict[str, tuple[int, ...]], n: int,
                 vocab: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """n random samples for every input (see random_input), each input from its own stream."""
    return {p.name: random_input(shapes[p.name], p.dtype, n if p.batched else 1, (vocab or {}).get(p.name),
                                 seed + i)[slice(None) if p.batched else 0] for i, p in enumerate(inputs)}


def run(s: Session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of the model for these inputs (by name), checked and cast to the model's types."""
    missing = [p.name for p in s.inputs if p.name not in feeds]
    if missing:
        raise DlcError(f"no array for the model's input {missing[0]} (it reads {', '.join(p.name for p in s.inputs)})")
    ready = {p.name: prepare_input(feeds[p.name], p.shape, p.dtype, what=p.name, batched=p.batched)
             for p in s.inputs}
    try:
        return s.session.run(None, ready)
    except Exception as e:  # onnxruntime's run-time errors (e.g. an id outside Gather's table)
        raise DlcError(f"onnxruntime failed: {str(e).strip().splitlines()[0]}")


def infer(s: Session, x: np.ndarray) -> np.ndarray:
    """The first output for the only input: a model dlc exported."""
    return run(s, {s.input_name: x})[0]


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


def runner(s: Session, feeds: dict[str, np.ndarray]):
    """A no-argument callable running one batch; on CUDA, inputs and outputs stay on the device (IO
    binding), so the timing measures the model, not host-device copies."""
    ready = {p.name: prepare_input(feeds[p.name], p.shape, p.dtype, what=p.name, batched=p.batched)
             for p in s.inputs}
    if s.provider != CUDA:
        return lambda: s.session.run(None, ready)
    binding = s.session.io_binding()
    for name, x in ready.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for name in s.outputs:
        binding.bind_output(name, "cuda")

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


def alternating_latency(sessions: list[Session], feeds: dict[str, np.ndarray], batch: int, warmup: int,
                        runs: int) -> list[Latency]:
    """Latency of each session on the same batch, their runs taken in turn, so that whatever else the
    machine does meanwhile falls on each of them alike (`dlc quantize` compares two models so). The
    sessions should not spin (create_session's spin=False)."""
    calls = [runner(s, feeds) for s in sessions]
    for call in calls:
        time_runs(call, warmup, 0)
    times = np.empty((len(calls), runs))
    for i in range(runs):
        for j, call in enumerate(calls):
            times[j, i] = time_runs(call, 0, 1)[0]
    return [latency(batch, t) for t in times]


def bench(s: Session, batch: int, warmup: int, runs: int, vocab: dict[str, int] | None = None,
          shapes: dict[str, tuple[int, ...]] | None = None) -> Latency:
    """Latency of one batch of random input after warm-up: the code path of `dlc bench`. `shapes` gives
    each input's per-sample shape where the model leaves dimensions free (sample_shapes)."""
    fixed = fixed_batch(s)
    if fixed is not None and fixed != batch:
        raise DlcError(f"the model was exported for batch {fixed}; it cannot run batch {batch}")
    feeds = random_feeds(s.inputs, shapes or sample_shapes(s.inputs, {}), batch, vocab)
    return latency(batch, time_runs(runner(s, feeds), warmup, runs))
