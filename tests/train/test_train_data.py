"""Data loaders on small files written here (IDX raw/gzip/directory, mnist-style pickle, npz, CSV), their
errors on bad files, fitting to the spec's input, normalisation, held-out splits, batch order, and the
built-in sets."""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from dlc.errors import DlcError
from dlc.layers import Signal
from dlc.normalize import normalize, normalizer
from dlc.train.dataset import Data, Split
from dlc.train.fit import announce_range, carve_val, check_labels, fit_inputs
from dlc.train.order import epoch_order
from dlc.train.readers import load_file, load_idx, read_idx
from dlc.train.sources import data_source, prepare
from dlc.train.builtin import builtin_data

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
LABELS = np.array([3, 0, 9, 1, 1], np.uint8)


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """LeCun's IDX layout, written independently of the reader: 0, 0, type, ndim, big-endian sizes."""
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(">u1").tobytes()


def write(path, raw: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_file_raw_and_gzipped(tmp_path, gz):
    p = write(tmp_path / ("x.idx3" + (".gz" if gz else "")), idx_bytes(IMAGES), gz)
    a = read_idx(p)
    assert a.shape == (5, 4, 3) and a.dtype == np.uint8 and np.array_equal(a, IMAGES)


def test_idx_directory_with_the_four_standard_files(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(IMAGES), gz=True)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(LABELS))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(IMAGES[:2]))
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(LABELS[:2]), gz=True)
    d = load_file(tmp_path)
    assert d.train.x.shape == (5, 1, 4, 3) and d.test.x.shape == (2, 1, 4, 3) and d.val is None
    assert d.train.x.dtype == np.float32
    np.testing.assert_allclose(d.train.x[2, 0], IMAGES[2] / 255.0, rtol=1e-6)
    assert d.train.y.tolist() == [3, 0, 9, 1, 1] and d.test.y.tolist() == [3, 0]


def test_idx_images_file_finds_its_labels(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(IMAGES))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(LABELS))
    d = load_file(tmp_path / "train-images-idx3-ubyte")
    assert d.train.x.shape == (5, 1, 4, 3) and d.test is None


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00\x07\x03" + struct.pack(">3I", 5, 4, 3), "bad magic number 00000703"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 4, 3) + bytes(59), r"says 5x4x3 values \(60 bytes\) but the file holds 59 bytes"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "header is cut short"),
])
def test_bad_idx_files(tmp_path, raw, message):
    p = write(tmp_path / "bad-idx3-ubyte", raw)
    with pytest.raises(DlcError, match=message) as e:
        read_idx(p)
    assert "bad-idx3-ubyte" in str(e.value)


def test_idx_count_mismatch_and_missing_files(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(IMAGES))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(LABELS[:4]))
    with pytest.raises(DlcError, match="holds 5 images but train-labels-idx1-ubyte holds 4 labels"):
        load_file(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DlcError, match="no train-images-idx3-ubyte"):
        load_idx(empty)


def test_truncated_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(IMAGES))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DlcError, match="truncated gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def mnist_pickle(path, splits):
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)
    return path


def test_mnist_pickle(tmp_path):
    x = RNG.random((6, 784), dtype=np.float32)
    y = np.arange(6) % 10
    p = mnist_pickle(tmp_path / "mnist.pkl.gz", ((x, y), (x[:2], y[:2]), (x[:3], y[:3])))
    d = load_file(p)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 2, 3)
    assert np.array_equal(d.train.x, x) and d.train.y.tolist() == y.tolist()


def test_unreadable_and_unsafe_pickles(tmp_path):
    p = tmp_path / "junk.pkl.gz"
    p.write_bytes(gzip.compress(b"not a pickle at all"))
    with pytest.raises(DlcError, match="junk.pkl.gz: unreadable pickle"):
        load_file(p)

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    p = mnist_pickle(tmp_path / "evil.pkl.gz", Evil())
    with pytest.raises(DlcError, match="print, which is not a numpy array"):
        load_file(p)
    p = mnist_pickle(tmp_path / "shape.pkl.gz", [np.zeros(3)])
    with pytest.raises(DlcError, match="expected \\(train, valid, test\\)"):
        load_file(p)


