"""Writing files so that nothing a user made is lost: a reader sees the old file or the new, never half."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

from dlc.errors import DlcError


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Yield a temp file beside `path`; when the block ends without error, flush it to disk and rename
    it over `path`. On any error (or Ctrl-C) the temp file is removed and `path` is untouched."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise DlcError(f"cannot write {path}: there is no folder {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # named as stale_temps finds
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def stale_temps(path) -> list[Path]:
    """The temp files beside `path` that writes killed before their rename (SIGKILL, power loss) left."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
