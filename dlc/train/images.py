"""Folders of images sorted into class folders (torchvision's ImageFolder layout), decoded a batch at a time.

`--data DIR` holds one folder per class (DIR/cat/1.png, DIR/dog/2.jpg), or train/ with optional val/
and test/ beside it, each laid out so. Class i is the i-th folder name in sorted order, as ImageFolder
numbers them, and the run keeps the names so that `dlc infer` prints them. The files are checked when
the run starts (their sizes, and that they are whole) but not decoded; the pixels are decoded when a batch needs
them, by a pool of threads (Pillow releases the GIL while it decodes), so a folder larger than memory
trains. Pillow is the `images` extra; it is imported only here, where images are read.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.normalize import normalize
from dlc.train.catalog import Wanted
from dlc.train.dataset import Data, Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "val", "test")


def pillow():
    """PIL.Image, or a one-line message naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise DlcError("reading images needs Pillow, which is not installed: pip install 'dlc[images]'") from None
    return Image


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="dlc-decode")


def _scaled(im, h: int, w: int):
    """Scale the shorter side to cover h x w, then crop the centre (torchvision's Resize + CenterCrop)."""
    scale = max(h / im.height, w / im.width)
    size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    im = im.resize(size, pillow().Resampling.BILINEAR)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    return im.crop((left, top, left + w, top + h))


def decode_image(path: str, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """One image file as C x H x W float32 in [0, 1]: grey for one channel, RGB for three."""
    c, h, w = shape
    try:
        with pillow().open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                if not resize:
                    raise DlcError(f"{path}: the image is {im.width}x{im.height} but the spec's input is "
                                   f"{h}x{w}; --resize scales and centre-crops images to fit")
                im = _scaled(im, h, w)
            pixels = np.asarray(im, np.float32) / np.float32(255)
    except DlcError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for damaged and cut-short files
        raise DlcError(f"{path}: not a readable image ({e})") from None
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


@dataclass(frozen=True)
class ImageFiles:
    """Image files as lazy rows (dlc.train.dataset.LazyRows): a batch is decoded when it is indexed."""

    paths: tuple[str, ...]
    size: tuple[int, int, int]  # C, H, W: the spec's input
    resize: bool
    norm: dict | None = None  # the run's input normalisation, applied to each decoded batch

    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), *self.size)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return len(self.paths) * math.prod(self.size) * 4

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx) -> np.ndarray:
        paths = self.paths[idx] if isinstance(idx, slice) else [self.paths[i] for i in np.asarray(idx).ravel()]
        out = np.empty((len(paths), *self.size), np.float32)
        for i, pixels in enumerate(_pool().map(lambda p: decode_image(p, self.size, self.resize), paths)):
            out[i] = pixels
        return normalize(out, self.norm) if self.norm else out

    def subset(self, idx: np.ndarray) -> ImageFiles:
        return replace(self, paths=tuple(self.paths[i] for i in idx))

    def identity(self) -> bytes:
        return "\n".join(f"{p} {os.path.getsize(p)}" for p in self.paths).encode()

    def normalized(self, norm: dict) -> ImageFiles:
        return replace(self, norm=norm)


def _header(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, or a message naming the file when it does not open or is
    cut short, so that a damaged file stops the run before it starts, not in its fifth epoch. Pillow's
    verify reads a PNG through its chunks' checksums without decoding it; a JPEG must end in its EOI
    marker (FF D9), up to a little padding after it."""
    try:
        with pillow().open(path) as im:
            size, kind = im.size, im.format
            im.verify()
        if kind == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(os.path.getsize(path) - 1024, 0))
                if b"\xff\xd9" not in f.read():
                    raise OSError("the file is cut short: no end-of-image marker")
        return size
    except (OSError, SyntaxError, ValueError) as e:
        raise DlcError(f"{path}: not a readable image ({e})") from None


def _class_folders(folder: Path) -> list[str]:
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DlcError(f"{folder}: no class subfolders; an image folder holds one folder of images per class "
                       f"(as {folder}/cat/1.png, {folder}/dog/2.jpg)")
    return names


def _files(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Every image of the split folder and its class, class by class in sorted order."""
    paths, labels = [], []
    for name in sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if name not in classes:
            raise DlcError(f"{folder / name}: a class folder the training split does not have "
                           f"(its classes: {', '.join(classes)})")
        found = sorted(str(p) for p in (folder / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DlcError(f"{folder / name}: the class folder holds no PNG or JPEG images")
        paths += found
        labels += [classes.index(name)] * len(found)
    return paths, labels


def load_folder(where: str, want: Wanted | None) -> Data:
    """An image folder as lazy splits decoded to the spec's input C@HxW, with its class names."""
    root = Path(where)
    if want is None:
        raise DlcError(f"{where}: a folder of images is decoded to a spec's input size, and no spec was given")
    if len(want.input_shape) != 3 or want.input_shape[0] not in (1, 3):
        raise DlcError(f"{where}: a folder of images trains a spec whose input is an image of 1 or 3 channels "
                       f"(C@HxW); its input is {show(want.input_shape)}")
    split_dirs = ({s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()} if (root / "train").is_dir()
                  else {"train": root})
    classes = _class_folders(split_dirs["train"])
    if len(classes) > want.classes:
        raise DlcError(f"{where}: {len(classes)} class folders but the spec's output has {want.classes} units")
    files = {s: _files(d, classes) for s, d in split_dirs.items()}
    every = [p for paths, _ in files.values() for p in paths]
    sizes = dict(zip(every, _pool().map(_header, every)))
    _, h, w = want.input_shape
    other = sorted({s for s in sizes.values() if s != (w, h)})
    if other and not want.resize:
        first = {s: p for p, s in sizes.items()}
        if len(set(sizes.values())) > 1:
            a, b = sorted(set(sizes.values()))[:2]
            raise DlcError(f"{where}: images of mixed sizes ({first[a]} is {a[0]}x{a[1]}, {first[b]} is "
                           f"{b[0]}x{b[1]}); --resize scales and centre-crops each to the spec's {h}x{w}")
        raise DlcError(f"{where}: the images are {other[0][0]}x{other[0][1]} but the spec's input is {h}x{w}; "
                       f"--resize scales and centre-crops them to fit")
    size = tuple(want.input_shape)
    splits = {s: Split(ImageFiles(tuple(p), size, want.resize), np.array(y, np.int64)) for s, (p, y) in files.items()}
    counts = ", ".join(f"{len(s)} {name}" for name, s in splits.items())
    fitted = (f"; {sum(s != (w, h) for s in sizes.values())} of other sizes scaled (shorter side) and "
              f"centre-cropped to {h}x{w}" if other else "")
    note = (f"{where}: {len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}), "
            f"{counts} images, decoded a batch at a time to {show(size)}{fitted}")
    return Data(splits["train"], splits.get("val"), splits.get("test"), name=where, notes=[note],
                class_names=classes)


def read_images(where: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """An image file, or every image in a folder and its subfolders in sorted order, as a batch of the
    model's input (scaled and centre-cropped where the size differs), with the files' names."""
    paths = image_paths(where)
    return ImageFiles(tuple(paths), shape, resize=True)[:], paths


def image_paths(where: str) -> list[str]:
    """The image file itself, or every image in the folder and its subfolders, in sorted order."""
    root = Path(where)
    paths = [str(root)] if root.is_file() else sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DlcError(f"{where}: no PNG or JPEG images in the folder")
    return paths


def is_images(where: str) -> bool:
    """An image file or a folder (of images), which infer decodes, rather than an array file."""
    return Path(where).is_dir() or Path(where).suffix.lower() in IMAGE_SUFFIXES
