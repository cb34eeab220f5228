"""`dlc import`, `shapes`, `draw` and `infer` on odd or hostile ONNX files (issue 26): names that would put
statements into the written spec, external data that points anywhere but beside the model, files the
ONNX checker rejects, and outputs that are not regular files. Every file is built here with onnx.helper.

What a refusal must look like: exit status 2, one line, no traceback, and nothing written.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dlc.cli import main
from dlc.commands.arguments import read_spec
from dlc.compile import compile_spec

# Every line break of str.splitlines: what an editor, `cat` or a reader of the spec may show as a new line.
LINE_BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fc_model(producer: str = "test", weight=None, opset: int = 13) -> onnx.ModelProto:
    """x (N, 4) -> Gemm by a stored (4, 3) weight and bias -> y (N, 3): `input 4` / `fc 3` as a spec."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W") if weight is None else weight
    b = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8, producer_name=producer)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def refused(r, *words: str) -> str:
    """The one-line message of a clean refusal, checked to hold `words`."""
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    message = r.output.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for w in words:
        assert w in message, message
    return message


def written_spec(path: Path):
    """The spec as `dlc train` reads it: dlc's own reader (which takes \\r for a line break too), compiled."""
    file, text = read_spec(str(path), None)
    return text, compile_spec(text, file=file)


# --- names that would put statements into the spec ----------------------------------------------------

