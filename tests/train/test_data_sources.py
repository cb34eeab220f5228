"""The table of data sources (dlc.train.catalog) is complete: every built-in set has an entry and a
generator, every entry's reader exists and reads a tiny sample written here, every `--data` the README
and docs show finds its entry, and `dlc train --help` lists every entry. A new source without a sample
fails here, naming it, as a kind missing from a backend does in tests/test_backends.py."""

from __future__ import annotations

import gzip
import importlib
import inspect
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlc.cli import main
from dlc.errors import DlcError
from dlc.train import builtin, catalog
from dlc.train.catalog import BUILTIN_SETS, SOURCES, Source, Wanted, builtin_source, file_source
from dlc.train.readers import load_file
from dlc.train.sequences import TARGETS

ROOT = Path(__file__).resolve().parents[2]

# name -> (tmp_path -> (where, want, check(data))): a tiny sample of each source and what it must read as
SAMPLES = {}


def sample(name: str):
    def register(make):
        SAMPLES[name] = make
        return make
    return register


@sample("xor")
def _xor(tmp):
    def check(d):
        assert d.train.x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and d.train.y.tolist() == [0, 1, 1, 0]
    return "xor", Wanted((2,), 2), check


@sample("spirals")
def _spirals(tmp):
    def check(d):  # radius 0..1 on the plane, the three arms as the three labels
        assert (len(d.train), len(d.val), len(d.test)) == (6, 3, 3) and d.train.x.shape == (6, 2)
        assert np.hypot(*d.train.x.T).max() <= 1 and set(d.train.y.tolist()) == {0, 1, 2}
    return "spirals", Wanted((2,), 3, sizes=(6, 3, 3)), check


@sample("blobs")
def _blobs(tmp):
    def check(d):
        assert d.train.x.shape == (8, 5) and d.val is None and len(d.test) == 4
    return "blobs", Wanted((5,), 4, sizes=(8, 0, 4)), check


@sample("glyphs")
def _glyphs(tmp):
    def check(d):  # one grey image copied into both channels
        assert d.train.x.shape == (10, 2, 8, 8) and np.array_equal(d.train.x[:, 0], d.train.x[:, 1])
        assert set(d.train.y.tolist()) == set(range(10))
    return "glyphs", Wanted((2, 8, 8), 10, sizes=(10, 0, 0)), check


def _sequences(name: str, target):
    def make(tmp):
        def check(d):
            x = d.train.x
            assert x.shape == (3, 6) and x.min() >= 0 and x.max() < 5
            assert np.array_equal(d.train.y, target(x))
        return name, Wanted((6,), 5, vocab=5, sizes=(3, 0, 0)), check
    return make


sample("reverse")(_sequences("reverse", lambda x: x[:, ::-1]))
sample("sort")(_sequences("sort", lambda x: np.sort(x, axis=1)))
sample("copy")(_sequences("copy", lambda x: x))


@sample("pairs")
def _pairs(tmp):
    def check(d):  # ids of two sequences side by side, their segments, and whether the second repeats the first
        ids, types = d.train.x.arrays["ids"], d.train.x.arrays["types"]
        assert ids.shape == types.shape == (6, 4) and (types == [0, 0, 1, 1]).all()
        assert np.array_equal(d.train.y, (ids[:, :2] == ids[:, 2:]).all(axis=1))
    inputs = (catalog.InputWanted("ids", (4,), 3), catalog.InputWanted("types", (4,), 2))
    return "pairs", Wanted((4,), 2, vocab=3, sizes=(6, 0, 0), inputs=inputs), check


@sample(".txt")
def _text(tmp):
    path = tmp / "book.txt"
    path.write_text("abcab" * 20)

    def check(d):  # windows of 4 characters predicting the next: the targets are the inputs one on
        assert d.vocab == "abc" and d.train.x[0].tolist() == [0, 1, 2, 0] and d.train.y[0].tolist() == [1, 2, 0, 1]
    return str(path), Wanted((4,), 3, vocab=3), check