def test_npz_with_optional_splits(tmp_path):
    x, y = RNG.random((7, 3)), np.arange(7) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:2], y_test=y[:2])
    d = load_file(tmp_path / "d.npz")
    assert d.train.x.dtype == np.float32 and d.train.x.shape == (7, 3) and d.val is None and len(d.test) == 2
    np.savez(tmp_path / "e.npz", x=x)
    with pytest.raises(DlcError, match="e.npz: needs arrays `x` and `y` \\(found x\\)"):
        load_file(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", x=x, y=y, x_val=x)
    with pytest.raises(DlcError, match="has x_val without its partner"):
        load_file(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", x=x, y=y[:5])
    with pytest.raises(DlcError, match="g.npz: train has 7 inputs but 5 labels"):
        load_file(tmp_path / "g.npz")



def test_an_npz_whose_header_declares_more_than_it_holds_is_refused_before_numpy_allocates(tmp_path):
    # a 100-byte member asking for 10^12 float32 values (3.64 TiB): numpy allocates before reading
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }\n"
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8)
    with pytest.raises(DlcError, match=r"d\.npz, array x\.npy: the header declares 4,000,000,000,000 bytes"):
        load_file(str(tmp_path / "d.npz"))

@pytest.mark.parametrize("header", ["", "label,a,b\n"])
def test_csv_with_and_without_header(tmp_path, header):
    p = tmp_path / "d.csv"
    p.write_text(header + "1,0.5,2\n0,1.5,-1\n2,0,0\n")
    d = load_file(p)
    assert d.train.y.tolist() == [1, 0, 2] and d.train.y.dtype == np.int64
    np.testing.assert_array_equal(d.train.x, [[0.5, 2], [1.5, -1], [0, 0]])


@pytest.mark.parametrize("text, message", [
    ("", "no data rows"),
    ("label,a\n", "no data rows"),
    ("1,2,3\n4,5\n", "same number of comma-separated numbers"),
    ("1\n2\n", "a label and at least one feature"),
])
def test_bad_csv(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DlcError, match=message) as e:
        load_file(p)
    assert "bad.csv" in str(e.value)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "d.dat").write_text("x")
    with pytest.raises(DlcError, match="unknown data format"):
        load_file(tmp_path / "d.dat")
    with pytest.raises(DlcError, match="no such data file"):
        load_file(tmp_path / "none.npz")


def vectors(n=4, f=784) -> Data:
    x = np.arange(n * f, dtype=np.float32).reshape(n, f) / (n * f)
    return Data(Split(x, np.arange(n) % 10), name="v.npz")


def test_equal_counts_reshape_automatically_and_say_so():
    d = fit_inputs(vectors(), (1, 28, 28))
    assert d.train.x.shape == (4, 1, 28, 28)
    assert d.train.x[1, 0, 2, 3] == vectors().train.x[1, 2 * 28 + 3]
    assert d.notes == ["reshaped the inputs of v.npz from 784 to 1@28x28"]


def test_other_sizes_need_reshape_which_pads_centred():
    with pytest.raises(DlcError, match=r"inputs have shape 784 \(784 values\) but the spec's input is "
                                       r"1@32x32 \(1024 values\); --reshape"):
        fit_inputs(vectors(), (1, 32, 32))
    d = fit_inputs(vectors(), (1, 32, 32), reshape=True)
    src = vectors().train.x.reshape(4, 28, 28)
    x = d.train.x
    assert x.shape == (4, 1, 32, 32)
    # LeCun et al. 1998: the 28x28 digit sits in the middle of the 32x32 field, 2 pixels of border
    assert np.array_equal(x[:, 0, 2:30, 2:30], src) and x[:, 0, :2].sum() == 0 and x[:, 0, :, 30:].sum() == 0
    rgb = fit_inputs(vectors(), (3, 24, 24), reshape=True).train.x
    assert rgb.shape == (4, 3, 24, 24) and np.array_equal(rgb[:, 2], src[:, 2:26, 2:26])
    with pytest.raises(DlcError, match="cannot fit inputs of shape 10 to the spec's input 1@28x28"):
        fit_inputs(vectors(f=10), (1, 28, 28), reshape=True)


