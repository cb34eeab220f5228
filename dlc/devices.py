"""The devices a roofline is drawn for: a table shipped with dlc, one's own from a .toml file, or this
machine measured once (`--device local`).

Every figure is the vendor's dense figure (NVIDIA's tables give tensor-core figures "with sparsity",
twice the dense ones: dlc halves those) with the page it came from. Memory is the datasheet's GB read as
10^9 bytes, which errs towards "does not fit". A CPU's peak is not on its datasheet: it is cores x base
clock x FLOPs per cycle, the derivation beside it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dlc.choices import DTYPE_BYTES
from dlc.errors import DlcError

GB, TERA = 10**9, 10**12


@dataclass(frozen=True)
class Device:
    name: str
    memory: int  # bytes
    bandwidth: float  # memory bandwidth, bytes/s
    peak: dict[str, float]  # dense FLOP/s (OP/s for the integer precisions) by --dtype name
    sources: dict[str, str] = field(default_factory=dict)  # figure ("memory", "bandwidth", "peak") -> URL
    note: str = ""  # how a figure was derived, where it was
    # A cache that holds a whole pass (weights, outputs and KV) serves its bytes at cache_bandwidth:
    # only `--device local` measures one; the table's parts leave it out (0).
    cache: int = 0
    cache_bandwidth: float = 0.0

    @property
    def ridge(self) -> dict[str, float]:
        """Arithmetic intensity (FLOP/byte) where each precision's peak meets the bandwidth."""
        return {p: f / self.bandwidth for p, f in self.peak.items()}


def _nvidia(name, memory_gb, bandwidth_gbs, tflops, url, note=""):
    return Device(name, memory_gb * GB, bandwidth_gbs * GB, {p: t * TERA for p, t in tflops.items()},
                  {"memory": url, "bandwidth": url, "peak": url}, note)