@sample("IDX")
def _idx(tmp):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    for stem, a in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", np.array([7, 2], np.uint8))):
        # LeCun's layout: 0, 0, type 0x08 (unsigned byte), ndim, big-endian sizes, the bytes
        (tmp / stem).write_bytes(bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())

    def check(d):  # pixel bytes to [0, 1], one channel
        assert d.train.x.shape == (2, 1, 3, 3) and d.train.y.tolist() == [7, 2]
        np.testing.assert_allclose(d.train.x[1, 0], images[1] / 255, rtol=1e-6)
    return str(tmp), None, check


@sample(".pkl[.gz]")
def _pickle(tmp):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((x, np.array([1, 0, 1])), (x[:1], np.array([0]))), protocol=2)))

    def check(d):
        assert np.array_equal(d.train.x, x) and d.train.y.tolist() == [1, 0, 1] and len(d.val) == 1 and d.test is None
    return str(path), None, check


@sample(".npz")
def _npz(tmp):
    path = tmp / "d.npz"
    np.savez(path, x=np.ones((3, 2)), y=[0, 1, 0])

    def check(d):
        assert d.train.x.shape == (3, 2) and d.train.x.dtype == np.float32 and d.train.y.tolist() == [0, 1, 0]
    return str(path), None, check


@sample(".csv[.gz]")
def _csv(tmp):
    path = tmp / "d.csv.gz"
    path.write_bytes(gzip.compress(b"label,a,b\n1,0.5,2\n0,1.5,-1\n"))

    def check(d):
        assert d.train.y.tolist() == [1, 0] and d.train.x.tolist() == [[0.5, 2], [1.5, -1]]
    return str(path), None, check


@sample("CIFAR")
def _cifar(tmp):
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):  # CIFAR-10's layout: five training batches, a test batch, the names in batches.meta
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({"data": x, "labels": [i % 2, 1]}, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": x[:1], "labels": [0]}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["cat", "dog"]}, protocol=2))

    def check(d):  # rows of 1024 red, 1024 green, 1024 blue bytes: channel 1 starts at byte 1024
        assert d.train.x.shape == (10, 3, 32, 32) and len(d.test) == 1 and d.class_names == ["cat", "dog"]
        assert d.train.x[0, 1, 0, 0] == np.float32(1024 % 256) / 255 and d.train.y.tolist()[:2] == [1, 1]
    return str(folder), None, check


@sample("images")
def _images(tmp):
    from PIL import Image

    for name, value in (("cat", 0), ("dog", 255)):
        (tmp / "pets" / name).mkdir(parents=True)
        Image.new("L", (4, 3), value).save(tmp / "pets" / name / "a.png")

    def check(d):  # class i is the i-th folder in sorted order; pixels to [0, 1]
        assert d.class_names == ["cat", "dog"] and d.train.y.tolist() == [0, 1]
        assert d.train.x.shape == (2, 1, 3, 4) and d.train.x[:].tolist() == [[[[0.0] * 4] * 3], [[[1.0] * 4] * 3]]
    return str(tmp / "pets"), Wanted((1, 3, 4), 2), check


@sample("tokens")
def _tokens(tmp):
    path = tmp / "train.bin"
    np.arange(10, dtype=np.uint16).tofile(path)

    def check(d):  # windows of 3 ids one after another, targets one on: 3 windows from 10 ids
        assert len(d.train) == 3 and d.train.x[[2]].tolist() == [[6, 7, 8]] and d.train.y[[2]].tolist() == [[7, 8, 9]]
    return str(path), Wanted((3,), 10, vocab=10, token_dtype="uint16"), check


def missing_samples(sources) -> list[str]:
    return [s.name for s in sources if s.name not in SAMPLES]


def test_every_source_has_a_sample_and_every_sample_a_source():
    assert not missing_samples(SOURCES), f"no sample in {__name__} for the data source(s) {missing_samples(SOURCES)}"
    assert set(SAMPLES) <= {s.name for s in SOURCES}, "a sample for a source the table no longer has"


def test_a_directory_source_claims_only_a_directory_holding_its_files(tmp_path):
    # the next sources are one entry each: CIFAR's folder before IDX, which takes any other directory
    cifar = Source("CIFAR", "CIFAR-10's python batches", "dlc.train.cifar:load_cifar", files=("*.tar.gz",),
                   folder=True, holds=("data_batch_*",))
    classes = Source("images", "a folder per class", "dlc.train.images:load_folder", folder=True, holds=("*/",))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "data_batch_1").write_bytes(b"")
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    assert [cifar.matches(tmp_path / d) for d in ("mnist", "cifar", "pets")] == [False, True, False]
    assert [classes.matches(tmp_path / d) for d in ("mnist", "cifar", "pets")] == [False, False, True]
    assert cifar.matches(tmp_path / "cifar-10-python.tar.gz") and not classes.matches(tmp_path / "x.npz")
    assert file_source(tmp_path / "mnist").name == "IDX"