def test_labels_must_fit_the_output():
    d = Data(Split(np.zeros((3, 2), np.float32), np.array([0, 4, 2])), name="d.csv")
    check_labels(d, 5)
    with pytest.raises(DlcError, match="d.csv: train labels range over 0..4 but the spec's output has 3 units"):
        check_labels(d, 3)
    soft = Data(Split(np.zeros((3, 2), np.float32), np.full((3, 4), 0.25, np.float32)), name="s.npz")
    with pytest.raises(DlcError, match="train targets are 4 wide but the spec's output has 3 units"):
        check_labels(soft, 3)
    real = Data(Split(np.zeros((2, 2), np.float32), np.array([0.5, 1.5], np.float32)), name="r.npz")
    with pytest.raises(DlcError, match="labels must be class indices 0..2"):
        check_labels(real, 3)
    check_labels(real, 1)  # a one-unit output regresses values


def test_mean_std_uses_train_statistics_per_channel():
    rng = np.random.default_rng(1)
    train = rng.normal([[[[3.0]], [[-1.0]]]], [[[[2.0]], [[0.5]]]], (50, 2, 4, 4)).astype(np.float32)
    norm = normalizer(train, "mean-std")
    assert norm["kind"] == "mean-std" and len(norm["mean"]) == 2 and len(norm["std"]) == 2
    for c in range(2):
        assert norm["mean"][c] == pytest.approx(train[:, c].astype(np.float64).mean())
        assert norm["std"][c] == pytest.approx(train[:, c].astype(np.float64).std())
    out = normalize(train, norm)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    val = np.full((1, 2, 4, 4), 5.0, np.float32)  # scaled with train's numbers, not its own
    np.testing.assert_allclose(normalize(val, norm)[0, :, 0, 0],
                               [(5 - norm["mean"][c]) / norm["std"][c] for c in range(2)], rtol=1e-5)


def test_minmax_and_scalars_for_one_channel():
    x = np.array([[[[0.0, 2.0]]], [[[4.0, 1.0]]]], np.float32)  # (2, 1, 1, 2)
    norm = normalizer(x, "minmax")
    assert norm == {"kind": "minmax", "min": 0.0, "max": 4.0}
    np.testing.assert_allclose(normalize(x, norm).ravel(), [0, 0.5, 1, 0.25])
    assert normalize(x, {"kind": "none"}) is x
    # a constant feature is centred, not divided by zero
    flat = normalizer(np.array([[1.0, 2.0], [1.0, 4.0]], np.float32), "mean-std")
    assert flat["std"] == [0.0, 1.0]
    np.testing.assert_allclose(normalize(np.array([[1.0, 4.0]], np.float32), flat), [[0.0, 1.0]])


def test_held_out_split_is_seeded_and_disjoint():
    x = np.arange(20, dtype=np.float32)[:, None]
    d = Data(Split(x, np.arange(20) % 2), name="d")
    a, b, c = carve_val(d, 0.25, 3), carve_val(d, 0.25, 3), carve_val(d, 0.25, 4)
    assert len(a.val) == 5 and len(a.train) == 15
    assert sorted(a.val.x.ravel().tolist() + a.train.x.ravel().tolist()) == list(range(20))
    assert np.array_equal(a.val.x, b.val.x) and not np.array_equal(a.val.x, c.val.x)
    assert "held out 5 of 20" in a.notes[0]
    with_val = Data(d.train, val=d.train, name="d")
    kept = carve_val(with_val, 0.25, 3)
    assert kept.val is with_val.val and kept.notes == ["d has its own validation split; --val is not used"]


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(100, 7, 3)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(100, 7, 3))
    assert not np.array_equal(a, epoch_order(100, 7, 4))
    assert not np.array_equal(a, epoch_order(100, 8, 3))