H100_URL = "https://www.nvidia.com/en-us/data-center/h100/"
ADA_URL = "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"
SPARSE = "tensor-core figures are the page's 'with sparsity' figures halved"
# fp32 is the plain (not TF32) rate, what a float32 product computes unless TF32 is asked for.
DEVICES: dict[str, Device] = {d.name: d for d in (
    _nvidia("h100-sxm", 80, 3350, {"fp32": 67, "bf16": 989.5, "fp16": 989.5, "fp8": 1979, "int8": 1979},
            H100_URL, SPARSE),
    _nvidia("h100-pcie", 80, 2000, {"fp32": 51, "bf16": 756, "fp16": 756, "fp8": 1513, "int8": 1513},
            "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet", SPARSE),
    _nvidia("h200", 141, 4800, {"fp32": 67, "bf16": 989.5, "fp16": 989.5, "fp8": 1979, "int8": 1979},
            "https://www.nvidia.com/en-us/data-center/h200/", SPARSE + " (H200 SXM)"),
    _nvidia("a100-80gb-sxm", 80, 2039, {"fp32": 19.5, "bf16": 312, "fp16": 312, "int8": 624, "int4": 1248},
            "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"),
    _nvidia("l4", 24, 300, {"fp32": 30.3, "bf16": 121, "fp16": 121, "fp8": 242.5, "int8": 242.5},
            "https://www.nvidia.com/en-us/data-center/l4/", SPARSE),
    _nvidia("l40s", 48, 864, {"fp32": 91.6, "bf16": 362.05, "fp16": 362.05, "fp8": 733, "int8": 733, "int4": 733},
            "https://www.nvidia.com/en-us/data-center/l40s/"),
    _nvidia("rtx4090", 24, 1008, {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3, "int8": 660.6,
                                  "int4": 1321.2}, ADA_URL,
            "Ada whitepaper, appendix A: dense tensor figures with FP32 accumulate, as data-centre parts state them"),
    _nvidia("rtx3090", 24, 936, {"fp32": 35.6, "bf16": 71, "fp16": 71, "int8": 284, "int4": 568},
            "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf",
            "GA102 whitepaper, table 9: dense tensor figures with FP32 accumulate"),
    Device("m2-max", 96 * GB, 400 * GB, {"fp32": 13.6 * TERA, "fp16": 13.6 * TERA},
           {"memory": "https://www.apple.com/newsroom/2023/01/apple-unveils-m2-pro-and-m2-max-next-generation-"
                      "chips-for-next-level-workflows/",
            "bandwidth": "https://www.apple.com/newsroom/2023/01/apple-unveils-m2-pro-and-m2-max-next-generation-"
                         "chips-for-next-level-workflows/",
            "peak": "https://en.wikipedia.org/wiki/Apple_M2"},
           "38-core GPU: 4,864 ALUs x 2 x 1.398 GHz; Apple's GPU runs fp16 at the fp32 rate"),
    Device("m3-max", 128 * GB, 400 * GB, {"fp32": 14.3 * TERA, "fp16": 14.3 * TERA},
           {"memory": "https://www.apple.com/newsroom/2023/10/apple-unveils-m3-m3-pro-and-m3-max-the-most-"
                      "advanced-chips-for-a-personal-computer/",
            "bandwidth": "https://www.apple.com/macbook-pro/specs/",
            "peak": "https://hmc-tech.com/gpu/apple-32-core-m4-max-vs-apple-40-core-m3-max"},
           "16-core CPU, 40-core GPU: 5,120 ALUs x 2 x 1.398 GHz"),
    Device("m4-max", 128 * GB, 546 * GB, {"fp32": 17.2 * TERA, "fp16": 17.2 * TERA},
           {"memory": "https://www.apple.com/newsroom/2024/10/apple-introduces-m4-pro-and-m4-max/",
            "bandwidth": "https://www.apple.com/newsroom/2024/10/apple-introduces-m4-pro-and-m4-max/",
            "peak": "https://hmc-tech.com/gpu/apple-32-core-m4-max-vs-apple-40-core-m3-max"},
           "16-core CPU, 40-core GPU: 5,120 ALUs x 2 x 1.678 GHz (the clock the page gives the 32-core part)"),
    Device("epyc-9654", 6144 * GB, 460.8 * GB,
           {"fp32": 7.3728 * TERA, "bf16": 14.7456 * TERA, "int8": 29.4912 * TERA},
           {p: "https://www.amd.com/en/products/processors/server/epyc/4th-generation-9004-and-8004-series/"
               "amd-epyc-9654.html" for p in ("memory", "bandwidth", "peak")},
           "96 cores x 2.4 GHz base; Zen 4's two 256-bit FMA pipes: 32 fp32 FLOPs a cycle, bf16 dot products "
           "twice that, int8 (VNNI) four times; 12 channels of DDR5-4800"),
    Device("xeon-8480+", 4096 * GB, 307.2 * GB,
           {"fp32": 7.168 * TERA, "bf16": 114.688 * TERA, "int8": 229.376 * TERA},
           {"memory": "https://www.intel.com/content/www/us/en/products/sku/231746/intel-xeon-platinum-8480-"
                      "processor-105m-cache-2-00-ghz/specifications.html",
            "bandwidth": "https://www.intel.com/content/www/us/en/products/sku/231746/intel-xeon-platinum-8480-"
                         "processor-105m-cache-2-00-ghz/specifications.html",
            "peak": "https://www.intel.com/content/www/us/en/products/docs/accelerator-engines/"
                    "advanced-matrix-extensions/overview.html"},
           "56 cores x 2.0 GHz base; AVX-512's two FMA units: 64 fp32 FLOPs a cycle; AMX: 1,024 bf16 and 2,048 "
           "int8 operations a cycle; 8 channels of DDR5-4800"),
)}

