"""Issue 23's larger-than-memory targets: resident memory of `dlc train` on a multi-GB token file and on a
20,000-image folder, and the image loader's images/s against LeNet-5's training images/s.

Run: python bench/bench_data.py [--gb 4] [--images 20000] [--seconds 40] [--tmp /tmp/dlc-bench-data]

Everything is generated under --tmp (never in the repository) and reused by a later run:
- tokens: train.bin of --gb gigabytes of uint16 ids below 512 (meta.json beside it), trained by a
  small language model (seq 256, embed 32, vocab 512) with --batch 16;
- images: --images PNG glyph renders (1@32x32) in ten class folders, trained by specs/lenet5.dlc.
Each run is a `dlc train` process sampled from /proc every 0.2 s for --seconds, then stopped with
SIGINT (its checkpoint written, as a user's Ctrl-C). Resident memory is reported as the peak VmRSS
(VmHWM) and split into anonymous memory (the process's own arrays) and file pages (the token map's
pages in the page cache, which the kernel takes back under pressure). The target: within 1.5 GB plus
`dlc summary`'s training memory of the model.

Loader vs training: decoding batches of 64 from a 2,000-image subset of the folder (dlc's loader
alone, its threads included) against `dlc train`'s images/s on that subset (one epoch, --json), and
against the same run on the same images held in memory (an .npz): the last ratio is what reading
from files costs the training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DLC = [sys.executable, "-m", "dlc"]
TOKEN_SPEC = "input seq 256 -> embed 32 vocab=512 -> fc 512 softmax"


def make_tokens(folder: Path, gb: float) -> Path:
    path = folder / "train.bin"
    size = int(gb * 2**30) // 2
    if path.is_file() and path.stat().st_size == size * 2:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for start in range(0, size, 1 << 26):
            rng.integers(0, 512, min(1 << 26, size - start), dtype=np.uint16).tofile(f)
    (folder / "meta.json").write_text('{"dtype": "uint16", "vocab_size": 512}')
    return path


def make_images(folder: Path, n: int) -> Path:
    from PIL import Image

    from dlc.train.builtin import builtin_data

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == n:
        return folder
    d = builtin_data("glyphs", (1, 32, 32), 10, (n, 0, 0), 0)
    for i, (x, y) in enumerate(zip(d.train.x, d.train.y)):
        (folder / f"digit{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(x[0], 0, 1) * 255).round().astype(np.uint8)).save(folder / f"digit{y}" / f"{i}.png")
    return folder


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def resident(args: list[str], seconds: float) -> dict[str, int]:
    """The peaks of a `dlc train` process's memory while it runs for `seconds`, then SIGINT."""
    proc = subprocess.Popen([*DLC, "train", *args, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        try:
            now = status(proc.pid)
        except FileNotFoundError:
            break
        peak = {k: max(v, now.get(k, 0)) for k, v in peak.items()}
        time.sleep(0.2)
    if proc.poll() is not None:
        raise SystemExit(f"dlc train ended early: {proc.stderr.read().decode()}")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    return peak


def training_memory(spec: list[str], batch: int) -> int:
    """`dlc summary`'s NumPy-engine training peak of the spec at the batch, in bytes (its --json)."""
    doc = json.loads(subprocess.check_output([*DLC, "summary", *spec, "--batch", str(batch), "--json"]))
    return int(doc["totals"]["engine_train_bytes"])


def loader_rate(folder: Path, n: int) -> float:
    from dlc.train.images import IMAGE_SUFFIXES, ImageFiles

    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES)[:n]
    files = ImageFiles(tuple(paths), (1, 32, 32), resize=False)
    start = time.perf_counter()
    for i in range(0, len(files), 64):
        files[i:i + 64]
    return len(files) / (time.perf_counter() - start)


def subset(folder: Path, out: Path, per_class: int) -> Path:
    """A folder of links to the first per_class images of each class."""
    if out.is_dir():
        return out
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        (out / d.name).mkdir(parents=True)
        for p in sorted(d.iterdir())[:per_class]:
            (out / d.name / p.name).symlink_to(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/dlc-bench-data"))
    ap.add_argument("--rates-only", action="store_true", help="Only the loader and training rates.")
    a = ap.parse_args()
    budget = 1.5 * 2**30
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731

    lenet = [str(REPO / "specs" / "lenet5.dlc")]
    images = make_images(a.tmp / f"glyphs{a.images}", a.images)
    if not a.rates_only:
        memory(a, budget, gib, lenet, images)
    small = subset(images, a.tmp / "glyphs2000", 200)
    load = loader_rate(small, 2000)
    held = a.tmp / "glyphs2000.npz"
    if not held.is_file():
        from dlc.train.images import load_folder
        from dlc.train.catalog import Wanted

        d = load_folder(str(small), Wanted((1, 32, 32), 10))
        np.savez(held, x=d.train.x[:], y=d.train.y)
    rates = {}
    for name, data in (("folder", small), ("memory", held), ("folder", small), ("memory", held)):
        doc = json.loads(subprocess.check_output([*DLC, "train", *lenet, "--data", str(data), "--epochs", "1",
                                                  "--out", str(a.tmp / f"run-rate-{os.getpid()}-{len(rates)}-{name}"),
                                                  "--json"]))
        rates.setdefault(name, []).append(doc["images_per_second"])
    train, memo = max(rates["folder"]), max(rates["memory"])
    print(f"LeNet-5 on 2,000 images: loader alone {load:,.0f} images/s; training from the folder {train:,.0f} "
          f"images/s, from memory {memo:,.0f} (best of two each): the loader is {load / train:.1f}x the "
          f"training rate, and the folder trains at {train / memo:.2f}x the in-memory rate")


def memory(a, budget: float, gib, lenet: list[str], images: Path) -> None:
    tokens = make_tokens(a.tmp / "tokens", a.gb)
    out = a.tmp / f"run-tokens-{os.getpid()}"
    peak = resident(["-e", TOKEN_SPEC, "--data", str(tokens), "--batch", "16", "--out", str(out)], a.seconds)
    model = training_memory(["-e", TOKEN_SPEC], 16)
    print(f"token file {gib(tokens.stat().st_size)}: peak RSS {gib(peak['VmHWM'])} (anonymous {gib(peak['RssAnon'])}, "
          f"file pages {gib(peak['RssFile'])}); target {gib(budget + model)} = 1.5 GiB + the model's {gib(model)}")

    peak = resident([*lenet, "--data", str(images), "--out", str(a.tmp / f"run-images-{os.getpid()}")], a.seconds)
    model = training_memory(lenet, 64)
    print(f"image folder of {a.images:,}: peak RSS {gib(peak['VmHWM'])} (anonymous {gib(peak['RssAnon'])}); "
          f"target {gib(budget + model)} = 1.5 GiB + the model's {gib(model)}")


if __name__ == "__main__":
    main()