def test_the_spec_reader_breaks_lines_at_newline_and_carriage_return_only(tmp_path):
    """What the grammar and dlc's reader take for a line break, of those str.splitlines knows: after each,
    is a `train` statement live? (\\n and \\r, and \\r\\n; the others stay inside the comment.) The
    importer escapes all of them, and this pins that the reader's set is among them."""
    live = set()
    for brk in LINE_BREAKS:
        path = tmp_path / "probe.dlc"
        path.write_bytes(f"input 4  # note{brk}train epochs=3\nfc 3\n".encode())
        _, graph = written_spec(path)
        if graph.train:
            live.add(brk)
    assert live == {"\n", "\r", "\r\n"}


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=repr)
def test_a_producer_name_with_a_line_break_stays_in_the_comment(tmp_path, brk):
    assert len(f"a{brk}b".splitlines()) == 2  # each is a line break to Python
    evil = f"evil{brk}train epochs=99999 lr=50 optimizer=adam{brk}#"
    model = save(fc_model(producer=evil), tmp_path / "m.onnx")
    r = run("import", model, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    _, graph = written_spec(tmp_path / "net.dlc")
    assert graph.train == {}
    assert [n.kind for n in graph.nodes] == ["input", "fc"] and graph.output.out_shape == (3,)
    lines = (tmp_path / "net.dlc").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[0].startswith("# imported from m.onnx (evil") and "epochs=99999" in lines[0]


def test_a_file_name_with_line_breaks_stays_in_the_comment(tmp_path):
    model = save(fc_model(), tmp_path / "name\ntrain epochs=77777\n#.onnx")
    r = run("import", model, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    text, graph = written_spec(tmp_path / "net.dlc")
    assert graph.train == {} and [n.kind for n in graph.nodes] == ["input", "fc"]
    assert text.splitlines()[0].startswith("# imported from name\\ntrain epochs=77777\\n#.onnx (test, opset 13)")


def test_a_file_name_with_undecodable_bytes_is_imported(tmp_path):
    """A name that is not UTF-8 (surrogate-escaped by Python) is written escaped, not a UnicodeEncodeError."""
    model = save(fc_model(), Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.onnx")))
    r = run("import", model, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    text, graph = written_spec(tmp_path / "net.dlc")
    assert text.startswith("# imported from caf\\udce9.onnx") and graph.train == {}


# --- external data that is not a file beside the model -------------------------------------------------

def external(location: str, **fields) -> onnx.TensorProto:
    """The (4, 3) float32 weight W, its 48 bytes said to lie in `location` (with offset=, length=)."""
    t = onnx.TensorProto(name="W", dims=[4, 3], data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, **fields}.items():
        t.external_data.add(key=key, value=str(value))
    return t


WEIGHT_BYTES = np.arange(12, dtype=np.float32).tobytes()  # what fc_model's W holds: 48 bytes

# location (or a name that a setup below makes), extra fields, words of the reason
EXTERNAL_CASES = {
    "dotdot": ("../../etc/passwd", {}, "outside the model's folder"),
    "dotdot-inside": ("sub/../../w.bin", {}, "outside the model's folder"),
    "absolute": ("/etc/passwd", {}, "absolute path"),
    "dev-zero": ("/dev/zero", {}, "absolute path"),
    "proc-environ": ("/proc/self/environ", {}, "absolute path"),
    "symlink-out": ("passwd.bin", {}, "symbolic link"),
    "symlink-in": ("alias.bin", {}, "symbolic link"),
    "folder-symlink-out": ("etc/passwd", {}, "outside the model's folder"),
    "missing": ("nope.bin", {}, "does not exist"),
    "folder": ("sub", {}, "a folder"),
    "fifo": ("pipe.bin", {}, "not a regular file"),
    "offset-past-end": ("w.bin", {"offset": 1000}, "run past the end"),
    "length-past-end": ("w.bin", {"length": 1000}, "run past the end"),
    "short": ("w.bin", {"offset": 8}, "needs 48 bytes"),
    "short-length": ("w.bin", {"length": 40}, "needs 48 bytes"),
    "negative-offset": ("w.bin", {"offset": -4}, "non-negative"),
    "offset-not-a-number": ("w.bin", {"offset": "zero"}, "invalid literal"),
    "no-location": ("", {}, "names no data file"),
    "nul-in-name": ("w\0.bin", {}, "cannot be opened"),
    "name-too-long": ("w" * 5000, {}, "cannot be opened"),
    "line-break-in-name": ("w\n.bin", {}, "'w\\n.bin' does not exist"),
}


def external_model(folder: Path, case: str) -> Path:
    location, fields, _ = EXTERNAL_CASES[case]
    (folder / "sub").mkdir()
    (folder / "w.bin").write_bytes(WEIGHT_BYTES)
    os.symlink("/etc/passwd", folder / "passwd.bin")
    os.symlink("w.bin", folder / "alias.bin")
    os.symlink("/etc", folder / "etc")
    os.mkfifo(folder / "pipe.bin")
    return save(fc_model(weight=external(location, **fields)), folder / "m.onnx")


def test_external_data_beside_the_model_is_read(tmp_path):
    """The control: the same file, its data where ONNX says, imports with the weights it holds."""
    (tmp_path / "w.bin").write_bytes(WEIGHT_BYTES)
    model = save(fc_model(weight=external("w.bin")), tmp_path / "m.onnx")
    r = run("import", model, "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "net.npz") as ckpt:
        assert np.array_equal(ckpt["fc1.W"], np.arange(12, dtype=np.float32).reshape(4, 3).T)  # stored (out, in)


@pytest.mark.parametrize("case", EXTERNAL_CASES)
def test_unreadable_external_data_is_refused_in_one_line(tmp_path, case):
    model = external_model(tmp_path, case)
    message = refused(run("import", model, "-o", tmp_path / "net.dlc"), str(model), "initializer W",
                      EXTERNAL_CASES[case][2])
    assert message.startswith("error:")
    assert not (tmp_path / "net.dlc").exists() and not (tmp_path / "net.npz").exists()


@pytest.mark.parametrize("command", ["shapes", "draw"])
@pytest.mark.parametrize("case", ["dotdot", "proc-environ", "symlink-out", "missing", "offset-past-end"])
def test_shapes_and_draw_say_the_weights_are_unreadable(tmp_path, case, command):
    model = external_model(tmp_path, case)
    r = run(command, model, *(["-o", tmp_path / "m.svg"] if command == "draw" else []))
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, r.stderr
    assert str(model) in warnings[0] and "initializer W" in warnings[0] and EXTERNAL_CASES[case][2] in warnings[0]


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_infer_refuses_unreadable_external_data(tmp_path, engine):
    """A dlc export whose initializer now points outside its folder: the numpy engine reads every weight
    (read_model with weights=True), onnxruntime would read the file by its own rules; dlc's come first."""
    path = tmp_path / "m.onnx"
    assert run("export", "-e", "input 4 -> fc 3", "-o", path).exit_code == 0
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    name = weight.name
    weight.CopyFrom(external("../../etc/passwd"))  # (4, 3) float32, as fc 3 on 4 inputs has
    weight.name = name
    onnx.save(model, str(path))
    refused(run("infer", path, "--engine", engine, "--device", "cpu", "--random", 1), str(path), f"initializer {name}",
            "outside the model's folder")


# --- files the ONNX checker rejects ------------------------------------------------------------------

X4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
Y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])


def graph_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def two_writers():
    """Relu and Sigmoid both write y: not single assignment; the last silently won."""
    return graph_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])],
                       [X4], [Y4])


