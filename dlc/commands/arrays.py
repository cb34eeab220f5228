"""The arrays a command reads and writes: .npy and .npz inputs, one per input name, and outputs saved
as the user asked. numpy is imported inside the functions."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dlc.commands.arguments import parse_shapes
from dlc.errors import DlcError
from dlc.npz import check_arrays_file

if TYPE_CHECKING:  # numpy comes with it, so the functions import it only when they run
    import numpy as np

    from dlc.onnx.runtime import Port


def read_feeds(ports: list, input_path: str | None, random_n: int | None, seed: int, vocab: dict[str, int],
               shapes: tuple[str, ...]) -> dict:
    """The arrays to feed each input: --random N drawn for each (token ids below their vocabulary), or
    --input: one array for one input, an .npz with one array per input name for several."""
    from dlc.onnx import runtime as rt

    if random_n is not None:
        return rt.random_feeds(ports, rt.sample_shapes(ports, parse_shapes(shapes)), random_n, vocab, seed)
    if shapes:
        raise DlcError("--shape goes with --random: the arrays of --input carry their shapes")
    if len(ports) == 1:
        p = ports[0]
        from dlc.train.images import is_images, read_images

        if is_images(input_path):
            if len(p.shape) != 4 or not all(isinstance(d, int) for d in p.shape[1:]):
                raise DlcError(f"{input_path}: images feed a model whose input is an image C@HxW "
                               f"(this one takes {p.shape[1:]})")
            return {p.name: read_images(input_path, tuple(p.shape[1:]))[0]}
        return {p.name: cast_for(p, read_array(input_path), input_path)}
    arrays = read_named_arrays(input_path, [p.name for p in ports])
    return {p.name: cast_for(p, arrays[p.name], f"{input_path}'s {p.name}") for p in ports}


def cast_for(port: Port, x: np.ndarray, what: str) -> np.ndarray:
    """x checked against the model's input and cast to its dtype; values past that dtype's range become
    infinite, as in any runtime of that precision, and the user hears which input they came from."""
    import numpy as np

    from dlc.onnx import runtime as rt

    with np.errstate(over="ignore"):  # said below, in dlc's words, with the count
        ready = rt.prepare_input(x, port.shape, port.dtype, what=what, batched=port.batched)
    if ready.dtype.kind == "f" and ready.dtype != x.dtype:  # only a narrowing cast makes infinities
        lost = int(np.count_nonzero(np.isinf(ready))) - int(np.count_nonzero(np.isinf(x)))
        if lost:
            click.echo(f"dlc: warning: {what}: {lost:,} of {x.size:,} values lie beyond {ready.dtype}'s range "
                       f"(largest {np.finfo(ready.dtype).max:.4g}) and become infinite", err=True)
    return ready


def read_named_arrays(path: str, names: list[str]) -> dict:
    """One array per input name from an .npz, for a model with several inputs."""
    import numpy as np

    listed = ", ".join(names)
    if not path.lower().endswith(".npz"):
        raise DlcError(f"the model has {len(names)} inputs ({listed}): give them as an .npz holding one array "
                       f"per input name")
    existing_file(path)
    try:
        check_arrays_file(path)
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise DlcError(f"{path} holds {', '.join(data.files) or 'no arrays'}; the model reads {listed} "
                               f"(no array named {missing[0]})")
            return {n: data[n] for n in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DlcError(f"{path} cannot be read as a NumPy .npz file ({e})")


def write_outputs(path: str, names: list[str], ys: list) -> None:
    """--out: the only output as .npy, or every output by name in an .npz."""
    if len(ys) == 1:
        write_array(path, ys[0])
        return
    if not path.lower().endswith(".npz"):
        raise DlcError(f"the model has {len(ys)} outputs ({', '.join(names)}): give --out Y.npz to save them all")
    import numpy as np

    from dlc.atomic import atomic_write

    with atomic_write(path) as f:
        np.savez(f, **dict(zip(names, ys)))


def existing_file(path: str) -> Path:
    if not Path(path).is_file():
        raise DlcError(f"no such file: {path}")
    return Path(path)


def read_array(path: str):
    """X from an .npy file, or from an .npz file's `x` (or its only array)."""
    import numpy as np

    p = existing_file(path)
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):  # .npy's magic string; .npz is a zip
        raise DlcError(f"{path} is not a NumPy .npy or .npz file")
    try:
        check_arrays_file(path)
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DlcError(f"{path} cannot be read as a NumPy array ({e})")
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "x" in data.files:
                data = data["x"]
            elif len(data.files) == 1:
                data = data[data.files[0]]
            else:
                raise DlcError(f"{path} holds {', '.join(data.files) or 'no arrays'}; name the input array `x`")
    if data.dtype.kind not in "biuf":  # a cast to float32 would drop an imaginary part without a word
        raise DlcError(f"{path} holds {data.dtype} values; a network reads real numbers or token ids")
    return data


def write_array(path: str, y) -> None:
    """np.save (or np.savez with the array as `y` for a .npz name), atomically."""
    import numpy as np

    from dlc.atomic import atomic_write

    with atomic_write(path) as f:
        if path.lower().endswith(".npz"):
            np.savez(f, y=y)
        else:
            np.save(f, y)


def json_values(y) -> list:
    """An array as JSON lists, with null where a value is NaN or infinite (JSON has no NaN)."""
    import numpy as np

    if y.dtype.kind != "f":
        return y.tolist()
    cells = y.astype(object)
    cells[~np.isfinite(y)] = None
    return cells.tolist()
