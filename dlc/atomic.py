"""Writing files so that nothing a user made is lost: a reader sees the old file or the new, never half."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
from pathlib import Path

from dlc.errors import DlcError


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Yield a temp file beside `path`; when the block ends without error, flush it to disk and rename
    it over `path`. On any error (or Ctrl-C) the temp file is removed and `path` is untouched.

    The file gets the permissions open() would give it: an existing file's own, else 0666 minus the
    umask (mkstemp's 0600 would hide checkpoints and models from the rest of a group). A failed write
    names `path`, never the hidden temp file the user did not ask for."""
    path = Path(path)
    real = replaceable(path)
    tmp = None
    try:
        fd, tmp = _create_beside(real)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except OSError as e:
        _remove(tmp)
        if e.filename in (None, tmp, str(path)):
            raise DlcError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


# What a rename must not replace: the user's device, pipe or socket would become a plain file.
_NOT_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def replaceable(path) -> Path:
    """The file a write to `path` replaces: path itself, or the file a symlink at path points to (so the
    link stays a link, as open() would keep it). Raises DlcError unless that is a regular file or
    nothing yet in an existing folder: renaming over a device, FIFO or socket would destroy it."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    via = f" (through the link to {real})" if real is not path else ""
    if not real.parent.is_dir():
        raise DlcError(f"cannot write {path}: there is no folder {real.parent}{via}")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as e:
        raise DlcError(f"cannot write {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise DlcError(f"cannot write {path}: it is a folder{via}")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_FILES if test(mode)), "not a regular file")
        raise DlcError(f"cannot write {path}: it is {kind}{via}; dlc replaces only regular files")
    return real


def _create_beside(path: Path) -> tuple[int, str]:
    """A new temp file `.NAME.XXXXXXXX.tmp` in path's folder, created with open()'s permissions."""
    try:
        perms = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        perms = None
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        if perms is not None:
            os.fchmod(fd, perms)  # replacing a file keeps its permissions, as writing it in place would
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def stale_temps(path) -> list[Path]:
    """The temp files beside `path` that writes killed before their rename (SIGKILL, power loss) left."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