def test_the_check_names_a_source_without_a_sample():
    extra = Source("cifar10", "CIFAR-10's python batches", "dlc.train.readers:load_cifar", files=("*.tar.gz",))
    assert missing_samples((*SOURCES, extra)) == ["cifar10"]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_source_reads_its_sample_through_the_table(tmp_path, name):
    where, want, check = SAMPLES[name](tmp_path)
    source = builtin_source(where) if name in BUILTIN_SETS else file_source(Path(where))
    assert source.name == name, f"{where} is read by {source.name}, not by {name}"
    check(source.read(where, want))
    if name not in BUILTIN_SETS:
        check(load_file(where, want))  # the path's reader, picked by the table


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_every_reader_exists_with_the_one_signature(source):
    module, function = source.reader.split(":")
    reader = getattr(importlib.import_module(module), function)
    params = list(inspect.signature(reader).parameters.values())
    assert len(params) == 2 and params[1].name == "want", f"{source.reader} is not reader(where, want)"


def test_the_built_in_generators_and_sizes_cover_the_table():
    names = set(BUILTIN_SETS)
    for table in ("BUILTIN", "BUILTIN_SIZES"):
        keys = set(getattr(builtin, table))
        assert keys == names, f"dlc.train.builtin.{table} and the catalog differ on {', '.join(sorted(keys ^ names))}"
    assert set(TARGETS) <= names


def documented_data() -> list[tuple[str, str]]:
    """(file, value) for every `--data VALUE` in the README and docs, placeholders (DATA) left out."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += [(doc.name, v) for v in re.findall(r"--data\s+([\w./~-]+)", doc.read_text()) if not v.isupper()]
    return found


def test_every_data_the_docs_show_is_in_the_table():
    shown = documented_data()
    assert {"glyphs", "reverse", "mnist.pkl.gz", "book.txt"} <= {Path(v).name for _, v in shown}  # the reading works
    for doc, value in shown:
        if "." in value or "/" in value:
            file_source(Path(value))  # a file name with no entry raises "unknown data format"
        else:
            assert value in BUILTIN_SETS, f"{doc} shows --data {value}, which is no built-in set"


def test_an_unlisted_name_and_format_are_refused_with_the_table_s_choices(tmp_path):
    with pytest.raises(DlcError, match="no built-in data set `mnist` \\(expected xor, spirals, .*copy, pairs\\)"):
        builtin_source("mnist")
    (tmp_path / "d.dat").write_text("1")
    expected = r"expected .txt, CIFAR, images, tokens, IDX, .*\.npz or .csv\[.gz\]"
    with pytest.raises(DlcError, match=rf"d.dat: unknown data format \({expected}\)"):
        load_file(tmp_path / "d.dat")


def test_train_help_lists_every_source_in_80_columns():
    r = CliRunner().invoke(main, ["train", "--help"], terminal_width=80)
    assert r.exit_code == 0
    lines = r.output.splitlines()
    for s in SOURCES:
        assert any(line.split()[:1] == [s.name] and s.summary in line for line in lines), f"no help line for {s.name}"
    assert max(map(len, lines)) <= 80
    assert catalog.builtin_names() in " ".join(r.output.split())  # --data's own help, rewrapped