def test_balanced_batches_hold_every_class_equally():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)  # 16:3:1 imbalance
    order = epoch_order(100, 0, 0, labels, balanced=True)
    assert len(order) == 100
    for start in range(0, 99, 3):  # each run of 3 slots holds one sample of each class
        assert sorted(labels[order[start:start + 3]].tolist()) == [0, 1, 2]
    # the rare class repeats, the common one is sampled without repeats
    assert len(set(order[labels[order] == 2].tolist())) == 5
    common = order[labels[order] == 0]
    assert len(common) in (33, 34) and len(set(common.tolist())) == len(common)


def test_glyphs_shapes_labels_and_determinism():
    a = builtin_data("glyphs", (1, 28, 28), 10, (50, 20, 10), seed=0)
    assert a.train.x.shape == (50, 1, 28, 28) and a.val.x.shape == (20, 1, 28, 28) and len(a.test) == 10
    assert a.train.x.dtype == np.float32 and 0 <= a.train.x.min() and a.train.x.max() <= 1
    y = np.concatenate([a.train.y, a.val.y, a.test.y])
    assert np.bincount(y, minlength=10).tolist() == [8] * 10  # 80 images, 8 of each digit
    b = builtin_data("glyphs", (1, 28, 28), 10, (50, 20, 10), seed=0)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.train.y, b.train.y)
    c = builtin_data("glyphs", (1, 28, 28), 10, (50, 20, 10), seed=1)
    assert not np.array_equal(a.train.x, c.train.x)
    assert builtin_data("glyphs", (1, 32, 32), 10, (5, 0, 0)).train.x.shape == (5, 1, 32, 32)
    flat = builtin_data("glyphs", (784,), 10, (5, 0, 0)).train.x
    assert flat.shape == (5, 784)
    rgb = builtin_data("glyphs", (3, 16, 16), 10, (5, 0, 0)).train.x
    assert rgb.shape == (5, 3, 16, 16) and np.array_equal(rgb[:, 0], rgb[:, 2])
    # ink on a dark field: every glyph has strokes, and most pixels are background
    ink = (a.train.x > 0.5).mean(axis=(1, 2, 3))
    assert ink.min() > 0.03 and ink.max() < 0.5


