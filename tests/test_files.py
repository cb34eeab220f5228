"""Files dlc writes and reads (issue 9): created with the permissions open() gives, errors that name
the user's path, no output that destroys an input, and a parser cache that runs no code."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.atomic import atomic_write
from dlc.cli import main
from dlc.errors import DlcError

SMALL = "input 4 -> fc 3 softmax"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    def set_to(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_to
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_new_file_gets_0666_minus_the_umask_as_open_gives_it(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain", "wb"):
        pass
    with atomic_write(tmp_path / "atomic") as f:
        f.write(b"x")
    assert mode(tmp_path / "atomic") == mode(tmp_path / "plain") == 0o666 & ~mask


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    path = tmp_path / "kept"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o640


def test_models_and_outputs_are_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    assert run("export", "-e", SMALL, "-o", tmp_path / "m.onnx").exit_code == 0
    assert run("infer", tmp_path / "m.onnx", "--random", 2, "--out", tmp_path / "y.npy").exit_code == 0
    assert mode(tmp_path / "m.onnx") == mode(tmp_path / "y.npy") == 0o644


def test_a_failed_write_names_the_users_path_not_the_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(DlcError) as e:
        with atomic_write(target) as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk reports it
    assert e.value.message == f"cannot write {target}: No space left on device"
    assert os.listdir(tmp_path) == []  # no temp file left behind either
    (tmp_path / "folder").mkdir()
    with pytest.raises(DlcError, match=r"cannot write .*folder: it is a folder$"):
        with atomic_write(tmp_path / "folder") as f:
            f.write(b"x")
    assert ".tmp" not in " ".join(os.listdir(tmp_path))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "my.dlc").write_text(SMALL)
    (tmp_path / "spec.onnx").write_text(SMALL)  # a spec, oddly named
    assert run("export", tmp_path / "my.dlc", "-o", tmp_path / "m.onnx").exit_code == 0
    from dlc.compile import compile_spec
    from dlc.engine.params import init_params, save_checkpoint

    save_checkpoint(tmp_path / "w.npz", *init_params(compile_spec(SMALL)))
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    (tmp_path / "link.npy").symlink_to(tmp_path / "x.npy")
    return tmp_path


@pytest.mark.parametrize("args, said", [
    (("export", "{d}/my.dlc", "-o", "{d}/my.dlc"), "-o {d}/my.dlc: the file written is .onnx; name it so"),
    (("export", "{d}/my.dlc", "--weights", "{d}/w.npz", "-o", "{d}/w.npz"), "the file written is .onnx"),
    (("export", "{d}/my.dlc", "-o", "{d}/m.txt"), "the file written is .onnx"),
    (("export", "{d}/spec.onnx", "-o", "{d}/spec.onnx"), "-o {d}/spec.onnx is the input {d}/spec.onnx"),
    (("infer", "{d}/m.onnx", "--input", "{d}/x.npy", "--out", "{d}/x.npy"),
     "--out {d}/x.npy is the input {d}/x.npy: writing it would destroy the input"),
    (("infer", "{d}/m.onnx", "--input", "{d}/x.npy", "--out", "{d}/link.npy"),  # the same file through a link
     "--out {d}/link.npy is the input {d}/x.npy"),
    (("infer", "{d}/m.onnx", "--random", 2, "--out", "{d}/m.onnx"), "the file written is .npy or .npz"),
    (("infer", "{d}/m.onnx", "--random", 2, "--out", "{d}/x.npy/y.npy"), "{d}/x.npy is a file, not a folder"),
])
def test_an_output_that_would_destroy_an_input_or_has_the_wrong_extension_is_refused(files, args, said):
    before = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    r = run(*[str(a).format(d=files) for a in args])
    assert r.exit_code == 2 and said.format(d=files) in r.stderr, r.output
    assert {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()} == before


def test_out_npz_holds_the_output_as_y(files):
    r = run("infer", files / "m.onnx", "--input", files / "x.npy", "--out", files / "y.npz")
    assert r.exit_code == 0, r.output
    with np.load(files / "y.npz") as z:
        assert z.files == ["y"] and z["y"].shape == (2, 3)


def char_device(path) -> None:
    """A character device like /dev/null's (1, 3) at path, or skip where mknod is not permitted."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod of a character device needs root")


@pytest.mark.parametrize("make, kind", [(os.mkfifo, "a named pipe (FIFO)"), (char_device, "a character device")])
def test_a_device_or_fifo_is_never_replaced_by_a_file(tmp_path, make, kind):
    # a rename over /dev/-like nodes would turn the user's device into a plain file
    dev, link = tmp_path / "fake.svg", tmp_path / "link.svg"
    make(dev)
    link.symlink_to(dev)
    for target, said in ((dev, f"cannot write {dev}: it is {kind}; dlc replaces only regular files"),
                         (link, f"cannot write {link}: it is {kind} (through the link to {dev})")):
        r = run("draw", "-e", SMALL, "-o", target)
        assert r.exit_code == 2 and said in r.stderr and "Traceback" not in r.output, r.output
        with pytest.raises(DlcError, match="dlc replaces only regular files"):
            with atomic_write(target) as f:
                f.write(b"x")
    assert not stat.S_ISREG(os.lstat(dev).st_mode) and link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["fake.svg", "link.svg"]  # no temp file left either


def test_export_refuses_a_device_before_any_work(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    r = run("export", "-e", SMALL, "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2 and "it is a named pipe (FIFO)" in r.stderr, r.output
    assert stat.S_ISFIFO(os.lstat(tmp_path / "m.onnx").st_mode)


def test_a_link_to_a_file_stays_a_link_and_its_file_is_written(tmp_path):
    (tmp_path / "real.svg").write_text("old")
    (tmp_path / "link.svg").symlink_to("real.svg")
    r = run("draw", "-e", SMALL, "-o", tmp_path / "link.svg")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link.svg").is_symlink() and (tmp_path / "real.svg").read_text().startswith("<svg")