# Where a part lacks a precision, its work runs in the next one it has (int4 weights are widened for the
# product, a GPU without bf16 computes in fp16 or fp32).
WIDER = {"int4": ("int8", "fp8", "fp16", "bf16", "fp32"), "int8": ("fp8", "fp16", "bf16", "fp32"),
         "fp8": ("fp16", "bf16", "fp32"), "bf16": ("fp16", "fp32"), "fp16": ("bf16", "fp32"), "fp32": ()}


def compute_precision(dtype: str, act_dtype: str) -> str:
    """The precision a product runs in: the wider of weights and activations (w4a16 multiplies in 16
    bits); an ONNX model stored in several types ("mixed") computes in its activations' type."""
    known = [p for p in (dtype, act_dtype) if p in DTYPE_BYTES]  # "mixed": an ONNX file's several types
    if not known:
        return "fp32"
    return max(known, key=lambda p: (DTYPE_BYTES[p], p == act_dtype))


def peak_for(device: Device, precision: str) -> tuple[str, float]:
    """(the precision used, its FLOP/s): `precision`, or the next wider one the device has."""
    for p in (precision, *WIDER[precision]):
        if p in device.peak:
            return p, device.peak[p]
    return "fp32", device.peak["fp32"]


def find(name: str) -> Device:
    """A shipped device by name (case, spaces and underscores aside), a .toml file, or `local`."""
    if name.lower().endswith(".toml"):
        return from_toml(name)
    if name == "local":
        return local()[0]
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    if key not in DEVICES:
        raise DlcError(f"--device {name}: no such device; the table has {', '.join(DEVICES)}, or give "
                       f"FILE.toml or `local`")
    return DEVICES[key]