def opset_99():
    return fc_model(opset=99)


def ir_version_99():
    model = fc_model()
    model.ir_version = 99
    return model


def float16_into_float32_gemm():
    x16 = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    return graph_model([helper.make_node("Gemm", ["x", "W"], ["y"])], [x16],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])


def two_outputs_of_one_name():
    return graph_model([helper.make_node("Relu", ["x"], ["y"])], [X4], [Y4, Y4])


INVALID = {  # the model, words of the reason
    "two-nodes-write-one-output": (two_writers, "single static assignment"),
    "opset-99": (opset_99, "opset 99"),
    "ir-version-99": (ir_version_99, "ir_version 99"),
    "float16-into-float32-gemm": (float16_into_float32_gemm, "inconsistent type"),
    "two-graph-outputs-of-one-name": (two_outputs_of_one_name, "two graph outputs y"),
}


@pytest.mark.parametrize("case", INVALID)
def test_a_model_that_is_not_valid_onnx_is_refused_with_its_reason(tmp_path, case):
    build, words = INVALID[case]
    model = save(build(), tmp_path / "m.onnx")
    refused(run("import", model, "-o", tmp_path / "net.dlc"), str(model), words)
    assert not (tmp_path / "net.dlc").exists() and not (tmp_path / "net.npz").exists()


@pytest.mark.parametrize("case", ["two-nodes-write-one-output", "ir-version-99", "float16-into-float32-gemm"])
def test_the_onnx_checker_itself_rejects_these(tmp_path, case):
    """The outside truth for three of the cases (the other two, which the checker lets through, are
    ONNX's rules read off its spec: no opset after onnx.defs.onnx_opset_version(), unique output names)."""
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        onnx.checker.check_model(str(save(INVALID[case][0](), tmp_path / "m.onnx")), full_check=True)
    assert onnx.defs.onnx_opset_version() < 99


def test_an_ir_version_3_model_passes_the_check(tmp_path):
    """The control: before IR 4 every initializer is listed among the graph inputs too, and the checker
    requires it; the weightless copy that is checked keeps them listed."""
    model = fc_model(opset=8)
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    r = run("import", save(model, tmp_path / "m.onnx"), "-o", tmp_path / "net.dlc")
    assert r.exit_code == 0, r.output


# --- what ended in a traceback --------------------------------------------------------------------------

def test_an_initializer_short_of_its_declared_shape_is_refused(tmp_path):
    """W declared (1000000, 1000000) float32 (4 TB) holding 8 values: the checker's own verdict is that
    the data is too small; dlc says so in a line instead of numpy's reshape error."""
    w = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000],
                         raw_data=np.ones(8, np.float32).tobytes())
    model = save(graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1_000_000])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1_000_000])], [w]),
                 tmp_path / "m.onnx")
    with pytest.raises(onnx.checker.ValidationError, match="too small"):
        onnx.checker.check_model(str(model))
    refused(run("import", model, "-o", tmp_path / "net.dlc"), str(model), "initializer W", "1000000x1000000")


