"""Your own data through `dlc train` and `dlc infer`: a folder of class folders of PNG/JPEG images,
CIFAR in its distributed pickles, a token file memory-mapped; augmentation and resume on them; and each
bad input refused in one line with exit 2 and no run folder. Every data set is made here, small."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dlc.cli import main
from dlc.engine.params import load_checkpoint
from dlc.train import loop
from dlc.train.builtin import builtin_data
from dlc.train.sources import data_source, prepare

SMALL_CNN = "input 1@12x12 -> conv 8@3x3 relu -> maxpool 2 -> fc 10 softmax"
RGB_CNN = "input 3@32x32 -> conv 8@5x5 relu -> maxpool 4 -> fc 10 softmax"
TOKENS = "input seq 8 -> embed 16 vocab=32 -> fc 32 softmax"


def dlc(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def glyph_folder(root: Path, n: int = 300, size: int = 12, fmt: str = "png", splits=("train", "val", "test")) -> Path:
    """The glyph digits rendered as image files, one folder per digit, in train/ val/ test/."""
    d = builtin_data("glyphs", (1, size, size), 10, (n, n // 3, n // 3), 0)
    for split in splits:
        s = getattr(d, split)
        for i, (x, y) in enumerate(zip(s.x, s.y)):
            folder = root / split / f"digit{y}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.clip(x[0], 0, 1) * 255).round().astype(np.uint8)).save(folder / f"{i}.{fmt}")
    return root


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_an_image_folder_trains_above_chance_and_infer_names_its_classes(tmp_path):
    data = glyph_folder(tmp_path / "glyphs")
    r = dlc("train", "-e", SMALL_CNN, "--data", data, "--epochs", "4", "--optimizer", "adam", "--lr", "0.01",
            "--normalize", "mean-std", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "10 classes (digit0, digit1," in r.output and "300 train, 100 val, 100 test images" in r.output
    assert log(tmp_path / "run")[-1]["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert load_checkpoint(tmp_path / "run" / "best.npz")[2]["class_names"] == [f"digit{i}" for i in range(10)]

    # infer reads an image, or a folder of them, and names the top classes as the folders did
    image = sorted((data / "test" / "digit3").iterdir())[0]
    r = dlc("infer", "-e", SMALL_CNN, "--weights", tmp_path / "run" / "best.npz", "--input", image, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    top = doc["top"][0][0]
    assert top["name"] == f"digit{top['class']}" and doc["files"] == [str(image)]
    r = dlc("infer", "-e", SMALL_CNN, "--weights", tmp_path / "run" / "best.npz", "--input", data / "test",
            "--engine", "numpy")
    assert r.exit_code == 0, r.output
    first = sorted(str(p) for p in (data / "test").rglob("*.png"))[0]  # the samples in sorted file order
    assert "input (100, 1, 12, 12)" in r.output and f"{first}: digit" in r.output


def test_a_folder_without_splits_takes_val_as_a_fraction_and_jpeg_reads_too(tmp_path):
    data = glyph_folder(tmp_path / "g", n=150, fmt="jpg", splits=("train",)) / "train"
    r = dlc("train", "-e", SMALL_CNN, "--data", data, "--val", "0.2", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "120 train, 30 val" in r.output


def test_resize_scales_and_crops_and_is_said_without_it_the_size_is_refused(tmp_path):
    data = glyph_folder(tmp_path / "g", n=60, size=20)
    r = dlc("train", "-e", SMALL_CNN, "--data", data, "--epochs", "1", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "images are 20x20 but the spec's input is 12x12; --resize" in r.output
    assert not (tmp_path / "a").exists()
    r = dlc("train", "-e", SMALL_CNN, "--data", data, "--epochs", "1", "--resize", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert "100 of other sizes scaled (shorter side) and centre-cropped to 12x12" in r.output


def test_resize_is_the_shorter_side_scaled_then_the_centre_cropped(tmp_path):
    from dlc.train.images import decode_image

    # a 8x4 (w x h) image: left half black, right half white; to 2x2 it scales to 4x2 and keeps the middle
    a = np.zeros((4, 8), np.uint8)
    a[:, 4:] = 255
    Image.fromarray(a).save(tmp_path / "a.png")
    x = decode_image(str(tmp_path / "a.png"), (1, 2, 2), resize=True)
    assert x.shape == (1, 2, 2) and x[0, :, 0].max() < 0.5 < x[0, :, 1].min()


def make_cifar(folder: Path, n: int = 300) -> Path:
    """CIFAR-10's python layout: glyph images (three equal channels) in five batches, a test batch, names."""
    d = builtin_data("glyphs", (3, 32, 32), 10, (n, 0, n // 3), 0)
    folder.mkdir(parents=True)

    def dump(name, x, y):
        rows = (np.clip(x, 0, 1) * 255).round().astype(np.uint8).reshape(len(x), 3072)
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": y.tolist()}, protocol=2))
    k = n // 5
    for i in range(5):
        dump(f"data_batch_{i + 1}", d.train.x[i * k:(i + 1) * k], d.train.y[i * k:(i + 1) * k])
    dump("test_batch", d.test.x, d.test.y)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"g{i}" for i in range(10)]}, protocol=2))
    return folder