def test_glyph_classes_are_told_apart_by_a_nearest_mean_classifier():
    # an independent check that the ten shapes differ: class means from one set classify another
    d = builtin_data("glyphs", (1, 16, 16), 10, (1000, 0, 500), seed=2)
    x, y = d.train.x.reshape(1000, -1), d.train.y
    means = np.stack([x[y == k].mean(axis=0) for k in range(10)])
    t = d.test.x.reshape(500, -1)
    pred = ((t[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == d.test.y).mean() > 0.3  # chance is 0.1


def test_glyphs_need_ten_classes_and_an_image_shape():
    with pytest.raises(DlcError, match="glyphs are the 10 digits; the spec's output has 3 units"):
        builtin_data("glyphs", (1, 28, 28), 3)
    with pytest.raises(DlcError, match="square vector"):
        builtin_data("glyphs", (10,), 10)


def test_xor_spirals_blobs():
    x = builtin_data("xor", (2,), 1)
    assert x.train.x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and x.train.y.tolist() == [0, 1, 1, 0]
    s = builtin_data("spirals", (2,), 3, (30, 6, 6), seed=0)
    assert s.train.x.shape == (30, 2) and set(s.train.y.tolist()) == {0, 1, 2}
    assert np.sqrt((s.train.x ** 2).sum(1)).max() <= 1
    b = builtin_data("blobs", (5,), 4, (40, 0, 8))
    assert b.train.x.shape == (40, 5) and b.val is None and len(b.test) == 8
    with pytest.raises(DlcError, match="`spirals` needs a 2-vector input; the spec's input is 1@28x28"):
        builtin_data("spirals", (1, 28, 28), 3)
    with pytest.raises(DlcError, match="no built-in data set `mnist`"):
        builtin_data("mnist", (784,), 10)


def test_prepare_fits_checks_and_normalises(tmp_path):
    x = RNG.random((30, 784)).astype(np.float32) * 255
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 10)
    src = data_source(str(tmp_path / "d.npz"), val=0.2, normalize="mean-std")
    data, norm = prepare(src, (1, 28, 28), 10)
    assert data.train.x.shape == (24, 1, 28, 28) and len(data.val) == 6
    assert norm["kind"] == "mean-std" and isinstance(norm["mean"], float)
    assert abs(float(data.train.x.mean())) < 1e-4
    assert any("reshaped" in n for n in data.notes) and any("held out 6" in n for n in data.notes)
    with pytest.raises(DlcError, match="no built-in data set of that name"):
        data_source("mnistt")


def photos(n=3, h=4, w=5, c=3) -> np.ndarray:
    """Channels-last photos (N, H, W, C) whose every value says where it sits: 1000c + 10y + x."""
    ch, y, x = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    chw = (1000 * ch + 10 * y + x).astype(np.float32)
    return np.stack([chw + 0.25 * i for i in range(n)]).transpose(0, 2, 3, 1)


def test_channels_last_images_are_transposed_not_reshaped(tmp_path):
    # what a .npz of photos from PIL or Keras holds; pixel (c, y, x) of sample i must stay that pixel
    np.savez(tmp_path / "p.npz", x=photos(), y=np.arange(3))
    data, _ = prepare(data_source(str(tmp_path / "p.npz")), (3, 4, 5), 3)
    x = data.train.x
    assert x.shape == (3, 3, 4, 5)
    assert x[2, 1, 3, 4] == 1000 + 34 + 0.5 and x[0, 2, 0, 1] == 2001 and x[1, 0, 2, 0] == 20.25
    assert any("channels last (4x5x3 = H x W x C) and transposed them to 3@4x5" in n for n in data.notes)


def test_channels_last_images_are_transposed_before_padding_and_from_a_pickle(tmp_path):
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump(((photos(), np.arange(3)),), f)
    data, _ = prepare(data_source(str(tmp_path / "p.pkl"), reshape=True), (3, 6, 7), 3)
    x = data.train.x
    assert x.shape == (3, 3, 6, 7)
    # the 4x5 image sits centred in the 6x7 field: pixel (c, y, x) lands at (c, y + 1, x + 1)
    assert x[2, 1, 4, 5] == 1000 + 34 + 0.5 and x[0, 2, 1, 2] == 2001 and x[:, :, 0].sum() == 0


def test_one_channel_images_last_or_first_need_no_transpose_word():
    grey = Data(Split(photos(c=1), np.arange(3)), name="g.npz")
    d = fit_inputs(grey, (1, 4, 5))
    assert np.array_equal(d.train.x[:, 0], photos(c=1)[..., 0])


def test_signals_fit_from_a_row_of_samples_and_a_wrong_layout_names_both_shapes():
    # issue 28: a second of mono audio stored as one row per sample is the spec's 1@8000; stereo stored
    # channels last (8000x2) is not 2@8000, and the message says so in the language's words
    mono = Data(Split(np.zeros((3, 8000), np.float32), np.arange(3)), name="a.npz")
    d = fit_inputs(mono, Signal((1, 8000)))
    assert d.train.x.shape == (3, 1, 8000) and d.notes == ["reshaped the inputs of a.npz from 8000 to 1@8000"]
    stereo = Data(Split(np.zeros((3, 8000, 2), np.float32), np.arange(3)), name="s.npz")
    with pytest.raises(DlcError, match=r"s.npz: inputs have shape 8000x2 but the spec's input is 2@8000"):
        fit_inputs(stereo, Signal((2, 8000)))


def test_a_layout_both_readings_fit_is_refused_not_guessed(tmp_path):
    cube = Data(Split(np.zeros((2, 3, 3, 3), np.float32), np.arange(2)), name="c.npz")
    with pytest.raises(DlcError, match=r"c.npz: inputs of shape 3x3x3 fit the spec's input 3@3x3 two ways, "
                                       r"channels first .* or channels last .*; say which the file holds: "
                                       r"--layout chw or --layout hwc"):
        fit_inputs(cube, (3, 3, 3))
    odd = Data(Split(np.zeros((2, 3, 4, 3), np.float32), np.arange(2)), name="o.npz")
    with pytest.raises(DlcError, match=r"o.npz: inputs of shape 3x4x3 fit the spec's input 3@6x6 two ways"):
        fit_inputs(odd, (3, 6, 6), reshape=True)
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 3, 3)), y=np.arange(2))
    from click.testing import CliRunner
    from dlc.cli import main

    r = CliRunner().invoke(main, ["train", "-e", "input 3@3x3 -> fc 2 softmax", "--data", str(tmp_path / "c.npz"),
                                  "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 2 and "3x3x3" in r.output and "Traceback" not in r.output


def test_equal_counts_that_would_move_pixels_are_refused():
    # 4x3x5 holds as many values as 3@4x5 but is neither C x H x W nor H x W x C of it
    d = Data(Split(np.zeros((2, 4, 3, 5), np.float32), np.arange(2)), name="s.npz")
    with pytest.raises(DlcError, match="s.npz: inputs have shape 4x3x5 but the spec's input is 3@4x5: as many "
                                       "values, but reshaping one into the other would scramble the pixels"):
        fit_inputs(d, (3, 4, 5))
    tall = Data(Split(np.zeros((2, 14, 56), np.float32), np.arange(2)), name="t.npz")
    with pytest.raises(DlcError, match="scramble the pixels"):
        fit_inputs(tall, (1, 28, 28))
    assert fit_inputs(tall, (784,)).train.x.shape == (2, 784)  # a vector input keeps the row order
    row = Data(Split(np.arange(2 * 784, dtype=np.float32).reshape(2, 1, 784), np.arange(2)), name="r.npz")
    assert fit_inputs(row, (1, 28, 28)).train.x[1, 0, 2, 3] == 784 + 2 * 28 + 3  # a row, though 2-D


def test_layout_says_which_when_the_shapes_cannot(tmp_path):
    x = photos(h=3, w=3)  # channels last, every value telling its (c, y, x)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(3))
    hwc, _ = prepare(data_source(str(tmp_path / "c.npz"), layout="hwc"), (3, 3, 3), 3)
    assert hwc.train.x[2, 1, 0, 2] == 1000 + 2 + 0.5 and hwc.train.x[0, 2, 2, 1] == 2021
    chw, _ = prepare(data_source(str(tmp_path / "c.npz"), layout="chw"), (3, 3, 3), 3)
    assert np.array_equal(chw.train.x, x)  # taken as it is stored
    with pytest.raises(DlcError, match="--layout hwc is for images stored one 3-D array per sample"):
        fit_inputs(vectors(), (1, 28, 28), layout="hwc")
    from click.testing import CliRunner
    from dlc.cli import main

    r = CliRunner().invoke(main, ["train", "-e", "input 3@3x3 -> fc 3 softmax", "--data", str(tmp_path / "c.npz"),
                                  "--layout", "hwc", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0 and "read the inputs of" in r.stderr and "transposed them to 3@3x3" in r.stderr, r.output
    r = CliRunner().invoke(main, ["train", "-e", "input 3@3x3 -> fc 10 softmax", "--layout", "hwc",
                                  "--out", str(tmp_path / "glyphs")])
    assert r.exit_code == 2 and "the built-in set glyphs is made in the spec's own" in r.stderr, r.output


def test_the_range_hint_finds_the_largest_magnitude_without_copying_the_inputs():
    # 2,000 rows of 784 at 3.0 with one pixel at -40: the hint names 40 (its magnitude), and looking
    # for it allocates no second copy of the 6.3 MB split (np.abs made one: 157 MB for MNIST).
    x = np.full((2000, 784), 3.0, np.float32)
    x[5, 7] = -40.0
    tracemalloc.start()
    try:
        d = announce_range(Data(Split(x, np.zeros(2000, np.int64)), name="big.npz"), "none")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert d.notes == ["inputs of big.npz reach 40; --normalize mean-std usually trains better"]
    assert peak < x.nbytes // 10