def test_an_empty_output_name_is_refused(tmp_path):
    model = save(fc_model(), tmp_path / "m.onnx")
    refused(run("import", model, "-o", ""), "-o ''")


def exported_with_normalize(tmp_path, value: str) -> Path:
    path = tmp_path / "m.onnx"
    assert run("export", "-e", "input 4 -> fc 3", "-o", path).exit_code == 0
    model = onnx.load(str(path))
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "dlc.normalize": value})
    return save(model, path)


@pytest.mark.parametrize("engine", ["onnxruntime", "numpy"])
@pytest.mark.parametrize("value", ['{"kind": "mean-std", "mean": [0, 0',
                                   '{"kind": "mean-std", "mean": "a", "std": "b"}',
                                   '{"kind": "minmax", "min": [0, 0, 0, 0]}', '["mean-std"]', '{"mean": [1]}',
                                   '{"kind": "mean-std", "mean": [0, 1], "std": [1, 1]}'],
                         ids=["not-json", "strings", "no-max", "a-list", "no-kind", "two-values-for-four-features"])
def test_infer_refuses_normalisation_metadata_it_cannot_apply(tmp_path, value, engine):
    path = exported_with_normalize(tmp_path, value)
    refused(run("infer", path, "--random", 2, "--engine", engine, "--device", "cpu"), "normali")


def test_infer_applies_normalisation_metadata_that_is_right(tmp_path):
    """The control: mean 1, std 2 on every feature, applied before the network."""
    path = exported_with_normalize(tmp_path, '{"kind": "mean-std", "mean": 1.0, "std": 2.0}')
    r = run("infer", path, "--random", 2, "--engine", "numpy")
    assert r.exit_code == 0 and "normalised (mean-std)" in r.output, r.output


# --- where the outputs go -------------------------------------------------------------------------------

def special_file(path: Path, kind: str) -> Path:
    """A named pipe (anyone may make one), or as root a character device like /dev/null (1, 3)."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("only root makes device files")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def still_special(path: Path) -> bool:
    mode = os.lstat(path).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("which", ["spec", "weights"])
def test_import_never_replaces_a_device_or_pipe(tmp_path, kind, which):
    model = save(fc_model(), tmp_path / "m.onnx")
    target = special_file(tmp_path / ("net.dlc" if which == "spec" else "net.npz"), kind)
    refused(run("import", model, "-o", tmp_path / "net.dlc"), str(target), "dlc replaces only regular files")
    assert still_special(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", target.name])  # nothing else written


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_draw_never_replaces_a_device_or_pipe(tmp_path, kind):
    model = save(fc_model(), tmp_path / "m.onnx")
    target = special_file(tmp_path / "m.svg", kind)
    refused(run("draw", model, "-o", target), str(target), "dlc replaces only regular files")
    assert still_special(target)


def test_export_never_replaces_a_device_or_pipe(tmp_path):
    target = special_file(tmp_path / "m.onnx", "fifo")
    refused(run("export", "-e", "input 4 -> fc 3", "-o", target), str(target), "dlc replaces only regular files")
    assert still_special(target)


def test_import_to_a_folder_writes_nothing(tmp_path):
    """-o DIR was refused only after DIR.npz was written beside it."""
    model = save(fc_model(), tmp_path / "m.onnx")
    (tmp_path / "net").mkdir()
    refused(run("import", model, "-o", tmp_path / "net"), "it is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "net"] and not any((tmp_path / "net").iterdir())


def test_import_to_a_missing_folder_writes_nothing(tmp_path):
    model = save(fc_model(), tmp_path / "m.onnx")
    refused(run("import", model, "-o", tmp_path / "no" / "net.dlc"), "there is no folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_import_writes_the_spec_and_weights_readable_as_the_umask_says(tmp_path):
    """The control for the checks above: ordinary names are written, as regular files, 0666 minus umask."""
    model = save(fc_model(), tmp_path / "m.onnx")
    old = os.umask(0o022)
    try:
        assert run("import", model, "-o", tmp_path / "net.dlc").exit_code == 0
    finally:
        os.umask(old)
    for name in ("net.dlc", "net.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