def from_toml(path: str) -> Device:
    """One's own device: name, memory_gb, bandwidth_gb_s and a [peak_tflops] table (fp32 = ..., bf16 = ...)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # the standard library has it from Python 3.11
        raise DlcError(f"--device {path}: reading a .toml device needs Python 3.11 or newer") from None

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise DlcError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise DlcError(f"--device {path}: {e.strerror}") from None

    def number(key: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise DlcError(f"{path}: {key} = {value!r}: give a number above 0")
        return float(value)

    known = {"name", "memory_gb", "bandwidth_gb_s", "peak_tflops"}
    for key in doc:
        if key not in known:
            raise DlcError(f"{path}: unknown key {key!r}; a device has {', '.join(sorted(known))}")
    for key in ("memory_gb", "bandwidth_gb_s", "peak_tflops"):
        if key not in doc:
            raise DlcError(f"{path}: {key} is missing (memory_gb, bandwidth_gb_s and [peak_tflops] with fp32 = ...)")
    peaks = doc["peak_tflops"]
    if not isinstance(peaks, dict) or "fp32" not in peaks:
        raise DlcError(f"{path}: peak_tflops must be a table with at least fp32 = TFLOPS")
    for p in peaks:
        if p not in DTYPE_BYTES:
            raise DlcError(f"{path}: peak_tflops.{p}: a precision is one of {', '.join(DTYPE_BYTES)}")
    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str):
        raise DlcError(f"{path}: name = {name!r}: give a string")
    return Device(name, int(number("memory_gb", doc["memory_gb"]) * GB),
                  number("bandwidth_gb_s", doc["bandwidth_gb_s"]) * GB,
                  {p: number(f"peak_tflops.{p}", t) * TERA for p, t in peaks.items()}, {"file": str(path)})


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlc" / "device-local.json"


def local() -> tuple[Device, str]:
    """This machine (float32 products with numpy's BLAS, copies of large arrays), measured once and cached:
    the device and a line saying which it did."""
    path = cache_file()
    try:
        return Device(**json.loads(path.read_text())), f"--device local: read the measurement cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    device = measure()
    from dlc.atomic import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(asdict(device), f, indent=1)
        where = f"cached in {path}"
    except (OSError, DlcError) as e:
        where = f"not cached ({e})"
    return device, f"--device local: measured this machine ({where})"


def measure(sizes: tuple[int, ...] = (256, 512, 1024), copy_mib: int = 256, cache_kib: int = 256) -> Device:
    """The best of many trials (a shared machine's other work slows some of them, never speeds one up):
    FLOP/s of size x size float32 products, bytes/s of moving a `copy_mib` MiB array (a copy, each byte
    read and written, or a product reading it once, the faster), and of copying a `cache_kib` KiB array,
    which stays in the cache."""
    import numpy as np

    flops = 0.0
    for size in sizes:
        a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        for product in (lambda: a @ a, onnxruntime_matmul(a)):
            product()  # the first call loads the library and its threads
            # about a second of products at each size: the best of them is the peak a quiet moment gives
            flops = max(flops, 2 * size**3 / _best(product, max(20, 200 * 256**3 // size**3)))
    conv, conv_flops = onnxruntime_conv()
    conv()
    flops = max(flops, conv_flops / _best(conv, 200))
    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    # the faster of a copy (one thread reading and writing) and a matrix-vector product reading the array
    # once on the BLAS's threads: a lower bound needs the most the memory gives to any reader
    rows, ones = src.reshape(-1, 8192), np.ones(8192, dtype=np.float32)
    bandwidth = max(2 * src.nbytes / _best(lambda: np.copyto(dst, src), 12), src.nbytes / _best(lambda: rows @ ones, 12))
    small, into = src[:cache_kib * 256], dst[:cache_kib * 256]

    def copies():
        for _ in range(100):
            np.copyto(into, small)

    cache_bandwidth = 100 * 2 * small.nbytes / _best(copies, 30)
    from dlc.machine import cache_bytes, total_bytes

    return Device("local", total_bytes(), bandwidth, {"fp32": flops},
                  {"peak": f"measured: float32 matmuls of {', '.join(map(str, sizes))} squared with numpy's BLAS "
                           f"and onnxruntime's MatMul, and onnxruntime's 3x3 convolution of 512 channels over "
                           f"7x7, the best of many of each",
                   "bandwidth": f"measured: np.copyto of {copy_mib} MiB (read + write) or a product reading it "
                                f"once, the faster, best of 12",
                   "cache": f"measured: np.copyto of {cache_kib} KiB (read + write), best of 30"},
                  f"measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores",
                  cache_bytes(), cache_bandwidth)


def onnxruntime_matmul(a):
    """a @ a by onnxruntime's MatMul (its own kernels, MLAS, which reach a few per cent above numpy's BLAS
    on a CPU), as a call: the peak must be the most any of this machine's libraries reaches."""
    n = a.shape[0]
    run = _one_node(("MatMul", ["a", "a"], {}), {"a": [n, n]}, [n, n], [])
    return lambda: run({"a": a})


def onnxruntime_conv(channels: int = 512, size: int = 7):
    """(a call, its FLOPs) of onnxruntime's 3x3 convolution of `channels` channels over size x size (a
    ResNet's last stage): its convolution kernels run a few per cent above its MatMul on a CPU."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    w = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3), dtype=np.float32), "w")
    shape = [1, channels, size, size]
    run = _one_node(("Conv", ["x", "w"], {"pads": [1, 1, 1, 1]}), {"x": shape}, shape, [w])
    return (lambda: run({"x": x})), 2 * channels * channels * 9 * size * size


def _one_node(node: tuple[str, list[str], dict], inputs: dict[str, list[int]], output: list[int], initializer: list):
    """A float32 model of one node (op type, inputs, attributes) writing `y`, on onnxruntime's CPU provider:
    its run on a feed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    op_type, names, attrs = node
    graph = helper.make_graph([helper.make_node(op_type, names, ["y"], **attrs)], op_type.lower(),
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output)], initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def _best(fn, trials: int) -> float:
    return min(_seconds(fn) for _ in range(trials))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
