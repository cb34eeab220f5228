""".npy and .npz files a user hands over (checkpoints, inputs), checked before np.load reads them.

numpy reads an array's header whatever length its first bytes give (up to 4 GiB) before it applies its
own bound, and allocates the shape the header declares before it reads the data: a 100-byte file can
ask for terabytes. Here the length is read first and held to numpy's bound, and the declared data must
be in the file and fit in free memory.
"""

from __future__ import annotations

import io
import math
import os
import zipfile

from dlc.errors import DlcError

NPY_MAGIC = b"\x93NUMPY"
# numpy's own bound on a header from an untrusted file (np.lib.format's max_header_size)
HEADER_MAX = 10_000


def check_arrays_file(path: str) -> None:
    """A DlcError naming the file when an .npy file, or any member of an .npz (a zip), has a header past
    numpy's bound or declares more data than it holds or than memory can take. What is not an .npy or a
    zip is left to np.load to refuse."""
    from dlc.machine import refuse_unless_fits

    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
            f.seek(0)
            declared = _declared_bytes(f, os.fstat(f.fileno()).st_size, path)
        elif zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                declared = 0
                for info in z.infolist():
                    with z.open(info) as member:
                        declared += _declared_bytes(member, info.file_size, f"{path}, array {info.filename}")
        else:
            return
    refuse_unless_fits(declared, f"the arrays of {path}")


def _declared_bytes(f, size: int, where: str) -> int:
    """The data bytes an .npy stream of `size` bytes declares, once its header is read within the bound."""
    import numpy as np

    prefix = f.read(12)  # magic, version, and a header length of 2 bytes (version 1) or 4
    if len(prefix) < 12 or prefix[:6] != NPY_MAGIC or prefix[6] not in (1, 2):
        raise DlcError(f"{where}: not a version 1 or 2 .npy array")
    start, length = (10, int.from_bytes(prefix[8:10], "little")) if prefix[6] == 1 else \
        (12, int.from_bytes(prefix[8:12], "little"))
    if length > HEADER_MAX:
        raise DlcError(f"{where}: a header of {length:,} bytes, past numpy's bound of {HEADER_MAX:,} for a file it "
                       f"does not trust")
    header = io.BytesIO(prefix[8:] + f.read(max(start + length - len(prefix), 0)))
    read = np.lib.format.read_array_header_1_0 if prefix[6] == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = read(header, max_header_size=HEADER_MAX)
    except ValueError as e:
        raise DlcError(f"{where}: a damaged header ({e})") from None
    declared, held = math.prod(shape) * dtype.itemsize, max(size - start - length, 0)
    if declared > held:
        raise DlcError(f"{where}: the header declares {declared:,} bytes of {dtype} {shape}, the file holds "
                       f"{held:,}; it is damaged")
    return declared