def test_cifar_trains_from_its_folder_and_its_tar_gz_alike_with_shifts(tmp_path):
    folder = make_cifar(tmp_path / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    runs = []
    for i, data in enumerate((folder, tmp_path / "cifar-10-python.tar.gz")):
        out = tmp_path / f"run{i}"
        r = dlc("train", "-e", RGB_CNN, "--data", data, "--epochs", "4", "--shift", "2", "--normalize", "mean-std",
                "--optimizer", "adam", "--lr", "0.01", "--out", out)
        assert r.exit_code == 0, r.output
        assert "300 train, 100 test" in r.output
        runs.append(log(out))
    assert runs[0][-1]["train_loss"] == runs[1][-1]["train_loss"] and runs[0][-1]["test_accuracy"] > 0.3
    assert load_checkpoint(tmp_path / "run0" / "last.npz")[2]["class_names"][3] == "g3"


def test_augmentation_reaches_a_folder_s_batches(tmp_path):
    data = glyph_folder(tmp_path / "g", n=60)
    losses = []
    for flags in ([], ["--flip"]):
        r = dlc("train", "-e", SMALL_CNN, "--data", data, "--epochs", "1", "--out", tmp_path / f"r{len(flags)}", *flags)
        assert r.exit_code == 0, r.output
        losses.append(log(tmp_path / f"r{len(flags)}")[0]["train_loss"])
    assert losses[0] != losses[1]  # mirrored digits: other inputs, another loss


def test_a_folder_run_killed_mid_epoch_resumes_bit_for_bit(tmp_path, monkeypatch):
    data = glyph_folder(tmp_path / "g", n=90)
    args = ["-e", SMALL_CNN, "--data", data, "--epochs", "2", "--batch", "10", "--save-every", "3", "--flip"]
    assert dlc("train", *args, "--out", tmp_path / "whole").exit_code == 0
    step, seen = loop.Run.step, []

    def killed_at_step_8(self, idx, lr, rows=None):  # a kill after the checkpoint of step 6, mid-epoch
        if self.pos.step == 7:
            raise KeyboardInterrupt
        seen.append(np.asarray(idx).tolist())
        return step(self, idx, lr, rows)
    monkeypatch.setattr(loop.Run, "step", killed_at_step_8)
    dlc("train", *args, "--out", tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "last.npz")[2]["position"] == {"epoch": 0, "batch": 6, "step": 6}
    def counted(self, idx, lr, rows=None):
        seen.append(np.asarray(idx).tolist())
        return step(self, idx, lr, rows)
    monkeypatch.setattr(loop.Run, "step", counted)
    r = dlc("train", "--resume", tmp_path / "killed")
    assert r.exit_code == 0, r.output
    a, b = (load_checkpoint(tmp_path / d / "last.npz") for d in ("killed", "whole"))
    for name in b[0]:
        assert np.array_equal(a[0][name], b[0][name]), name
    # the first epoch: steps 1-6 before the kill and 7-9 after it, each sample once (step 7 not twice)
    first = [i for batch in seen[:6] + seen[7:10] for i in batch]
    assert sorted(first) == list(range(90))


def token_spec_run(tmp_path, path, *flags):
    return dlc("train", "-e", TOKENS, "--data", path, "--epochs", "1", "--out", tmp_path / "run", *flags)


def test_a_token_file_trains_memory_mapped_with_its_val_file(tmp_path):
    ids = np.tile(np.arange(32, dtype=np.uint16), 20_000)  # 1.3 MB: each id predicts the next
    ids.tofile(tmp_path / "train.bin")
    ids[:3200].tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text('{"dtype": "uint16", "vocab_size": 32}')
    data, _ = prepare(data_source(str(tmp_path / "train.bin")), (8,), 32, tokens=True, steps=8, vocab=32)
    assert isinstance(data.train.x.ids, np.memmap) and len(data.train) == (len(ids) - 1) // 8
    assert data.train.x[[1]].tolist() == [list(range(8, 16))] and data.train.y[[1]].tolist() == [list(range(9, 17))]
    r = token_spec_run(tmp_path, tmp_path / "train.bin", "--batch", "64", "--optimizer", "adam", "--lr", "0.01")
    assert r.exit_code == 0, r.output
    assert log(tmp_path / "run")[0]["val_accuracy"] > 0.9


def test_a_token_file_s_held_out_windows_stay_unread(tmp_path):
    np.tile(np.arange(32, dtype=np.uint16), 100).tofile(tmp_path / "train.bin")
    data, _ = prepare(data_source(str(tmp_path / "train.bin"), val=0.25, token_dtype="uint16"), (8,), 32, tokens=True,
                      steps=8, vocab=32)
    assert (len(data.train), len(data.val)) == (299, 100)  # (3,200 - 1) // 8 = 399 windows, a quarter held out
    assert type(data.val.y).__name__ == "TokenWindows"  # not every window read into memory
    x, y = data.val.x[:], data.val.y[:]
    assert np.array_equal(y[:, :-1], x[:, 1:]) and np.all((x + 1) % 32 == y)


def test_an_npy_token_file_carries_its_dtype(tmp_path):
    np.save(tmp_path / "ids.npy", np.tile(np.arange(32, dtype=np.int32), 100))
    r = token_spec_run(tmp_path, tmp_path / "ids.npy")
    assert r.exit_code == 0, r.output
    assert "3,200 int32 token ids, memory-mapped" in r.output


@pytest.mark.parametrize("make, said", [
    (lambda p: (p / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "c.png: not a readable image"),
    (lambda p: (p / "c.png").write_bytes(next(p.glob("*.png")).read_bytes()[:120]), "c.png: not a readable image"),
    (lambda p: (p / "c.jpg").write_bytes(next(p.glob("*.jpg")).read_bytes()[:-200]), "c.jpg: not a readable image"),
    (lambda p: Image.new("L", (12, 12)).save(p / "c.png"), "no class subfolders"),
    (lambda p: Image.new("L", (10, 12)).save(p / "c.png"), "images of mixed sizes"),
])
def test_a_bad_image_folder_is_one_line_and_exit_2_with_no_run(tmp_path, make, said):
    """A damaged file (garbage, or a PNG or JPEG cut short), no class folders, mixed sizes."""
    data = glyph_folder(tmp_path / "g", n=30, splits=("train",)) / "train"
    Image.new("L", (12, 12), 128).save(data / "digit0" / "gray.jpg")
    if said == "no class subfolders":
        data = tmp_path / "flat"
        data.mkdir()
    make(data if said == "no class subfolders" else data / "digit0")
    r = dlc("train", "-e", SMALL_CNN, "--data", data, "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, flags, said", [
    (b"", ["--token-dtype", "uint16"], "train.bin: the token file is empty"),
    (b"\x01\x00\x02", ["--token-dtype", "uint16"], "3 bytes is not a whole number of uint16 ids: the file is trunc"),
    (np.arange(40, dtype=np.uint16).tobytes(), ["--token-dtype", "uint16"],
     "token id 32 (at position 32) is past the vocabulary: the spec's embed and output take ids 0..31"),
    (np.arange(20, dtype=np.uint16).tobytes(), [], "give its element type: --token-dtype uint16"),
])
def test_a_bad_token_file_is_one_line_and_exit_2_with_no_run(tmp_path, content, flags, said):
    (tmp_path / "train.bin").write_bytes(content)
    r = token_spec_run(tmp_path, tmp_path / "train.bin", *flags)
    assert r.exit_code == 2 and said in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
